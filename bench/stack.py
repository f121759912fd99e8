"""The real local servers every bench runs against, as the test suite starts them.

Key Vault over TLS (trustme CA, bearer challenge), the App Service managed identity
endpoint, an OAuth2 token endpoint and Entra metadata/JWKS, each a uvicorn server on
loopback in a thread of this process. A broker under test either runs in another
process (``python -m broker serve``, configured by :meth:`StandIns.broker_env`) or in
this one (:meth:`StandIns.broker`, with :class:`broker.runtime.Overrides`).
"""

from __future__ import annotations

import os
import secrets
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from broker.config import load_settings
from broker.runtime import Broker, Overrides
from broker.standin.entra import EntraStandin
from broker.standin.identity import ManagedIdentityServer
from broker.standin.keyvault import KeyVaultServer
from broker.standin.oauth import TOKEN_PATH, TokenServer
from broker.standin.serve import RunningServer, run_server
from broker.standin.tls import PKIFiles, TestPKI
from broker.standin.trips import RoundTrips

AUDIENCE = "api://ilevel-token-broker"
ROLE = "Token.Read.ilevel"
# Long enough for any bench run: an ADF managed-identity token lives about 24 h.
CALLER_TOKEN_LIFETIME_S = 24 * 3600
SECRET_NAMES = ("ilevel-client-id", "ilevel-client-secret")


class StandIns:
    """The four stand-ins, running, with one valid credential pair stored and accepted."""

    def __init__(self, pki: PKIFiles) -> None:
        self.pki = pki
        self.identity = ManagedIdentityServer(client_id=str(uuid.uuid4()))
        self.key_vault = KeyVaultServer(accepted_tokens=self.identity.issued_tokens)
        self.tokens = TokenServer(expires_in=3600)
        self.entra = EntraStandin()
        self.running: dict[str, RunningServer] = {}
        # Every request to a stand-in waits trips.latency_s (0 unless a bench injects it) and is recorded.
        self.trips = RoundTrips()
        # iLevel-like client id: base64 text with '=', '+' and '/'.
        self.client_id = secrets.token_urlsafe(12) + "+/="
        self.client_secret = secrets.token_urlsafe(24)

    def start(self) -> None:
        self.running = {
            "identity": run_server(self.trips.wrap("identity", self.identity)),
            "key_vault": run_server(
                self.trips.wrap("key_vault", self.key_vault), certfile=self.pki.cert, keyfile=self.pki.key
            ),
            "tokens": run_server(self.trips.wrap("tokens", self.tokens)),
            "entra": run_server(self.trips.wrap("entra", self.entra)),
        }
        self.entra.authority = self.running["entra"].url
        self.key_vault.set_secret(SECRET_NAMES[0], self.client_id)
        self.key_vault.set_secret(SECRET_NAMES[1], self.client_secret)
        self.tokens.accept(self.client_id, self.client_secret)
        self.reset()

    def stop(self) -> None:
        for server in self.running.values():
            server.stop()

    def reset(self) -> None:
        """Zero every counter the benches read."""
        self.key_vault.reset_counts()
        self.tokens.reset()
        self.tokens.expires_in = 3600
        self.tokens.latency_s = 0.0
        self.trips.latency_s = 0.0
        self.trips.reset()

    # --- what the benches count -------------------------------------------------------------
    @property
    def token_requests(self) -> int:
        return self.tokens.request_count

    def secret_reads(self) -> dict[str, int]:
        return {name: self.key_vault.reads[name] for name in SECRET_NAMES}

    # --- configuring a broker ---------------------------------------------------------------
    def settings_env(self) -> dict[str, str]:
        """The app settings of a broker wired to these stand-ins."""
        return {
            "KEY_VAULT_URL": self.running["key_vault"].url + "/",
            "AZURE_CLIENT_ID": self.identity.client_id or "",
            "AZURE_AUTHORITY_HOST": self.running["entra"].url,
            "BROKER_TENANT_ID": self.entra.tenant_id,
            "BROKER_AUDIENCE": AUDIENCE,
            "BROKER_PROVIDERS": "ilevel",
            "BROKER_ILEVEL_TOKEN_URL": self.running["tokens"].url + TOKEN_PATH,
            "BROKER_ILEVEL_ALLOWED_ROLES": ROLE,
            # The stand-in vault is not *.vault.azure.net, and its CA is the test CA.
            "BROKER_KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "false",
        }

    def broker_env(self) -> dict[str, str]:
        """A whole process environment for ``python -m broker serve`` or ``function_app``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "AZURE_", "KEY_VAULT"))}
        env.update(self.settings_env())
        env.update(self.identity_env())
        env["REQUESTS_CA_BUNDLE"] = self.pki.ca
        env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING", None)
        return env

    def identity_env(self) -> dict[str, str]:
        """IDENTITY_ENDPOINT and IDENTITY_HEADER: set them in this process before using :meth:`broker`."""
        return self.identity.environment(self.running["identity"].url)

    def broker(self, *, clock: Callable[[], float] | None = None, **overrides: Any) -> Broker:
        """A broker in this process, wired to the stand-ins (needs :meth:`identity_env` in the environment)."""
        options: dict[str, Any] = {
            "secret_client_options": {"connection_verify": self.pki.ca, "verify_challenge_resource": False},
        }
        if clock is not None:
            options["clock"] = clock
        options.update(overrides)
        return Broker(load_settings(self.settings_env()), Overrides(**options))

    def caller(self, *, lifetime_s: int = CALLER_TOKEN_LIFETIME_S) -> str:
        """A valid caller token, as ADF's managed identity sends it."""
        return self.entra.mint(self.entra.tenant_id, aud=AUDIENCE, roles=[ROLE], expires_in=lifetime_s)


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set these environment variables in this process, and restore the previous values on exit."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def standins() -> Iterator[StandIns]:
    """Start the stand-ins with a throwaway PKI; stop them on exit."""
    with tempfile.TemporaryDirectory(prefix="bench-pki-") as folder:
        servers = StandIns(TestPKI().write(folder))
        servers.start()
        try:
            yield servers
        finally:
            servers.stop()
