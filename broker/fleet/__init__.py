"""The fleet token cache: one token per lifetime across all of the app's instances (issue 14).

In-process cache → fleet layer (:class:`~broker.fleet.layer.FleetLayer`) → token source. Off unless
``BROKER_FLEET_CACHE_URL`` (or, for Azurite only, ``BROKER_FLEET_CACHE_CONNECTION_STRING``) is set;
:func:`broker.runtime.Broker` then wires exactly what it wired before.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from broker.cache import Fetch
from broker.config import FleetSettings, ProviderConfig
from broker.fleet.layer import FleetLayer
from broker.fleet.reads import HandOver
from broker.fleet.store import BlobStore, Store
from broker.secrets import SecretStore

__all__ = ["Fleet", "FleetLayer"]


def instance_name() -> str:
    """The writer recorded in the blob: the Functions instance id, or host and process locally."""
    return os.environ.get("WEBSITE_INSTANCE_ID", "")[:16] or f"{socket.gethostname()}-{os.getpid()}"


class Fleet:
    """The process's one blob store and a fleet layer per provider."""

    def __init__(
        self,
        settings: FleetSettings,
        *,
        credential: Any,
        event: Callable[[str, str], None],
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        store: Store | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or BlobStore(settings, credential)
        self.instance = instance_name()
        self._event = event
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self.layers: dict[str, FleetLayer] = {}

    def reads(self, secrets: SecretStore) -> HandOver:
        """The provider's secret store for both its source and its fleet layer: the client id the layer
        reads to name the blob is handed to the source's next read (one Key Vault read per fetch)."""
        return HandOver(secrets)

    def wrap(self, provider: ProviderConfig, fetch: Fetch, secrets: SecretStore) -> Fetch:
        """``fetch`` behind this provider's fleet layer (``secrets``: the source's, from :meth:`reads`)."""
        layer = FleetLayer(
            provider,
            fetch,
            store=self.store,
            secrets=secrets if isinstance(secrets, HandOver) else HandOver(secrets),
            key_secret=self.settings.key_secret,
            instance=self.instance,
            event=lambda name: self._event(provider.name, name),
            clock=self._clock,
            monotonic=self._monotonic,
            sleep=self._sleep,
        )
        self.layers[provider.name] = layer
        return layer.fetch

    def diagnostics(self, provider: str) -> dict[str, str]:
        """One provider's fleet cache as the diagnostics route shows it: on or degraded, and where."""
        layer = self.layers.get(provider)
        state = "degraded" if layer is not None and layer.circuit.degraded else "on"
        detail = (
            "this instance fetches its own tokens until the store answers again"
            if state == "degraded"
            else "tokens are shared across the fleet"
        )
        return {"state": state, "location": self.store.location, "summary": f"{state}: {self.store.location}; {detail}"}

    def close(self) -> None:
        self.store.close()
