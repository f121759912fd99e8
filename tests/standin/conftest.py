"""Fixtures that run the stand-ins on loopback for the stand-ins' own tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.standin.entra import EntraStandin
from broker.standin.identity import ManagedIdentityServer
from broker.standin.keyvault import KeyVaultServer
from broker.standin.oauth import TokenServer
from broker.standin.serve import Served, run_server
from broker.standin.tls import PKIFiles, TestPKI


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKIFiles:
    return TestPKI().write(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[Served[ManagedIdentityServer]]:
    app = ManagedIdentityServer(client_id=str(uuid.uuid4()))
    with run_server(app) as server:
        for name, value in app.environment(server.url).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AZURE_CLIENT_ID", app.client_id or "")
        yield Served(app, server)


@pytest.fixture
def key_vault(pki: PKIFiles, identity: Served[ManagedIdentityServer]) -> Iterator[Served[KeyVaultServer]]:
    app = KeyVaultServer(accepted_tokens=identity.app.issued_tokens)
    with run_server(app, certfile=pki.cert, keyfile=pki.key) as server:
        yield Served(app, server)


@pytest.fixture
def token_server() -> Iterator[Served[TokenServer]]:
    app = TokenServer()
    with run_server(app) as server:
        yield Served(app, server)


@pytest.fixture
def entra() -> Iterator[Served[EntraStandin]]:
    app = EntraStandin()
    with run_server(app) as server:
        app.authority = server.url
        yield Served(app, server)


@pytest.fixture
def untrusted_ca(tmp_path: Path) -> str:
    return TestPKI.untrusted_ca_pem(tmp_path / "untrusted-ca.pem")
