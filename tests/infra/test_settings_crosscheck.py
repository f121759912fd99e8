"""The infra and the broker agree: every setting the broker needs is set, none it ignores, right runtime.

The Function App's settings are broker.bicep's fixed block plus the provider settings the preprovision
hook (infra/hooks/entra_app.py) writes from the azd environment, or broker.bicep's fallback for them.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from broker import config

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra" / "hooks"))
import entra_app  # noqa: E402
from bicep_settings import ROOT, Setting, app_settings, fallback_provider_settings, function_runtime  # noqa: E402

# Values for settings whose Bicep value is an expression (resolved only at deployment).
PLACEHOLDERS = {
    "KEY_VAULT_URL": "https://kv-placeholder.vault.azure.net/",
    "AZURE_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
    "BROKER_TENANT_ID": "22222222-2222-2222-2222-222222222222",
    "BROKER_AUDIENCE": "api://22222222-2222-2222-2222-222222222222/ilevel-token-broker-dev,33333333-3333-3333-3333-333333333333",
    # The plan's instanceMemoryMB, a whole number of MB (the default Flex instance).
    "BROKER_INSTANCE_MEMORY_MB": "2048",
    # The storage account's blob endpoint plus the container name (broker.config checks its shape).
    "BROKER_FLEET_CACHE_URL": "https://stplaceholder.blob.core.windows.net/broker-tokens",
}
# An azd environment with two providers and every per-provider value an operator can set.
TWO_PROVIDERS = {
    "AZURE_ENV_NAME": "dev",
    "BROKER_PROVIDERS": "ilevel,my-api",
    "BROKER_MY_API_TOKEN_URL": "https://login.my-api.example/oauth2/token",
    **{f"BROKER_MY_API_{suffix}": "x" for suffix in ("SCOPE", "AUDIENCE", "RESOURCE")},
    "BROKER_MY_API_AUTH_METHOD": "client_secret_post",
}


@pytest.fixture(scope="module")
def settings() -> dict[str, Setting]:
    return {setting.name: setting for setting in app_settings()}


def providers_of(provider_settings: dict[str, str]) -> list[str]:
    return [name.strip() for name in provider_settings["BROKER_PROVIDERS"].split(",") if name.strip()]


def placeholder_environment(settings: dict[str, Setting], provider_settings: dict[str, str]) -> dict[str, str]:
    env = {"WEBSITE_SITE_NAME": "func-broker-placeholder"}
    for name, setting in settings.items():
        if setting.literal is not None:
            env[name] = setting.literal
        elif name in PLACEHOLDERS:
            env[name] = PLACEHOLDERS[name]
        else:
            env[name] = "placeholder"
    return {**env, **provider_settings}


def hook_settings(env: dict[str, str]) -> dict[str, str]:
    """What the preprovision hook would write to BROKER_PROVIDER_SETTINGS for this azd environment."""
    return dict(entra_app.HookConfig.from_env(env).provider_settings)


def test_infra_sets_every_setting_the_broker_requires_in_azure(settings: dict[str, Setting]) -> None:
    """Each name in broker.config.REQUIRED_IN_AZURE is set by broker.bicep or its provider settings."""
    given = set(settings) | set(fallback_provider_settings())
    missing = [name for name in config.REQUIRED_IN_AZURE if name not in given]
    assert not missing, f"broker.bicep does not set {missing}"


@pytest.mark.parametrize("azd_env", [{"AZURE_ENV_NAME": "dev"}, TWO_PROVIDERS], ids=["default", "two-providers"])
def test_infra_sets_no_broker_setting_the_broker_does_not_know(
    settings: dict[str, Setting], azd_env: dict[str, str]
) -> None:
    """Every BROKER_* setting of broker.bicep and the hook is a global or a per-provider setting the broker reads."""
    provider_settings = hook_settings(azd_env)
    known = set(config.GLOBAL_SETTINGS)
    for provider in providers_of(provider_settings):
        known.update(f"BROKER_{config.env_name(provider)}_{suffix}" for suffix in config.PROVIDER_SETTING_SUFFIXES)
    given = [*settings, *provider_settings]
    unknown = [name for name in given if name.startswith("BROKER_") and name not in known]
    assert not unknown, f"the infra sets {unknown}, which the broker does not read (typo?)"


def test_function_runtime_is_python_at_the_tested_version() -> None:
    """functionAppConfig.runtime is python at the version pyproject.toml type-checks and tests for."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    tested = pyproject["tool"]["mypy"]["python_version"]
    assert function_runtime() == {"name": "python", "version": tested}


