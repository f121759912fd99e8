"""The secret store: the Key Vault SDK's models are built once before any concurrent read, every failed
read is classified once, where the SDK's exception is translated, and the warm-up asks for the token Key
Vault's challenge will name."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from azure.keyvault.secrets._shared import http_challenge_cache as challenge_cache

from broker.errors import SecretCause, SecretError, SecretStoreUnavailable
from broker.secrets import EnvironmentSecretStore, KeyVaultSecretStore, key_vault_scope, read_pair
from broker.standin.faults import Reply
from broker.standin.serve import closed_port
from tests.conftest import Stack

ROOT = Path(__file__).resolve().parent.parent
BROKER = ROOT / "broker"

# Run in a fresh interpreter: in this one, other tests have long since built every model.
PROBE = """
from azure.keyvault.secrets._generated import models
from azure.keyvault.secrets._generated._utils.model_base import Model
import broker.secrets
classes = [v for v in vars(models).values() if isinstance(v, type) and issubclass(v, Model) and v is not Model]
missing = [c.__qualname__ for c in classes if f"{c.__module__}.{c.__qualname__}" not in Model._calculated]
print(len(classes), missing)
"""


@pytest.mark.slow
def test_importing_the_secret_store_primes_every_key_vault_model_before_threads_read() -> None:
    """A cold start's parallel reads never race the SDK's lazy model set-up (Azure/azure-sdk-for-python#47426)."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    count, missing = result.stdout.strip().split(" ", 1)
    assert int(count) >= 2  # SecretBundle and SecretAttributes at least
    assert missing == "[]"


# --- each Key Vault failure is classified once, here: the error records why -----------------------

SECRET = "ilevel-client-secret"


def _disable_every_version(stack: Stack) -> None:
    for version in stack.kv.versions(SECRET):
        stack.kv.set_enabled(SECRET, version, False)


# (the fault, settings it needs, the cause recorded, the detail recorded or None for any)
CAUSES: dict[str, tuple[Callable[[Stack], None], dict[str, str], SecretCause, str | None]] = {
    "missing": (lambda s: s.kv.delete(SECRET), {}, "not_found", ""),
    "every version disabled": (_disable_every_version, {}, "disabled", ""),
    "no role": (lambda s: s.kv.forbid("rbac"), {}, "forbidden", "ForbiddenByRbac"),
    "private vault": (lambda s: s.kv.forbid("connection"), {}, "forbidden", "ForbiddenByConnection"),
    "firewall": (lambda s: s.kv.forbid("firewall"), {}, "forbidden", "ForbiddenByFirewall"),
    "429": (lambda s: setattr(s.kv, "default_reply", Reply(429)), {}, "throttled", ""),
    "500": (lambda s: setattr(s.kv, "default_reply", Reply(500)), {}, "failing", ""),
    "not the app's identity": (
        lambda s: None,
        {"AZURE_CLIENT_ID": "00000000-0000-4000-8000-000000000000"},
        "identity",
        None,
    ),
    "closed port": (
        lambda s: None,
        {"KEY_VAULT_URL": "https://127.0.0.1:{port}/"},
        "unreachable",
        "connection refused",
    ),
}


@pytest.mark.parametrize("fault", sorted(CAUSES))
async def test_a_failed_read_records_why_once_where_the_sdk_error_is_translated(stack: Stack, fault: str) -> None:
    """Reading a secret through the real SDK: the SecretError carries its cause and what the vault said."""
    apply, changes, cause, detail = CAUSES[fault]
    apply(stack)
    changes = {k: v.format(port=closed_port()) for k, v in changes.items()}
    broker = stack.broker(stack.settings(**changes))
    try:
        with pytest.raises(SecretError) as raised:
            await read_pair(broker.secrets, broker.settings.providers["ilevel"])
    finally:
        await broker.aclose()
    assert raised.value.cause == cause, raised.value.description
    if detail is not None:
        assert raised.value.detail == detail
    if cause == "identity":
        assert "ManagedIdentityCredential" in raised.value.detail or "managed identity" in raised.value.detail.lower()


@pytest.mark.slow
async def test_a_vault_slower_than_the_budget_is_a_timeout(stack: Stack) -> None:
    """The pair's budget running out is its own cause: the vault did not answer in time."""
    stack.kv.latency_s = 2.0
    broker = stack.broker()
    try:
        with pytest.raises(SecretStoreUnavailable) as raised:
            await read_pair(broker.secrets, broker.settings.providers["ilevel"], budget_s=0.3)
    finally:
        await broker.aclose()
    assert raised.value.cause == "timeout"
    assert "ilevel-client-id and ilevel-client-secret" in raised.value.description


async def test_a_secret_missing_from_the_environment_is_not_found() -> None:
    """Locally (no KEY_VAULT_URL) an unset variable is the same cause as a missing Key Vault secret."""
    with pytest.raises(SecretError) as raised:
        await EnvironmentSecretStore({}).read("ilevel-client-id")
    assert raised.value.cause == "not_found"


def test_no_module_but_the_secret_store_classifies_key_vault_exceptions() -> None:
    """azure.core's exceptions are imported where an SDK call is translated, and nowhere else: Key Vault's in
    broker/secrets.py, Blob Storage's (the fleet cache) in broker/fleet/store.py. check maps the cause."""
    boundaries = {BROKER / "secrets.py", BROKER / "fleet" / "store.py"}
    importers = {path for path in BROKER.rglob("*.py") if "standin" not in path.parts and _imports_exceptions(path)}
    assert importers <= boundaries, sorted(str(p.relative_to(ROOT)) for p in importers - boundaries)
    assert BROKER / "secrets.py" in importers


def _imports_exceptions(path: Path) -> bool:
    """Whether ``path`` imports azure.core.exceptions, or anything from it, in any spelling."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        if any(name.startswith("azure.core.exceptions") for name in names):
            return True
    return False


@pytest.mark.parametrize(
    ("vault_url", "scope"),
    [
        ("https://kv-broker.vault.azure.net/", "https://vault.azure.net/.default"),
        ("https://kv-broker.vault.azure.cn", "https://vault.azure.cn/.default"),
        ("https://kv-broker.vault.usgovcloudapi.net/", "https://vault.usgovcloudapi.net/.default"),
        ("https://127.0.0.1:8443/", "https://vault.azure.net/.default"),
    ],
)
def test_the_warm_up_asks_for_the_scope_key_vault_s_challenge_will_name(vault_url: str, scope: str) -> None:
    """The vault's DNS suffix names its cloud's resource; a host without one (a stand-in) gets the public cloud's."""
    assert key_vault_scope(vault_url) == scope


# --- no SDK client serves two reads at once ------------------------------------------------------------


async def test_concurrent_reads_each_get_a_client_of_their_own_and_later_reads_reuse_them(stack: Stack) -> None:
    """The SDK's challenge policy keeps one bearer token per client that a 401 resets mid-flight: reads in
    flight together never share a client (the pool grows to them), and reads after reuse the pool."""
    stack.kv.latency_s = 0.2
    broker = stack.broker()
    store = broker.secrets
    assert isinstance(store, KeyVaultSecretStore)
    try:
        names = ["ilevel-client-id", "ilevel-client-secret"] * 3
        values = await asyncio.gather(*(store.read(name) for name in names))
        assert [v.name for v in values] == names
        assert len(store._idle) == len(names)
        stack.kv.latency_s = 0.0
        for name in names:
            await store.read(name)
        assert len(store._idle) == len(names)
    finally:
        await broker.aclose()


async def test_cold_concurrent_reads_through_the_sdk_never_fail(stack: Stack) -> None:
    """Cold starts over and over (the SDK's challenge cache emptied each time): 8 reads at once all succeed."""
    failures: list[str] = []
    for _ in range(10):
        challenge_cache.clear()
        broker = stack.broker()
        try:
            results = await asyncio.gather(
                *(broker.secrets.read(n) for n in ["ilevel-client-id", "ilevel-client-secret"] * 4),
                return_exceptions=True,
            )
        finally:
            await broker.aclose()
        failures += [type(r).__name__ for r in results if isinstance(r, BaseException)]
    assert failures == []
