"""Every app setting docs/deploy.md says an operator sets through azd really travels from the azd
environment to the Function App, and a setting removed from the environment leaves the app.

Two paths exist (docs/deploy.md, "App settings through azd"):
- Bicep: azd variable -> main.parameters.json -> a main.bicep parameter -> the broker module -> a
  setting in broker.bicep;
- the preprovision hook: azd variable -> infra/hooks/entra_app.py -> BROKER_PROVIDER_SETTINGS -> broker.bicep.
Both are traced here from the files themselves, so a broken link fails.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from broker import config

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra" / "hooks"))
import entra_app  # noqa: E402
from bicep_settings import ROOT, app_settings, object_block, operator_settings, top_level_entries  # noqa: E402

DEPLOY_DOC = ROOT / "docs" / "deploy.md"
MAIN = ROOT / "infra" / "main.bicep"
PARAMETERS = ROOT / "infra" / "main.parameters.json"
BROKER_BICEP = ROOT / "infra" / "app" / "broker.bicep"
AVM_PARAMETERS = Path(__file__).parent / "avm_parameters.json"
TABLE_HEADING = "## App settings through azd"
ROW = re.compile(r"^\| `(?P<setting>[A-Z_<>]+)` \| (?P<azd>[^|]+) \| (?P<path>[^|]+) \|")
# Settings the broker reads that an operator does not set through azd, and why.
NOT_THROUGH_AZD = {
    "AZURE_AUTHORITY_HOST": "sovereign clouds only; this template deploys to Azure's public cloud",
    "BROKER_INSECURE_DISABLE_CALLER_AUTH": "local runs only; refused in Azure",
    "BROKER_KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "tests against a local vault only",
    "BROKER_FLEET_CACHE_CONNECTION_STRING": "Azurite only; refused unless its endpoint is on loopback",
}
# A value per setting suffix that the hook accepts.
SAMPLE = {
    "TOKEN_URL": "https://login.my-api.example/oauth2/token",
    "PROXY_CONCURRENCY": "3",
    "BROKER_DIAGNOSTICS_CLIENT_IDS": "8c6d1e2f-3a4b-4c5d-9e6f-7a8b9c0d1e2f",
}


def documented_rows() -> list[tuple[str, str, str]]:
    """(setting, azd cell, path cell) of each row of docs/deploy.md's table of settings through azd."""
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    assert TABLE_HEADING in text, f"docs/deploy.md has no section {TABLE_HEADING!r}"
    section = text.split(TABLE_HEADING, 1)[1].split("\n## ", 1)[0]
    rows = [(m["setting"], m["azd"].strip(), m["path"].strip()) for m in map(ROW.match, section.splitlines()) if m]
    assert len(rows) >= 5, "the table of settings through azd is missing or unreadable"
    return rows


def settable() -> list[tuple[str, str, str]]:
    return [(s, azd.strip("`"), path) for s, azd, path in documented_rows() if re.fullmatch(r"`[A-Z_<>]+`", azd)]


def azd_parameter(variable: str) -> str:
    """The main.bicep parameter main.parameters.json fills from an azd variable."""
    mapped = json.loads(PARAMETERS.read_text(encoding="utf-8"))["parameters"]
    names = [name for name, entry in mapped.items() if re.fullmatch(rf"\$\{{{variable}(=[^}}]*)?\}}", entry["value"])]
    assert len(names) == 1, f"main.parameters.json maps {variable} to {names}"
    return names[0]


def broker_module_input(parameter: str) -> str:
    """The broker module's parameter that main.bicep feeds from one of its own parameters."""
    call = "\n".join(object_block(MAIN.read_text(encoding="utf-8"), "module broker "))
    params = dict(top_level_entries(object_block(call, "params: {")))
    inputs = [name for name, value in params.items() if value == parameter]
    assert len(inputs) == 1, f"main.bicep passes {parameter} to the broker module as {inputs}"
    return inputs[0]


def hook_settings(env: dict[str, str]) -> dict[str, str]:
    return dict(entra_app.HookConfig.from_env({"AZURE_ENV_NAME": "dev", **env}).provider_settings)


