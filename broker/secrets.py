"""Reading the upstream client credentials: from Key Vault, or from the environment locally.

The Key Vault client is azure-keyvault-secrets' synchronous ``SecretClient`` run in a
worker thread: secrets are read only when a token is fetched (about once an hour),
so a thread costs nothing, and the sync transport (requests) honours
``REQUESTS_CA_BUNDLE`` the way users expect. Every azure-core exception is
translated here, at the boundary, into the :mod:`broker.errors` tree, once: the
:class:`~broker.errors.SecretError` records why (its ``cause``), and nothing above this
module classifies the SDK's exceptions again (``check`` maps the cause to its verdict).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import SansIOHTTPPolicy

from broker.config import ProviderConfig, Setting, local_secret_variable
from broker.errors import (
    SecretDisabled,
    SecretEmpty,
    SecretError,
    SecretForbidden,
    SecretNotFound,
    SecretStoreUnavailable,
)
from broker.identity import SingleFlightCredential
from broker.retry_after import parse_retry_after
from broker.tokens import Secret, fingerprint

log = logging.getLogger(__name__)

# Key Vault's own guidance is to back off 1, 2, 4, 8, 16 s on 429; the SDK's retry
# policy does that within our budget, and a caller that still sees a 503 is told to
# come back after this long.
KEY_VAULT_RETRY_AFTER_S = 10
# The longest the SDK's retry policy may sleep on Key Vault's Retry-After (its own backoff cap): two
# retries stay inside the 15 s Key Vault budget, and no worker thread sleeps on after the caller left.
SDK_RETRY_SLEEP_CAP_S = 4
VAULT_RETRY_AFTER_HEADER = "x-broker-vault-retry-after"
# Reading both secrets (managed-identity token and Key Vault retries included) gets this
# long; with the token request's budget it bounds a whole fetch well inside ADF's 60 s.
KEY_VAULT_BUDGET_S = 15.0
# Key Vault's 403s that come from its network rules, not from a missing role: what to do about each.
NETWORK_DENIALS = {
    "ForbiddenByConnection": (
        "the vault's public network access is disabled and this request did not come through its private "
        "endpoint. Give the app VNet integration with a private endpoint and private DNS zone for the vault "
        "(azd: the network option), or allow public access from selected networks; a role changes nothing here."
    ),
    "ForbiddenByFirewall": (
        "the vault's firewall does not admit this client address. Add the address or the app's subnet to the "
        "vault's network rules, or reach the vault through its private endpoint; a role changes nothing here."
    ),
}


def prime_key_vault_models() -> int:
    """Build each of the Key Vault SDK's response models once, on this thread, before any concurrent read.

    azure-keyvault-secrets 4.12's generated ``Model.__new__`` works out a class's fields lazily, on the first
    instance, without a lock (Azure/azure-sdk-for-python#47426). Secret reads run on worker threads, several
    at once on a cold start, so two first instances built at once can leave a response's ``attributes`` a
    raw dict (seen here as a 500: ``'dict' object has no attribute 'created'``) or raise "dictionary changed
    size during iteration". Building one of each first, single-threaded, settles that work for the process.
    Returns how many model classes were primed (none if a later SDK moves them).
    """
    try:
        from azure.keyvault.secrets._generated import models
        from azure.keyvault.secrets._generated._utils.model_base import Model
    except ImportError:  # a later SDK: nothing to prime, and presumably nothing to fix
        return 0
    primed = 0
    for value in vars(models).values():
        if isinstance(value, type) and issubclass(value, Model) and value is not Model:
            value()
            primed += 1
    return primed


# At import, before any thread exists that could read a secret.
prime_key_vault_models()


@dataclass(frozen=True)
class SecretValue:
    """One secret as read: its name, its version and its (hidden) value."""

    name: str
    version: str
    value: Secret
    # What looked wrong with the stored value (see value_problems); never the value itself.
    problems: tuple[str, ...] = ()
    # Where it came from, for diagnostics: Key Vault's secret id (vault URL, name, version), whether
    # that version is enabled, and when it was created (epoch seconds; None where there is no such thing).
    id: str = ""
    enabled: bool = True
    created: float | None = None

    def describe(self) -> str:
        return f"{self.name} (version {self.version})"


@dataclass(frozen=True)
class Credentials:
    """A client id and secret read together; ``versions`` identifies the pair."""

    client_id: SecretValue
    client_secret: SecretValue

    @property
    def versions(self) -> tuple[str, str]:
        return (self.client_id.version, self.client_secret.version)

    def describe(self) -> str:
        return f"secrets {self.client_id.describe()} and {self.client_secret.describe()}"


@dataclass(frozen=True)
class VersionInfo:
    """One version of a secret as listed: no value (Key Vault's secret metadata, readable by the same role)."""

    version: str
    created: float | None
    enabled: bool


class SecretStore(Protocol):
    """Where secrets come from. Implementations translate their errors into SecretError."""

    location: str

    async def read(self, name: str, version: str | None = None) -> SecretValue: ...

    async def versions(self, name: str) -> list[VersionInfo]: ...


async def read_pair(
    store: SecretStore, provider: ProviderConfig, *, budget_s: float = KEY_VAULT_BUDGET_S
) -> Credentials:
    """A provider's client id and secret, read now and side by side, within ``budget_s`` (else 503)."""
    try:
        async with asyncio.timeout(budget_s):
            pair = await asyncio.gather(
                store.read(provider.client_id_secret), store.read(provider.client_secret_secret), return_exceptions=True
            )
    except TimeoutError:
        raise SecretStoreUnavailable(
            f"{store.location} did not answer within {budget_s:.0f} s reading "
            f"{provider.client_id_secret} and {provider.client_secret_secret}; retry later.",
            secret=provider.client_secret_secret,
            retry_after=KEY_VAULT_RETRY_AFTER_S,
            cause="timeout",
        ) from None
    # Both failed (a first setup with neither stored): name the client id's failure, the pair's first, whichever
    # answer came back first, so the advice is the same on every run.
    client_id, client_secret = pair
    if isinstance(client_id, BaseException):
        raise client_id
    if isinstance(client_secret, BaseException):
        raise client_secret
    return Credentials(client_id=client_id, client_secret=client_secret)


def value_problems(raw: str) -> tuple[str, ...]:
    """Typical paste accidents in a stored secret, described without the value."""
    problems = []
    if raw != raw.strip():
        problems.append("surrounding whitespace")
    if "\n" in raw or "\r" in raw:
        problems.append("a newline")
    if raw.lstrip().startswith("\ufeff"):
        problems.append("a byte-order mark (BOM) at the start")
    text = raw.strip().lstrip("\ufeff")
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        problems.append("wrapping quotes")
    if not text:
        problems.append("an empty value")
    return tuple(problems)


def clean_secret(name: str, raw: str) -> Secret:
    """Strip surrounding whitespace (warning by name), refuse empty values."""
    value = raw.strip()
    if not value:
        raise SecretEmpty(
            f"Secret {name!r} is empty or only whitespace; put the real value in it.",
            secret=name,
        )
    if value != raw:
        log.warning("secrets: value of secret %r had surrounding whitespace; it was stripped", name)
    return Secret(value)


class EnvironmentSecretStore:
    """Local development: secret ``ilevel-client-id`` comes from ``BROKER_SECRET_ILEVEL_CLIENT_ID``.

    Read at every fetch, so changing the variable (e.g. in a test) acts like a new version.
    """

    location = f"the environment (no {Setting.KEY_VAULT_URL} set)"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if env is None else env

    async def read(self, name: str, version: str | None = None) -> SecretValue:
        variable = local_secret_variable(name)
        raw = self._env.get(variable)
        if raw is None:
            raise SecretNotFound(
                f"Secret {name!r} is not set: with no {Setting.KEY_VAULT_URL}, "
                f"set the environment variable {variable}.",
                secret=name,
            )
        value = clean_secret(name, raw)
        # Locally there are no versions; a fingerprint stands in so that a changed value counts as new.
        version = "env-" + fingerprint(value.reveal())
        return SecretValue(name=name, version=version, value=value, problems=value_problems(raw), id=f"env:{variable}")

    async def versions(self, name: str) -> list[VersionInfo]:
        """Locally a secret has one version: the value's fingerprint."""
        current = await self.read(name)
        return [VersionInfo(version=current.version, created=None, enabled=True)]


class SecretClientLike(Protocol):
    """The part of azure.keyvault.secrets.SecretClient the broker uses."""

    def get_secret(self, name: str, version: str | None = None, **kwargs: Any) -> Any: ...

    def list_properties_of_secret_versions(self, name: str, **kwargs: Any) -> Any: ...


class KeyVaultSecretStore:
    """Reads secrets from Key Vault with the Function's managed identity.

    The SDK client is built on first use, keeping azure-identity out of cold start.
    """

    def __init__(
        self,
        *,
        vault_url: str,
        identity_client_id: str | None,
        client: SecretClientLike | None = None,
        client_options: Mapping[str, Any] | None = None,
        credential: Any = None,
    ) -> None:
        self.location = f"Key Vault {vault_url}"
        self._vault_url = vault_url
        self._identity_client_id = identity_client_id
        self._identity = identity_client_id or "(system-assigned or developer credential)"
        # A client the caller built (tests) serves every read; otherwise each read leases one of its own.
        self._given = client
        self._options = dict(client_options or {})
        # One credential for every read: concurrent reads share one managed-identity token request.
        self._credential = credential or SingleFlightCredential(identity_client_id)
        # Idle clients. A SecretClient's challenge policy keeps its bearer token in one attribute that
        # every 401 resets and the challenge answer then reads back (azure-keyvault-secrets 4.12,
        # _shared/challenge_auth_policy.py, read 2026-12-06): two cold reads on one client in two threads
        # can read it as None (seen once: AttributeError, a 500). So no client serves two reads at once;
        # the pool grows to the reads in flight (two at a cold start) and reuses them after.
        self._idle: list[SecretClientLike] = []
        self._pool_lock = threading.Lock()

    @contextlib.contextmanager
    def _client(self) -> Iterator[SecretClientLike]:
        """A client no other thread is using, for one read; back to the pool after."""
        if self._given is not None:
            yield self._given
            return
        with self._pool_lock:
            client = self._idle.pop() if self._idle else None
        if client is None:
            client = secret_client(
                self._vault_url, self._identity_client_id, credential=self._credential, **self._options
            )
        try:
            yield client
        finally:
            with self._pool_lock:
                self._idle.append(client)

    async def read(self, name: str, version: str | None = None) -> SecretValue:
        return await asyncio.to_thread(self._read, name, version)

    async def warm(self) -> None:
        """Build the client and get the managed identity's token for the vault ahead of the first read.

        A cold read waits for Key Vault's 401 challenge and only then for the identity token; taken
        here, side by side with the reads' challenge, the token is ready when the challenge is answered
        (the credential is single-flight per scope, so the reads join this request). Raises what the
        credential raises; the warm-up (:mod:`broker.warmup`) reports it."""
        await asyncio.to_thread(self._warm)

    def _warm(self) -> None:
        # The identity token first: building the credential imports azure-identity, the slow part.
        self._credential.get_token_info(key_vault_scope(self._vault_url), options={"enable_cae": True})
        with self._client():
            pass

    def _read(self, name: str, version: str | None) -> SecretValue:
        try:
            with self._client() as client:
                try:
                    secret = client.get_secret(name, version)
                except HttpResponseError as exc:
                    if version is not None or not _is_disabled(exc):
                        raise
                    secret = self._newest_enabled(client, name)
        except SecretError:
            raise
        except AzureError as exc:
            raise self._translate(name, exc) from exc
        version = str(secret.properties.version or "")
        if secret.value is None:
            raise SecretEmpty(f"Secret {name!r} (version {version}) in {self.location} has no value.", secret=name)
        value = clean_secret(name, secret.value)
        created = secret.properties.created_on
        return SecretValue(
            name=name,
            version=version,
            value=value,
            problems=value_problems(secret.value),
            id=str(secret.id or ""),
            enabled=secret.properties.enabled is not False,
            created=created.timestamp() if created is not None else None,
        )

    async def versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name`` with its creation time and state, without reading any value."""
        return await asyncio.to_thread(self._versions, name)

    def _versions(self, name: str) -> list[VersionInfo]:
        try:
            with self._client() as client:
                listed = list(client.list_properties_of_secret_versions(name))
        except AzureError as exc:
            raise self._translate(name, exc) from exc
        return [
            VersionInfo(
                version=str(p.version or ""),
                created=p.created_on.timestamp() if p.created_on is not None else None,
                enabled=p.enabled is not False,
            )
            for p in listed
        ]

    def _newest_enabled(self, client: SecretClientLike, name: str) -> Any:
        """The latest version is disabled: fall back to the newest enabled one, loudly."""
        enabled = [p for p in client.list_properties_of_secret_versions(name) if p.enabled]
        if not enabled:
            raise SecretDisabled(
                f"Every version of secret {name!r} in {self.location} is disabled; "
                "enable one or set a new version (az keyvault secret set).",
                secret=name,
            )
        # created_on has one-second resolution: among versions created in the same second, max()
        # keeps the first it meets, so scan from the end of the listing (the later-created ones).
        newest = max(reversed(enabled), key=lambda p: (p.created_on is not None, p.created_on))
        log.warning(
            "secrets: latest version of secret %r is disabled; using the newest enabled version %s",
            name,
            newest.version,
        )
        return client.get_secret(name, newest.version)

    def _translate(self, name: str, exc: AzureError) -> SecretError:
        where = self.location
        if isinstance(exc, ResourceNotFoundError):
            return SecretNotFound(
                f"Secret {name!r} does not exist in {where}; create it (az keyvault secret set --name {name}) "
                "or point the BROKER_<NAME>_CLIENT_ID_SECRET / _CLIENT_SECRET_SECRET setting at the right name.",
                secret=name,
            )
        if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) is None:
            # Raised by the credential, before Key Vault was reached.
            return SecretStoreUnavailable(
                f"The managed identity {self._identity} could not get a token for {where}: "
                f"{type(exc).__name__}. Check {Setting.AZURE_CLIENT_ID} and that the identity is assigned to the app.",
                secret=name,
                retry_after=KEY_VAULT_RETRY_AFTER_S,
                cause="identity",
                detail=str(exc.message or exc),
            )
        status = getattr(exc, "status_code", None)
        denial = vault_denial(exc)
        if denial in NETWORK_DENIALS:
            return SecretForbidden(
                f"{where} refused to read secret {name!r} (403 {denial}): {NETWORK_DENIALS[denial]}",
                secret=name,
                detail=denial,
            )
        if status in (401, 403):
            return SecretForbidden(
                f"{where} refused to read secret {name!r} ({status}): grant the identity {self._identity} "
                "the 'Key Vault Secrets User' role on the vault, and check the vault's network rules.",
                secret=name,
                detail=denial or "",
            )
        if status == 429 or (status is not None and status >= 500):
            retry_after = _retry_after(exc) or KEY_VAULT_RETRY_AFTER_S
            return SecretStoreUnavailable(
                f"{where} answered {status} reading secret {name!r}; retry later.",
                secret=name,
                retry_after=retry_after,
                cause="throttled" if status == 429 else "failing",
            )
        if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
            reason = _network_reason(exc)
            return SecretStoreUnavailable(
                f"{where} is unreachable reading secret {name!r}: {reason}. "
                f"Check {Setting.KEY_VAULT_URL}, DNS, TLS trust and the vault's firewall.",
                secret=name,
                retry_after=KEY_VAULT_RETRY_AFTER_S,
                cause="unreachable",
                detail=reason,
            )
        return SecretStoreUnavailable(
            f"{where} failed reading secret {name!r}: {type(exc).__name__} (status {status}).",
            secret=name,
            retry_after=KEY_VAULT_RETRY_AFTER_S,
        )


# Key Vault's token audience in Azure's public cloud; a sovereign cloud's vault host names its own
# (myvault.vault.azure.cn -> https://vault.azure.cn). The challenge Key Vault answers a token-less
# request with names it (resource="https://vault.azure.net"): "Azure Key Vault authentication",
# https://learn.microsoft.com/azure/key-vault/general/authentication (read 2026-12-06).
PUBLIC_VAULT_RESOURCE = "https://vault.azure.net"


def key_vault_scope(vault_url: str) -> str:
    """The scope the Key Vault SDK asks the credential for, after the challenge, for this vault."""
    host = urlsplit(vault_url).hostname or ""
    _, _, suffix = host.partition(".")
    resource = f"https://{suffix}" if suffix.startswith("vault.") else PUBLIC_VAULT_RESOURCE
    return f"{resource}/.default"


def vault_denial(exc: BaseException) -> str | None:
    """Key Vault's inner error code of a 403 (``ForbiddenByRbac``, ``ForbiddenByConnection``, ...), if any."""
    if not isinstance(exc, HttpResponseError) or exc.status_code != 403:
        return None
    inner = getattr(exc.error, "innererror", None) or {}
    code = inner.get("code") if isinstance(inner, dict) else None
    return str(code) if code else None


def _is_disabled(exc: HttpResponseError) -> bool:
    if exc.status_code != 403:
        return False
    code = vault_denial(exc)
    if code is not None:
        return code == "SecretDisabled"
    # "Operation get is not allowed on a disabled secret." Not just "disabled": a vault whose public
    # access is disabled says so too (ForbiddenByConnection), and that is no disabled secret.
    return "disabled secret" in str(getattr(exc.error, "message", "")).lower()


def _retry_after(exc: AzureError) -> float | None:
    """Key Vault's own Retry-After as :class:`RetryAfterGuard` read it (before capping the SDK's sleep)."""
    response = getattr(exc, "response", None)
    value = response.headers.get(VAULT_RETRY_AFTER_HEADER) if response is not None else None
    return float(value) if value else None


class RetryAfterGuard(SansIOHTTPPolicy[Any, Any]):
    """Key Vault's Retry-After made safe for azure-core's retry policy, which sleeps for whatever it is told.

    Only ASCII digits or an HTTP-date count (``inf``, ``1e400`` or ``²`` made the SDK raise, a 500);
    the value the SDK sleeps on is capped so a retry fits the Key Vault budget, and the value Key Vault
    gave (capped at an hour) is kept for the caller's Retry-After. Runs per retry, before the retry policy.
    """

    def on_response(self, request: PipelineRequest[Any], response: PipelineResponse[Any, Any]) -> None:
        headers = response.http_response.headers
        value = headers.get("Retry-After")
        if value is None:
            return
        seconds = parse_retry_after(value, time.time())
        del headers["Retry-After"]
        if seconds is not None:
            headers[VAULT_RETRY_AFTER_HEADER] = str(math.ceil(seconds))
            headers["Retry-After"] = str(math.ceil(min(seconds, SDK_RETRY_SLEEP_CAP_S)))


def _network_reason(exc: AzureError) -> str:
    """A short cause (DNS, TLS, refused, timeout) without the SDK's long message."""
    text = f"{exc} {exc.__cause__ or ''} {getattr(exc, 'inner_exception', '') or ''}".lower()
    if "certificate" in text or "ssl" in text or "tls" in text:
        return "TLS handshake failed (is the CA trusted? see SSL_CERT_FILE / REQUESTS_CA_BUNDLE)"
    if "name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text:
        return "DNS lookup failed"
    if "timed out" in text or "timeout" in text:
        return "timed out"
    if "refused" in text:
        return "connection refused"
    return type(exc).__name__


def build_secret_store(
    *,
    vault_url: str | None,
    identity_client_id: str | None,
    client_options: Mapping[str, Any] | None = None,
    credential: Any = None,
) -> SecretStore:
    """Key Vault when a vault URL is configured, else the environment."""
    if vault_url is None:
        return EnvironmentSecretStore()
    return KeyVaultSecretStore(
        vault_url=vault_url, identity_client_id=identity_client_id, client_options=client_options, credential=credential
    )


def secret_client(
    vault_url: str, identity_client_id: str | None, *, credential: Any = None, **options: Any
) -> SecretClientLike:
    """The SecretClient the broker uses; ``options`` override its keyword arguments (tests).

    The credential: the one given (the process's shared one), else :func:`broker.identity.build_credential`'s rule.
    """
    from azure.keyvault.secrets import SecretClient

    if credential is None:
        credential = SingleFlightCredential(identity_client_id)
    # Explicit timeouts and a short retry: the whole token request must fit ADF's 60 s.
    kwargs: dict[str, Any] = {
        "connection_timeout": 3,
        "read_timeout": 5,
        "retry_total": 2,
        "retry_backoff_factor": 0.8,
        "retry_backoff_max": SDK_RETRY_SLEEP_CAP_S,
        "per_retry_policies": [RetryAfterGuard()],
    }
    kwargs.update(options)
    client: SecretClientLike = SecretClient(vault_url, credential, **kwargs)
    return client
