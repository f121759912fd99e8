"""The rotation check: on a new secret version in Key Vault, try it against the token endpoint now.

Runs from the Event Grid trigger. On Flex Consumption it runs on other instances
than the HTTP ones, so it cannot clear their caches and does not try: the HTTP side
reads secrets on every fetch and falls back to the last working pair by itself
(:mod:`broker.source`). This check only tells operators at once, in one log line,
whether the new secret works.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from broker.errors import BrokerError, SecretNotFound
from broker.runtime import Broker
from broker.secrets import Credentials

log = logging.getLogger(__name__)

NEW_VERSION_EVENT = "Microsoft.KeyVault.SecretNewVersionCreated"


@dataclass(frozen=True)
class RotationResult:
    provider: str
    secret: str
    version: str
    ok: bool
    detail: str


def _fields(data: Any) -> dict[str, str]:
    """Event data with keys trimmed and lower-cased: Microsoft's own sample has ``"ObjectName "``."""
    if not isinstance(data, dict):
        return {}
    return {str(k).strip().lower(): str(v).strip() for k, v in data.items() if isinstance(v, (str, int))}


def _vault_name(url: str | None) -> str | None:
    """``kv-x`` for https://kv-x.vault.azure.net/ (any cloud); None for other hosts such as emulators."""
    host = (urlsplit(url).hostname or "") if url else ""
    return host.split(".")[0].lower() if ".vault." in host else None


async def check_rotation_event(
    broker: Broker, data: Any, *, subject: str = "", event_type: str = NEW_VERSION_EVENT
) -> list[RotationResult]:
    """Verify a new secret version for every provider that uses it; log one line each."""
    if event_type != NEW_VERSION_EVENT:
        log.info("rotation check: ignoring event type %s", event_type)
        return []
    fields = _fields(data)
    name = fields.get("objectname") or subject.strip().rsplit("/", 1)[-1]
    version = fields.get("version") or None
    vault = fields.get("vaultname", "").lower()
    expected_vault = _vault_name(broker.settings.key_vault_url)
    if vault and expected_vault and vault != expected_vault:
        log.info("rotation check: event for vault %s, not ours (%s); ignored", vault, expected_vault)
        return []
    results = []
    for provider in broker.providers.values():
        config = provider.config
        if name not in (config.client_id_secret, config.client_secret_secret):
            continue
        results.append(await _verify(broker, provider.config.name, name, version))
    if not results:
        log.info("rotation check: secret %r is not used by any provider; ignored", name)
    return results


async def _verify(broker: Broker, provider_name: str, secret: str, version: str | None) -> RotationResult:
    provider = broker.providers[provider_name]
    config = provider.config
    try:
        names = (config.client_id_secret, config.client_secret_secret)
        client_id, client_secret = [await broker.secrets.read(n, version if n == secret else None) for n in names]
        credentials = Credentials(client_id=client_id, client_secret=client_secret)
        await provider.source.try_credentials(credentials)
    except SecretNotFound as error:
        if error.secret == secret:
            return _failed(provider_name, secret, version, error)
        # The pair's other secret is not stored yet: a first setup writes one, then the other. Not a
        # failed rotation (no alert); the second write's event checks the pair.
        log.warning(
            "rotation check: provider %s: secret %s is stored, %s not yet (a first setup?); nothing to verify "
            "until both exist: the event of the second write checks the pair",
            provider_name,
            secret,
            error.secret,
        )
        return RotationResult(provider_name, secret, version or "latest", False, "pair_incomplete")
    except BrokerError as error:
        return _failed(provider_name, secret, version, error)
    log.info(
        "rotation verified: provider %s accepted %s",
        provider_name,
        credentials.describe(),
    )
    return RotationResult(provider_name, secret, version or "latest", True, "ok")


def _failed(provider_name: str, secret: str, version: str | None, error: BrokerError) -> RotationResult:
    """One "rotation FAILED" line: what the rotationFailed alert counts (infra/app/alerts.bicep)."""
    log.error(
        "rotation FAILED: provider %s, secret %s version %s: %s (%s)",
        provider_name,
        secret,
        version or "latest",
        error.code,
        error.description,
    )
    return RotationResult(provider_name, secret, version or "latest", False, error.code)