@pytest.mark.parametrize("azd_env", [{"AZURE_ENV_NAME": "dev"}, TWO_PROVIDERS], ids=["default", "two-providers"])
def test_infra_settings_load_into_a_valid_broker_configuration(
    settings: dict[str, Setting], azd_env: dict[str, str]
) -> None:
    """The infra's settings, with placeholders for deploy-time values, pass load_settings as in Azure."""
    provider_settings = hook_settings(azd_env)
    loaded = config.load_settings(placeholder_environment(settings, provider_settings))
    assert loaded.running_in_azure
    assert loaded.key_vault_url
    assert sorted(loaded.providers) == sorted(providers_of(provider_settings))
    assert not loaded.warnings, f"the deployed broker would start with warnings: {loaded.warnings}"


def test_bicep_fallback_equals_what_the_hook_writes_for_an_empty_environment() -> None:
    """broker.bicep's fallback provider settings are the hook's for an azd environment that sets nothing."""
    assert fallback_provider_settings() == hook_settings({"AZURE_ENV_NAME": "dev"})


def test_hook_passes_through_every_per_provider_setting_but_the_role() -> None:
    """The hook copies each BROKER_<NAME>_* suffix the broker reads, except ALLOWED_ROLES, which it owns."""
    assert set(entra_app.PASS_THROUGH_SUFFIXES) == set(config.PROVIDER_SETTING_SUFFIXES) - {"ALLOWED_ROLES"}


@pytest.mark.parametrize("azd_env", [{"AZURE_ENV_NAME": "dev"}, TWO_PROVIDERS], ids=["default", "two-providers"])
def test_every_provider_allows_the_app_role_the_hook_declares(azd_env: dict[str, str]) -> None:
    """BROKER_<NAME>_ALLOWED_ROLES names the app role infra/hooks/entra_app.py creates for that provider."""
    provider_settings = hook_settings(azd_env)
    providers = tuple(providers_of(provider_settings))
    declared = {role["value"] for role in entra_app.plan_roles([], providers)[0]}
    for provider in providers:
        allowed = provider_settings[f"BROKER_{config.env_name(provider)}_ALLOWED_ROLES"]
        assert allowed in declared, f"{provider}: role {allowed!r} is not one of the app roles {sorted(declared)}"


def test_host_storage_is_reached_by_identity_not_by_key(settings: dict[str, Setting]) -> None:
    """AzureWebJobsStorage uses the managed identity (credential + clientId), never a connection string."""
    assert "AzureWebJobsStorage" not in settings
    assert settings["AzureWebJobsStorage__credential"].literal == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"].expression == settings["AZURE_CLIENT_ID"].expression
    assert "AzureWebJobsStorage__accountName" in settings


def test_no_setting_carries_a_secret(settings: dict[str, Setting]) -> None:
    """No app setting holds a local secret, an account key or a key-bearing connection string."""
    for name, setting in settings.items():
        assert not name.startswith(config.LOCAL_SECRET_PREFIX), f"{name} would put a secret value in app settings"
        for marker in ("AccountKey=", "listKeys(", "SharedAccessSignature", "@Microsoft.KeyVault("):
            assert marker not in setting.expression, f"{name} uses {marker}"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"].expression.endswith(";Authorization=AAD'")
