"""The infra and the broker agree: every setting the broker needs is set, none it ignores, right runtime."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from broker import config

sys.path.insert(0, str(Path(__file__).parent))
from bicep_settings import ROOT, Setting, app_settings, function_runtime  # noqa: E402

HOOK = ROOT / "infra" / "hooks" / "entra_app.py"
# Values for settings whose Bicep value is an expression (resolved only at deployment).
PLACEHOLDERS = {
    "KEY_VAULT_URL": "https://kv-placeholder.vault.azure.net/",
    "AZURE_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
    "BROKER_TENANT_ID": "22222222-2222-2222-2222-222222222222",
    "BROKER_AUDIENCE": "api://ilevel-token-broker-dev,33333333-3333-3333-3333-333333333333",
}


@pytest.fixture(scope="module")
def settings() -> dict[str, Setting]:
    return {setting.name: setting for setting in app_settings()}


def configured_providers(settings: dict[str, Setting]) -> list[str]:
    providers = settings["BROKER_PROVIDERS"].literal
    assert providers, "BROKER_PROVIDERS must be a string literal in broker.bicep so the providers are known"
    return [name.strip() for name in providers.split(",") if name.strip()]


def placeholder_environment(settings: dict[str, Setting]) -> dict[str, str]:
    env = {"WEBSITE_SITE_NAME": "func-broker-placeholder"}
    for name, setting in settings.items():
        if setting.literal is not None:
            env[name] = setting.literal
        elif name in PLACEHOLDERS:
            env[name] = PLACEHOLDERS[name]
        elif name.endswith("_URL"):
            env[name] = "https://placeholder.example/token"
        else:
            env[name] = "placeholder"
    return env


def load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("entra_app_hook", HOOK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_infra_sets_every_setting_the_broker_requires_in_azure(settings: dict[str, Setting]) -> None:
    """Each name in broker.config.REQUIRED_IN_AZURE is an app setting in broker.bicep."""
    missing = [name for name in config.REQUIRED_IN_AZURE if name not in settings]
    assert not missing, f"broker.bicep does not set {missing}"


def test_infra_sets_no_broker_setting_the_broker_does_not_know(settings: dict[str, Setting]) -> None:
    """Every BROKER_* setting in broker.bicep is a global or a per-provider setting the broker reads."""
    known = set(config.GLOBAL_SETTINGS)
    for provider in configured_providers(settings):
        known.update(f"BROKER_{config.env_name(provider)}_{suffix}" for suffix in config.PROVIDER_SETTING_SUFFIXES)
    unknown = [name for name in settings if name.startswith("BROKER_") and name not in known]
    assert not unknown, f"broker.bicep sets {unknown}, which the broker does not read (typo?)"


def test_function_runtime_is_python_at_the_tested_version() -> None:
    """functionAppConfig.runtime is python at the version pyproject.toml type-checks and tests for."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    tested = pyproject["tool"]["mypy"]["python_version"]
    assert function_runtime() == {"name": "python", "version": tested}


def test_infra_settings_load_into_a_valid_broker_configuration(settings: dict[str, Setting]) -> None:
    """The infra's settings, with placeholders for deploy-time values, pass load_settings as in Azure."""
    loaded = config.load_settings(placeholder_environment(settings))
    assert loaded.running_in_azure
    assert loaded.key_vault_url
    assert sorted(loaded.providers) == sorted(configured_providers(settings))
    assert not loaded.warnings, f"the deployed broker would start with warnings: {loaded.warnings}"


def test_every_provider_allows_the_app_role_the_hook_declares(settings: dict[str, Setting]) -> None:
    """BROKER_<NAME>_ALLOWED_ROLES names the app role infra/hooks/entra_app.py creates for that provider."""
    providers = configured_providers(settings)
    declared = {role["value"] for role in load_hook().app_roles([], providers)}
    for provider in providers:
        allowed = settings[f"BROKER_{config.env_name(provider)}_ALLOWED_ROLES"].literal
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
