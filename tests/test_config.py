"""Configuration: read once, validated, every failure names its setting."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from broker.config import DEFAULT_TOKEN_URLS, GLOBAL_SETTINGS, Setting, load_settings, provider_setting
from broker.errors import ConfigError

BASE = {
    "BROKER_TENANT_ID": "11111111-2222-3333-4444-555555555555",
    "BROKER_AUDIENCE": "api://ilevel-token-broker, 00000000-aaaa-bbbb-cccc-000000000000",
    "BROKER_ILEVEL_ALLOWED_ROLES": "Token.Read.ilevel",
}


def settings_with(**changes: str) -> dict[str, str]:
    env = dict(BASE)
    env.update(changes)
    return env


def test_defaults_give_one_ilevel_provider_with_basic_auth_and_default_secret_names() -> None:
    """With only the required settings, the ilevel provider uses iLevel's token URL and raw Basic auth."""
    settings = load_settings(BASE)
    provider = settings.providers["ilevel"]
    assert provider.token_url == DEFAULT_TOKEN_URLS["ilevel"]
    assert (provider.auth_method, provider.basic_encoding) == ("client_secret_basic", "raw")
    assert (provider.client_id_secret, provider.client_secret_secret) == ("ilevel-client-id", "ilevel-client-secret")
    assert settings.audiences == {"api://ilevel-token-broker", "00000000-aaaa-bbbb-cccc-000000000000"}
    assert settings.authority_host == "https://login.microsoftonline.com"


def test_provider_settings_use_the_upper_cased_name_with_underscores() -> None:
    """Provider my-api reads BROKER_MY_API_*; extra parameters are sent only when set."""
    settings = load_settings(
        settings_with(
            BROKER_PROVIDERS="ilevel,my-api",
            BROKER_MY_API_TOKEN_URL="https://idp.example.test/oauth2/token",
            BROKER_MY_API_AUTH_METHOD="client_secret_post",
            BROKER_MY_API_SCOPE="read write",
            BROKER_MY_API_ALLOWED_CALLERS="a, b",
        )
    )
    api = settings.providers["my-api"]
    assert api.auth_method == "client_secret_post"
    assert api.extra_params == (("scope", "read write"),)
    assert api.allowed_callers == {"a", "b"}


@pytest.mark.parametrize(
    ("changes", "setting"),
    [
        ({"BROKER_TENANT_ID": ""}, "BROKER_TENANT_ID"),
        ({"BROKER_AUDIENCE": " , "}, "BROKER_AUDIENCE"),
        ({"BROKER_PROVIDERS": "iLevel"}, "BROKER_PROVIDERS"),
        ({"BROKER_PROVIDERS": "ilevel,other"}, "BROKER_OTHER_TOKEN_URL"),
        ({"BROKER_ILEVEL_TOKEN_URL": "http://api.example.test/token"}, "BROKER_ILEVEL_TOKEN_URL"),
        ({"BROKER_ILEVEL_AUTH_METHOD": "basic"}, "BROKER_ILEVEL_AUTH_METHOD"),
        ({"BROKER_ILEVEL_BASIC_ENCODING": "utf8"}, "BROKER_ILEVEL_BASIC_ENCODING"),
        ({"BROKER_ILEVEL_CLIENT_SECRET_SECRET": "bad name!"}, "BROKER_ILEVEL_CLIENT_SECRET_SECRET"),
        ({"KEY_VAULT_URL": "http://kv.example.test/"}, "KEY_VAULT_URL"),
        ({"BROKER_TOKEN_BUDGET_SECONDS": "90"}, "BROKER_TOKEN_BUDGET_SECONDS"),
        ({"WEBSITE_SITE_NAME": "app"}, "KEY_VAULT_URL"),
        ({"BROKER_INSECURE_DISABLE_CALLER_AUTH": "maybe"}, "BROKER_INSECURE_DISABLE_CALLER_AUTH"),
    ],
)
def test_invalid_configuration_fails_naming_the_setting(changes: dict[str, str], setting: str) -> None:
    """Every invalid configuration stops start-up with a message that names the setting."""
    with pytest.raises(ConfigError) as raised:
        load_settings(settings_with(**changes))
    assert raised.value.setting == setting
    assert setting in str(raised.value)


def test_token_urls_may_be_plain_http_only_on_loopback() -> None:
    """http:// is accepted for 127.0.0.1 and localhost (tests, local stand-ins), nowhere else."""
    settings = load_settings(settings_with(BROKER_ILEVEL_TOKEN_URL="http://127.0.0.1:9/oauth/token"))
    assert settings.providers["ilevel"].token_url.startswith("http://127.0.0.1")


