"""Proxy settings: defaults from the contract, every invalid value refused naming its setting."""

from __future__ import annotations

import pytest

from broker.config import load_settings
from broker.errors import ConfigError

BASE = {
    "BROKER_TENANT_ID": "11111111-2222-3333-4444-555555555555",
    "BROKER_AUDIENCE": "api://ilevel-token-broker",
    "BROKER_ILEVEL_ALLOWED_ROLES": "Token.Read.ilevel",
}


def test_defaults_are_token_mode_with_the_public_ilevel_api_root() -> None:
    """MODE token, API root https://api.ilevelsolutions.com/v1/, 120 s, 100 MB, 8 in flight."""
    settings = load_settings(BASE)
    ilevel = settings.providers["ilevel"]
    assert ilevel.mode == "token"
    assert ilevel.token_route_enabled
    assert not ilevel.proxy_enabled
    assert ilevel.api_base_url == "https://api.ilevelsolutions.com/v1/"
    assert ilevel.proxy_concurrency == 8
    assert settings.proxy_timeout_s == 120
    assert settings.proxy_max_response_bytes == 100 * 1024 * 1024


def test_proxy_and_both_modes_open_the_routes_they_name() -> None:
    """proxy closes the token route; both keeps the two open."""
    proxy = load_settings({**BASE, "BROKER_ILEVEL_MODE": "proxy"}).providers["ilevel"]
    both = load_settings({**BASE, "BROKER_ILEVEL_MODE": "Both"}).providers["ilevel"]
    assert (proxy.token_route_enabled, proxy.proxy_enabled) == (False, True)
    assert (both.token_route_enabled, both.proxy_enabled) == (True, True)


def test_the_api_root_gets_a_trailing_slash_and_may_be_http_only_on_loopback() -> None:
    """A root without '/' is normalised; http is for loopback stand-ins only."""
    env = {**BASE, "BROKER_ILEVEL_API_BASE_URL": "http://127.0.0.1:8080/v1"}
    assert load_settings(env).providers["ilevel"].api_base_url == "http://127.0.0.1:8080/v1/"


@pytest.mark.parametrize(
    ("changes", "setting"),
    [
        ({"BROKER_ILEVEL_MODE": "gateway"}, "BROKER_ILEVEL_MODE"),
        ({"BROKER_ILEVEL_API_BASE_URL": "http://api.example.com/v1/"}, "BROKER_ILEVEL_API_BASE_URL"),
        ({"BROKER_ILEVEL_API_BASE_URL": "https://api.example.com/v1/?x=1"}, "BROKER_ILEVEL_API_BASE_URL"),
        ({"BROKER_ILEVEL_API_BASE_URL": "https://user@api.example.com/v1/"}, "BROKER_ILEVEL_API_BASE_URL"),
        ({"BROKER_PROVIDERS": "other", "BROKER_OTHER_TOKEN_URL": "https://t.example/token",
          "BROKER_OTHER_MODE": "proxy"}, "BROKER_OTHER_API_BASE_URL"),
        ({"BROKER_PROXY_TIMEOUT_SECONDS": "161"}, "BROKER_PROXY_TIMEOUT_SECONDS"),
        ({"BROKER_PROXY_TIMEOUT_SECONDS": "0"}, "BROKER_PROXY_TIMEOUT_SECONDS"),
        ({"BROKER_PROXY_TIMEOUT_SECONDS": "soon"}, "BROKER_PROXY_TIMEOUT_SECONDS"),
        ({"BROKER_PROXY_MAX_RESPONSE_MB": "0"}, "BROKER_PROXY_MAX_RESPONSE_MB"),
        ({"BROKER_PROXY_MAX_RESPONSE_MB": "1.5"}, "BROKER_PROXY_MAX_RESPONSE_MB"),
        ({"BROKER_ILEVEL_PROXY_CONCURRENCY": "0"}, "BROKER_ILEVEL_PROXY_CONCURRENCY"),
        ({"BROKER_ILEVEL_PROXY_CONCURRENCY": "many"}, "BROKER_ILEVEL_PROXY_CONCURRENCY"),
    ],
)  # fmt: skip
def test_invalid_proxy_settings_fail_naming_the_setting(changes: dict[str, str], setting: str) -> None:
    """Each bad value stops start-up with a ConfigError that names the setting."""
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, **changes})
    assert caught.value.setting == setting
    assert setting in str(caught.value)


def test_proxy_settings_are_known_not_warned_about_as_typos() -> None:
    """The new names are part of the known set."""
    env = {
        **BASE,
        "BROKER_ILEVEL_MODE": "both",
        "BROKER_ILEVEL_API_BASE_URL": "https://api.example.com/v1/",
        "BROKER_ILEVEL_PROXY_CONCURRENCY": "2",
        "BROKER_PROXY_TIMEOUT_SECONDS": "160",
        "BROKER_PROXY_MAX_RESPONSE_MB": "5",
    }
    settings = load_settings(env)
    assert not [w for w in settings.warnings if "not one the broker knows" in w]
    assert settings.providers["ilevel"].proxy_concurrency == 2
    assert settings.proxy_max_response_bytes == 5 * 1024 * 1024
