"""Rules checkov cannot enforce here: it does not open registry modules, so check our calls to them."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bicep_settings import ROOT, object_block, top_level_entries  # noqa: E402

INFRA = ROOT / "infra"
MODULE_REF = re.compile(r"^module\s+(\w+)\s+'(br/public:[^']+)'", re.MULTILINE)
PINNED = re.compile(r"^br/public:avm/(res|ptn|utl)/[a-z0-9-]+/[a-z0-9-]+(/[a-z0-9-]+)*:\d+\.\d+\.\d+$")
ROLE_ASSIGNMENT = re.compile(r"^resource\s+(\w+)\s+'Microsoft\.Authorization/roleAssignments@", re.MULTILINE)


def bicep_files() -> list[Path]:
    files = sorted(INFRA.rglob("*.bicep"))
    assert files, "no Bicep files under infra/"
    return files


def module_params(path: Path, symbol: str) -> dict[str, str]:
    text = path.read_text(encoding="utf-8")
    body = object_block(text, f"module {symbol} ")
    return dict(top_level_entries(object_block("\n".join(body), "params: {")))


def resource_properties(path: Path, symbol: str) -> dict[str, str]:
    text = path.read_text(encoding="utf-8")
    body = object_block(text, f"resource {symbol} ")
    return dict(top_level_entries(object_block("\n".join(body), "properties: {")))


def test_every_registry_module_is_an_avm_module_pinned_to_an_exact_version() -> None:
    """Each br/public reference is avm/... at an exact x.y.z version, never a floating tag."""
    refs = [ref for path in bicep_files() for _, ref in MODULE_REF.findall(path.read_text(encoding="utf-8"))]
    assert refs, "expected at least one Azure Verified Module"
    loose = [ref for ref in refs if not PINNED.fullmatch(ref)]
    assert not loose, f"not pinned to an exact AVM version: {loose}"


def test_storage_account_turns_shared_key_access_off() -> None:
    """The storage module call disables shared keys and anonymous blob access."""
    params = module_params(INFRA / "main.bicep", "storage")
    assert params["allowSharedKeyAccess"] == "false"
    assert params["allowBlobPublicAccess"] == "false"


def test_monitoring_turns_local_auth_off() -> None:
    """Log Analytics and Application Insights accept Entra ID ingestion only."""
    path = INFRA / "app" / "monitoring.bicep"
    assert module_params(path, "applicationInsights")["disableLocalAuth"] == "true"
    workspace = object_block(path.read_text(encoding="utf-8"), "resource logAnalytics ")
    features = object_block("\n".join(workspace), "features: {")
    assert dict(top_level_entries(features))["disableLocalAuth"] == "true"


def test_key_vault_uses_rbac_with_soft_delete_and_purge_protection() -> None:
    """The vault is in RBAC mode, soft delete and purge protection on, public access from a parameter."""
    props = resource_properties(INFRA / "app" / "keyvault.bicep", "vault")
    assert props["enableRbacAuthorization"] == "true"
    assert props["enableSoftDelete"] == "true"
    assert props["enablePurgeProtection"] == "true"
    assert props["publicNetworkAccess"] == "publicNetworkAccess"


def test_every_role_assignment_is_idempotent_and_typed() -> None:
    """Role assignments are named with guid(...), set principalType, and name their role GUID in a comment."""
    path = INFRA / "app" / "rbac.bicep"
    text = path.read_text(encoding="utf-8")
    symbols = ROLE_ASSIGNMENT.findall(text)
    assert symbols
    for symbol in symbols:
        body = dict(top_level_entries(object_block(text, f"resource {symbol} ")))
        assert body["name"].startswith("guid("), f"{symbol} is not named with guid(...)"
        assert "principalType" in resource_properties(path, symbol), f"{symbol} lacks principalType"
    for guid in re.findall(r"'([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})'", text):
        line = next(line for line in text.splitlines() if guid in line)
        assert "//" in line, f"role {guid} has no comment naming it"


def test_app_service_authentication_is_off_unless_asked_for() -> None:
    """authsettingsV2 is behind a bool parameter that defaults to false."""
    main = (INFRA / "main.bicep").read_text(encoding="utf-8")
    assert "param enableAppServiceAuth bool = false" in main
    broker = module_params(INFRA / "app" / "broker.bicep", "app")
    assert broker["authSettingV2Configuration"] == "enableAppServiceAuth ? authSettings : {}"