def test_switching_caller_auth_off_is_refused_in_azure() -> None:
    """BROKER_INSECURE_DISABLE_CALLER_AUTH cannot be used where WEBSITE_SITE_NAME is set."""
    with pytest.raises(ConfigError) as raised:
        load_settings(
            settings_with(
                BROKER_INSECURE_DISABLE_CALLER_AUTH="true",
                WEBSITE_SITE_NAME="func-broker",
                KEY_VAULT_URL="https://kv.example.test/",
            )
        )
    assert raised.value.setting == "BROKER_INSECURE_DISABLE_CALLER_AUTH"


def test_a_provider_allowing_nobody_is_valid_but_warned_about() -> None:
    """Deny by default: a provider with no allowed callers or roles loads, with a warning naming the settings."""
    env = dict(BASE)
    del env["BROKER_ILEVEL_ALLOWED_ROLES"]
    settings = load_settings(env)
    assert settings.providers["ilevel"].serves_nobody
    assert any("BROKER_ILEVEL_ALLOWED_CALLERS" in w for w in settings.warnings)


def test_misspelt_broker_settings_are_warned_about() -> None:
    """An unknown BROKER_* setting (a typo) is reported at start-up rather than silently ignored."""
    settings = load_settings(settings_with(BROKER_ILEVEL_ALLOWED_CALLER="x"))
    assert any("BROKER_ILEVEL_ALLOWED_CALLER " in w for w in settings.warnings)


def test_settings_are_frozen() -> None:
    """The configuration object cannot be changed after start-up."""
    settings = load_settings(BASE)
    with pytest.raises(AttributeError):
        settings.tenant_id = "other"  # type: ignore[misc]


def test_diagnostics_clients_are_the_azure_cli_plus_the_listed_ids() -> None:
    """BROKER_DIAGNOSTICS_CLIENT_IDS: comma-separated GUIDs, any case, blanks ignored; the CLI is always in."""
    cli = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
    assert load_settings(BASE).diagnostics_client_ids == {cli}
    other = "8C6D1E2F-3A4B-4C5D-9E6F-7A8B9C0D1E2F"
    settings = load_settings({**BASE, "BROKER_DIAGNOSTICS_CLIENT_IDS": f"{other}, ,"})
    assert settings.diagnostics_client_ids == {cli, other.lower()}


@pytest.mark.parametrize("value", ["azure-cli", "04b07795-8ddb-461a-bbee", "https://example.com/app"])
def test_a_diagnostics_client_that_is_not_a_guid_is_a_clear_error(value: str) -> None:
    """A name or URL instead of a client id fails at start, naming the setting and what it wants."""
    with pytest.raises(ConfigError) as error:
        load_settings({**BASE, "BROKER_DIAGNOSTICS_CLIENT_IDS": value})
    assert "BROKER_DIAGNOSTICS_CLIENT_IDS" in str(error.value) and "GUID" in str(error.value)


# --- setting names from one place ------------------------------------------------------------------

BROKER = Path(__file__).resolve().parent.parent / "broker"
SETTING_NAME = re.compile(r"\b(?:BROKER_[A-Z0-9_]+|KEY_VAULT_URL|AZURE_CLIENT_ID|AZURE_AUTHORITY_HOST)\b")


def spelled_setting_names(path: Path) -> list[str]:
    """Setting names written out in ``path``'s string literals (docstrings aside: they only explain)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        f"{path.relative_to(BROKER.parent)}:{node.lineno}: {name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
        for name in SETTING_NAME.findall(node.value)
    ]


def test_every_module_names_a_setting_from_config() -> None:
    """A setting's name is spelled once, in broker/config.py; code and messages elsewhere take it from there."""
    spelled = [
        line
        for path in sorted(BROKER.rglob("*.py"))
        if path != BROKER / "config.py"
        for line in spelled_setting_names(path)
    ]
    assert spelled == []
    assert spelled_setting_names(BROKER / "config.py"), "the scan finds names where they are spelled"


def test_the_names_config_gives_are_the_settings_it_reads() -> None:
    """Setting's names are exactly the process-wide settings; a provider's come from the documented suffixes."""
    names = {value for key, value in vars(Setting).items() if not key.startswith("_")}
    assert names == set(GLOBAL_SETTINGS)
    assert provider_setting("my-api", "TOKEN_URL") == "BROKER_MY_API_TOKEN_URL"
    with pytest.raises(ValueError, match="TOKEN_URI"):
        provider_setting("ilevel", "TOKEN_URI")
