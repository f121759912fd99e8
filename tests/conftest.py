"""Shared fixtures: real local servers (Key Vault over TLS with its challenge, the App Service
managed-identity endpoint, an OAuth2 token endpoint, Entra metadata and JWKS) and a broker
wired to them. Servers live for the session; every test gets them reset and a fresh broker.

Every generated secret and token is registered in ``SENSITIVE``; after each test the
captured log records are searched for all of them (the suite-wide leak check).

Tiers: a test is fast unless marked ``slow`` (or it uses a fixture in ``SLOW_FIXTURES``, which marks it);
``make check`` runs the fast ones (``-m "not slow"``), ``make test`` all. A test not marked slow that
starts a subprocess fails with a message saying to mark it. ``serial`` marks the timing gates that
``make test`` runs after the rest, alone, not beside another xdist worker.

Hypothesis: the ``ci`` profile (``make test``, or ``CI=true``) runs every example; the default ``dev``
profile a tenth of them. A test that sets its own count passes it through :func:`examples`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import settings as hypothesis_settings

from broker.config import Settings, load_settings
from broker.endpoint import RetryPolicy
from broker.runtime import Broker, Overrides
from broker.standin.entra import EntraStandin
from broker.standin.identity import ManagedIdentityServer
from broker.standin.keyvault import KeyVaultServer
from broker.standin.oauth import TokenServer
from broker.standin.serve import RunningServer, run_server
from broker.standin.tls import PKIFiles, TestPKI
from broker.telemetry import Telemetry
from tests.hosts import HOSTS, open_host

# pytest imports this file as ``conftest``; test modules import it as ``tests.conftest``. One module,
# or the values registered through one name would be missing from the leak checks made through the other.
sys.modules.setdefault("tests.conftest" if __name__ == "conftest" else "conftest", sys.modules[__name__])

# Values that must never appear in a log record or an error body.
SENSITIVE: set[str] = set()

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, connect_timeout_s=0.5, read_timeout_s=1.0)
AUDIENCE = "api://ilevel-token-broker"
ROLE = "Token.Read.ilevel"


# Hypothesis's own default (100) in CI; a tenth for a developer's run. HYPOTHESIS_PROFILE names one outright.
hypothesis_settings.register_profile("ci", max_examples=100)
hypothesis_settings.register_profile("dev", max_examples=10)
hypothesis_settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI", "").lower() == "true" else "dev")
)


def examples(full: int) -> int:
    """A test's own example count under the loaded profile: ``full`` in CI, a tenth of it by default."""
    return max(1, full * hypothesis_settings.default.max_examples // 100)


# Fixtures that start a process (Azurite, node) or take seconds: a test using one is slow, marked or not.
SLOW_FIXTURES = frozenset({"azurite", "restartable_azurite", "fleet_stack"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "serial: a timing gate: make test runs it alone, after the xdist run")
    # azure-core's User-Agent reads platform.platform(), whose first call runs `uname -p` (then cached):
    # a library's one-off, not a test starting a process, so it runs here, before the guard.
    platform.platform()
    sys.addaudithook(_fast_tests_start_no_process)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())) or item.get_closest_marker("serial"):
            item.add_marker(pytest.mark.slow)


