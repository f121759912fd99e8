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
    """MODE token, API root https://api.ilevelsolutions.com/v1/, 120 s, 32 MB, 8 in flight, 10 s slot wait."""
    settings = load_settings(BASE)
    ilevel = settings.providers["ilevel"]
    assert ilevel.mode == "token"
    assert ilevel.token_route_enabled
    assert not ilevel.proxy_enabled
    assert ilevel.api_base_url == "https://api.ilevelsolutions.com/v1/"
    assert ilevel.proxy_concurrency == 8
    assert settings.proxy_timeout_s == 120
    assert settings.proxy_max_response_bytes == 32 * 1024 * 1024
    assert settings.proxy_slot_wait_s == 10


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


PROXY = {**BASE, "BROKER_ILEVEL_MODE": "proxy"}


def test_the_default_proxy_fits_a_2048_mb_instance_with_room_on_either_host() -> None:
    """8 slots x 32 MiB x 2 + 4 x 32 MiB (the worker's send) + 256 MB = 896 MB (Functions): under half of 2,048 MB."""
    for functions_host in (True, False):
        load_settings({**PROXY, "BROKER_INSTANCE_MEMORY_MB": "2048"}, functions_host=functions_host)
    load_settings({**PROXY, "BROKER_INSTANCE_MEMORY_MB": "896"}, functions_host=True)


def test_a_proxy_worst_case_over_the_instance_memory_refuses_to_start_naming_the_settings() -> None:
    """Σ concurrency x cap x host factor + baseline over BROKER_INSTANCE_MEMORY_MB is a ConfigError naming it."""
    with pytest.raises(ConfigError) as refused:
        load_settings(
            {**PROXY, "BROKER_INSTANCE_MEMORY_MB": "2048", "BROKER_PROXY_MAX_RESPONSE_MB": "200"}, functions_host=True
        )
    assert refused.value.setting == "BROKER_INSTANCE_MEMORY_MB"
    for named in ("BROKER_PROXY_MAX_RESPONSE_MB=200", "BROKER_ILEVEL_PROXY_CONCURRENCY=8", "4256 MB"):
        assert named in str(refused.value)
    with pytest.raises(ConfigError):
        load_settings({**PROXY, "BROKER_INSTANCE_MEMORY_MB": "895"}, functions_host=True)


def test_one_slot_still_counts_the_workers_copies_of_the_largest_answer() -> None:
    """1 slot x 256 MiB x 2 + 4 x 256 MiB + 256 MB = 1,792 MB: the worker's copies made one 200 MiB page peak at 6x."""
    one = {**PROXY, "BROKER_ILEVEL_PROXY_CONCURRENCY": "1", "BROKER_PROXY_MAX_RESPONSE_MB": "256"}
    load_settings({**one, "BROKER_INSTANCE_MEMORY_MB": "1792"}, functions_host=True)
    with pytest.raises(ConfigError):
        load_settings({**one, "BROKER_INSTANCE_MEMORY_MB": "1791"}, functions_host=True)


def test_under_serve_a_streamed_request_costs_a_constant_so_the_cap_does_not_count() -> None:
    """serve: 8 slots x 8 MB + 256 MB = 320 MB, whatever the cap; unset memory: not checked at all."""
    big_cap = {**PROXY, "BROKER_PROXY_MAX_RESPONSE_MB": "1024"}
    load_settings({**big_cap, "BROKER_INSTANCE_MEMORY_MB": "320"})
    with pytest.raises(ConfigError):
        load_settings({**big_cap, "BROKER_INSTANCE_MEMORY_MB": "319"})
    load_settings(big_cap, functions_host=True)


def test_token_mode_providers_cost_nothing_and_every_proxy_provider_counts() -> None:
    """Only providers in proxy or both mode add to the worst case."""
    token_only = {**BASE, "BROKER_INSTANCE_MEMORY_MB": "300"}
    load_settings(token_only, functions_host=True)
    two = {
        **PROXY,
        "BROKER_PROVIDERS": "ilevel,other",
        "BROKER_OTHER_TOKEN_URL": "https://other.example/token",
        "BROKER_OTHER_API_BASE_URL": "https://other.example/api/",
        "BROKER_OTHER_MODE": "both",
        "BROKER_OTHER_ALLOWED_ROLES": "Token.Read.other",
    }
    load_settings({**two, "BROKER_INSTANCE_MEMORY_MB": "1408"}, functions_host=True)
    with pytest.raises(ConfigError):
        load_settings({**two, "BROKER_INSTANCE_MEMORY_MB": "1407"}, functions_host=True)


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "31"])
def test_invalid_slot_waits_and_memory_sizes_are_refused(value: str) -> None:
    """Whole seconds 0-30 and whole MB: anything else names its setting."""
    if value != "0":
        with pytest.raises(ConfigError) as refused:
            load_settings({**PROXY, "BROKER_PROXY_SLOT_WAIT_SECONDS": value})
        assert refused.value.setting == "BROKER_PROXY_SLOT_WAIT_SECONDS"
    with pytest.raises(ConfigError) as refused:
        load_settings({**PROXY, "BROKER_INSTANCE_MEMORY_MB": value})
    assert refused.value.setting == "BROKER_INSTANCE_MEMORY_MB"