@pytest.mark.parametrize("row", settable(), ids=lambda row: row[0])
def test_every_setting_documented_as_settable_through_azd_reaches_the_app(row: tuple[str, str, str]) -> None:
    """Each documented (setting, azd variable) pair is wired: through Bicep to broker.bicep, or through the hook."""
    setting, variable, path = row
    if path.startswith("Bicep"):
        assert "<NAME>" not in setting
        expressions = {s.name: s.expression for s in [*app_settings(), *operator_settings()]}
        assert setting in expressions, f"broker.bicep sets no {setting}"
        module_input = broker_module_input(azd_parameter(variable))
        assert re.search(rf"\b{module_input}\b", expressions[setting]), f"{setting} is not built from {module_input}"
    else:
        assert path == "hook", f"{setting}: unknown path {path!r}"
        providers = ["ilevel", "my-api"] if "<NAME>" in setting else ["ilevel"]
        for provider in providers:
            name = setting.replace("<NAME>", config.env_name(provider))
            suffix = setting.rsplit("<NAME>_", 1)[-1]
            value = "ilevel,my-api" if setting == "BROKER_PROVIDERS" else SAMPLE.get(suffix, f"sample-{suffix.lower()}")
            env = {
                "BROKER_PROVIDERS": "ilevel,my-api",
                "BROKER_MY_API_TOKEN_URL": SAMPLE["TOKEN_URL"],
                variable.replace("<NAME>", config.env_name(provider)): value,
            }
            assert hook_settings(env).get(name) == value, f"{variable} does not reach {name}"


def test_every_setting_the_broker_reads_has_an_azd_path_is_set_by_the_infra_or_says_why_not() -> None:
    """config's global and per-provider settings: each is in the azd table, fixed by broker.bicep, or exempt."""
    documented = {setting for setting, _, _ in documented_rows()}
    fixed = {s.name for s in app_settings()}
    names = [*config.GLOBAL_SETTINGS, *(f"BROKER_<NAME>_{suffix}" for suffix in config.PROVIDER_SETTING_SUFFIXES)]
    missing = [name for name in names if name not in documented | fixed | set(NOT_THROUGH_AZD)]
    assert not missing, f"no azd path, no fixed value and no reason for {missing}: add them to docs/deploy.md's table"


def test_allowed_roles_is_owned_by_the_hook_and_the_docs_say_so() -> None:
    """An azd value for BROKER_<NAME>_ALLOWED_ROLES is ignored: the hook writes the role it declares."""
    rows = {setting: (azd, path) for setting, azd, path in documented_rows()}
    azd, path = rows["BROKER_<NAME>_ALLOWED_ROLES"]
    assert "owned by the hook" in azd
    assert hook_settings({"BROKER_ILEVEL_ALLOWED_ROLES": "Someone.Else"})["BROKER_ILEVEL_ALLOWED_ROLES"] == (
        "Token.Read.ilevel"
    )


# --- a removed setting leaves the app ---


def retained() -> bool:
    """Whether the site module keeps live app settings: its configs[] entry, else the pinned module's default."""
    source = BROKER_BICEP.read_text(encoding="utf-8")
    pinned = re.search(r"module app 'br/public:(avm/res/web/site:[\d.]+)'", source)
    assert pinned
    merge = json.loads(AVM_PARAMETERS.read_text(encoding="utf-8"))["modules"][pinned[1]].get("appsettings_merge")
    assert merge, f"{pinned[1]} has no retainCurrentAppSettings: it always merges the live settings"
    value = re.search(r"retainCurrentAppSettings: (\w+)", source)
    return bool(merge["retain_default"]) if value is None else value[1] == "true"


def render(env: dict[str, str]) -> dict[str, str]:
    """The app settings one provision writes for an azd environment (deploy-time expressions as placeholders)."""
    fixed = {s.name: s.literal or f"<{s.name}>" for s in [*app_settings(), *operator_settings()]}
    return {**fixed, **hook_settings(env)}


def deploy(live: dict[str, str], new: dict[str, str], *, retain: bool) -> dict[str, str]:
    """What the app holds afterwards, as the AVM module computes it: union(live if retained else {}, new)."""
    return {**(live if retain else {}), **new}


def test_a_setting_removed_from_the_environment_is_gone_after_the_next_provision() -> None:
    """A provider removed and MODE unset: the second provision's settings replace the first's."""
    first = {
        "BROKER_PROVIDERS": "ilevel,my-api",
        "BROKER_ILEVEL_MODE": "proxy",
        "BROKER_MY_API_TOKEN_URL": SAMPLE["TOKEN_URL"],
        "BROKER_MY_API_SCOPE": "api://my-api/.default",
    }
    second = {"BROKER_PROVIDERS": "ilevel"}
    live = deploy(deploy({}, render(first), retain=retained()), render(second), retain=retained())
    assert live == render(second)
    assert "BROKER_ILEVEL_MODE" not in live
    assert not [name for name in live if name.startswith("BROKER_MY_API_")]
    # What the module did before 0.16.0 (and does when retained): the stale settings stay.
    stale = deploy(deploy({}, render(first), retain=True), render(second), retain=True)
    assert stale["BROKER_ILEVEL_MODE"] == "proxy"