_running_fast: list[str] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """While a test not marked slow sets up and runs, starting a subprocess fails."""
    with _fast_unless_slow(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _fast_unless_slow(item):
        return (yield)


@contextlib.contextmanager
def _fast_unless_slow(item: pytest.Item) -> Iterator[None]:
    if item.get_closest_marker("slow") is None:
        _running_fast.append(item.nodeid)
    try:
        yield
    finally:
        _running_fast.clear()


# The audit events (docs.python.org/3/library/audit_events.html) that start another program.
_PROCESS_EVENTS = frozenset({"subprocess.Popen", "os.system", "os.posix_spawn", "os.spawn", "os.exec", "os.fork"})


def _fast_tests_start_no_process(event: str, args: tuple[Any, ...]) -> None:
    if event in _PROCESS_EVENTS and _running_fast:
        raise RuntimeError(
            f"{_running_fast[0]} starts a process ({event} {args[0] if args else ''!r}) but is not marked slow: "
            "mark it @pytest.mark.slow (make check, the fast tier, starts no process)"
        )


def sensitive(value: str) -> str:
    SENSITIVE.add(value)
    return value


def leaks(text: str) -> list[str]:
    """The registered secret or token values found in ``text`` (shortened for the report)."""
    return [value[:6] + "…" for value in SENSITIVE if len(value) >= 8 and value in text]
    # Tokens issued by the stand-ins are registered as they are issued, too.


@pytest.fixture(autouse=True)
def no_secret_in_any_log_line(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The suite-wide leak check: no secret or token value in any log record of any test."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + repr(record.exc_info[1]) + " " + str(record.exc_info[1])
        found = leaks(text)
        assert not found, f"log record from {record.name} leaks {found}"


@dataclass
class Servers:
    identity: ManagedIdentityServer
    key_vault: KeyVaultServer
    tokens: TokenServer
    entra: EntraStandin
    running: dict[str, RunningServer]
    pki: PKIFiles

    def url(self, name: str) -> str:
        return self.running[name].url


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKIFiles:
    return TestPKI().write(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def servers(pki: PKIFiles) -> Iterator[Servers]:
    identity = ManagedIdentityServer(client_id=str(uuid.uuid4()))
    key_vault = KeyVaultServer(accepted_tokens=identity.issued_tokens)
    tokens = TokenServer()
    entra = EntraStandin()
    running = {
        "identity": run_server(identity),
        "key_vault": run_server(key_vault, certfile=pki.cert, keyfile=pki.key),
        "tokens": run_server(tokens),
        "entra": run_server(entra),
    }
    entra.authority = running["entra"].url
    try:
        yield Servers(identity, key_vault, tokens, entra, running, pki)
    finally:
        for server in running.values():
            server.stop()


@dataclass
class Stack:
    """The servers, reset, plus generated credentials and helpers to build a broker on them."""

    servers: Servers
    monkeypatch: pytest.MonkeyPatch
    client_id: str
    client_secret: str
    env: dict[str, str] = field(default_factory=dict)
    brokers: list[Broker] = field(default_factory=list)

    @property
    def kv(self) -> KeyVaultServer:
        return self.servers.key_vault

    @property
    def tokens(self) -> TokenServer:
        return self.servers.tokens

    @property
    def entra(self) -> EntraStandin:
        return self.servers.entra

    @property
    def token_url(self) -> str:
        return self.servers.url("tokens") + "/oauth/token"

    def settings(self, **changes: str) -> Settings:
        env = dict(self.env)
        env.update(changes)
        return load_settings({k: v for k, v in env.items() if v is not None})

    def broker(self, settings: Settings | None = None, **overrides: Any) -> Broker:
        options: dict[str, Any] = {
            "secret_client_options": {
                "connection_verify": self.servers.pki.ca,
                "verify_challenge_resource": False,
                "retry_total": 1,
                "retry_backoff_factor": 0.01,
            },
            "retry": FAST_RETRY,
        }
        options.update(overrides)
        broker = Broker(settings or self.settings(), Overrides(**options))
        self.brokers.append(broker)
        return broker

    def export_environment(self) -> None:
        """Put the settings in the process environment, as app settings are in Azure (for whole-process tests)."""
        for key, value in self.env.items():
            self.monkeypatch.setenv(key, value)
        self.monkeypatch.setenv("REQUESTS_CA_BUNDLE", self.servers.pki.ca)
        self.monkeypatch.setenv("BROKER_KEY_VAULT_VERIFY_CHALLENGE_RESOURCE", "false")

    def caller(self, *, roles: tuple[str, ...] = (ROLE,), **claims: Any) -> str:
        """A valid Entra access token for the broker, as ADF's managed identity would send."""
        claims.setdefault("aud", AUDIENCE)
        return sensitive(self.entra.mint(self.entra.tenant_id, roles=roles, **claims))

    def rotate_secret(self, value: str | None = None, *, accept: bool = True) -> str:
        """Put a new client-secret version in the vault (and, by default, make it valid upstream)."""
        new = sensitive(value or secrets.token_urlsafe(24))
        self.kv.set_secret("ilevel-client-secret", new)
        if accept:
            self.tokens.accept(self.client_id, new)
        return new


@pytest.fixture
def stack(servers: Servers, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    servers.key_vault.reset_counts()
    servers.key_vault.allow()
    servers.key_vault.faults.clear()
    servers.key_vault.latency_s = 0.0
    servers.tokens.reset()
    servers.tokens.variants = {"basic_raw"}
    servers.tokens.expires_in = 3600
    servers.tokens.latency_s = 0.0
    servers.tokens.token_type = "Bearer"
    servers.entra.fail_jwks = False
    servers.identity.fail_with(None)
    for name, value in servers.identity.environment(servers.url("identity")).items():
        monkeypatch.setenv(name, value)
    # The client ids look like iLevel's: base64 text with '=' padding, '+' and '/'.
    client_id = sensitive(secrets.token_urlsafe(12) + "+/=")
    client_secret = sensitive(secrets.token_urlsafe(24))
    for name in ("ilevel-client-id", "ilevel-client-secret"):
        servers.key_vault.delete(name)
    servers.key_vault.set_secret("ilevel-client-id", client_id)
    servers.key_vault.set_secret("ilevel-client-secret", client_secret)
    servers.tokens.accept(client_id, client_secret)
    servers.key_vault.reset_counts()
    stack = Stack(servers, monkeypatch, client_id, client_secret)
    stack.env = {
        "KEY_VAULT_URL": servers.url("key_vault") + "/",
        "AZURE_CLIENT_ID": servers.identity.client_id or "",
        "AZURE_AUTHORITY_HOST": servers.url("entra"),
        "BROKER_TENANT_ID": servers.entra.tenant_id,
        "BROKER_AUDIENCE": AUDIENCE,
        "BROKER_PROVIDERS": "ilevel",
        "BROKER_ILEVEL_TOKEN_URL": stack.token_url,
        "BROKER_ILEVEL_ALLOWED_ROLES": ROLE,
        "BROKER_TOKEN_BUDGET_SECONDS": "5",
    }
    yield stack
    for token in servers.tokens.issued_tokens:
        sensitive(token)
    for token in servers.identity.issued_tokens:
        sensitive(token)


@pytest.fixture
async def broker(stack: Stack) -> AsyncIterator[Broker]:
    broker = stack.broker()
    yield broker
    await broker.aclose()


class Api:
    """The broker's HTTP surface on one of the two hosts, with every answer checked for leaks."""

    def __init__(self, client: httpx.AsyncClient, stack: Stack) -> None:
        self.client = client
        self.stack = stack

    async def get(self, path: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = await self.client.request(kwargs.pop("method", "GET"), path, headers=headers, **kwargs)
        for issued in self.stack.tokens.issued_tokens:
            sensitive(issued)
        if response.status_code != 200:
            found = leaks(response.text)
            assert not found, f"error body leaks {found}"
            assert "Traceback" not in response.text
        return response


@pytest.fixture(params=HOSTS)
def host(request: pytest.FixtureRequest, stack: Stack) -> str:
    """Which host serves the broker in this test: every contract test runs on both (tests/hosts.py)."""
    stack.export_environment()
    return str(request.param)


@pytest.fixture
async def api(stack: Stack, broker: Broker, host: str) -> AsyncIterator[Api]:
    """The broker's HTTP surface on ``host``, serving the test's ``broker``."""
    async with open_host(host, broker) as client:
        yield Api(client, stack)


@pytest.fixture
def telemetry() -> Telemetry:
    return Telemetry()
