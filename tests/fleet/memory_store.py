"""In-memory implementations of what the fleet layer talks to, for its unit tests (no Azurite, no vault).

:class:`MemoryStore` is a real :class:`broker.fleet.store.Store`: leases expire on the clock it is given,
writes need the lease and the ETag read, as on Azure Storage. :class:`MemorySecrets` is a real
:class:`broker.secrets.SecretStore` with versions, creation times and counted reads, as Key Vault has.
The Azurite tests (test_fleet_cache.py) keep the real wire.
"""

from __future__ import annotations

import itertools
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from broker.errors import SecretNotFound, SecretStoreUnavailable
from broker.fleet.store import Snapshot, StoreUnavailable, WriteConflict
from broker.secrets import SecretValue, VersionInfo
from broker.tokens import Secret


@dataclass
class _Blob:
    data: bytes
    etag: str
    lease: str | None = None
    lease_until: float = float("-inf")
    lease_s: float = 0.0


class MemoryStore:
    """One container in memory. ``down`` makes every call fail as unreachable storage does."""

    location = "blob container memory://fleet"

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self.blobs: dict[str, _Blob] = {}
        self.down = False
        self.calls: Counter[str] = Counter()
        self._etags = itertools.count(1)

    def _call(self, operation: str) -> None:
        self.calls[operation] += 1
        if self.down:
            raise StoreUnavailable("connection refused")

    def _leased(self, blob: _Blob) -> bool:
        return blob.lease is not None and self._monotonic() < blob.lease_until

    def _etag(self) -> str:
        return f'"{next(self._etags)}"'

    async def prepare(self) -> None:
        self._call("prepare")

    async def read(self, name: str) -> Snapshot:
        self._call("read")
        blob = self.blobs.get(name)
        if blob is None:
            return Snapshot(None, None, False)
        return Snapshot(blob.data or None, blob.etag, self._leased(blob))

    async def acquire(self, name: str, duration_s: int) -> str | None:
        self._call("acquire")
        blob = self.blobs.setdefault(name, _Blob(b"", self._etag()))
        if self._leased(blob):
            return None
        blob.lease = secrets.token_hex(8)
        blob.lease_s = duration_s
        blob.lease_until = self._monotonic() + duration_s
        return blob.lease

    async def renew(self, name: str, lease_id: str) -> None:
        self._call("renew")
        blob = self.blobs.get(name)
        if blob is None or blob.lease != lease_id:
            raise StoreUnavailable("HTTP 409 LeaseIdMismatchWithLeaseOperation")
        blob.lease_until = self._monotonic() + blob.lease_s

    async def release(self, name: str, lease_id: str) -> None:
        self._call("release")
        blob = self.blobs.get(name)
        if blob is not None and blob.lease == lease_id:
            blob.lease = None

    async def write(self, name: str, data: bytes, *, lease_id: str, etag: str | None) -> None:
        self._call("write")
        blob = self.blobs.get(name)
        if blob is None or not self._leased(blob) or blob.lease != lease_id:
            raise WriteConflict("412")
        if etag is not None and etag != blob.etag:
            raise WriteConflict("412")
        blob.data = data
        blob.etag = self._etag()

    def put(self, name: str, data: bytes) -> None:
        """Plant bytes under ``name`` (a writer outside the protocol: a replay, a forgery)."""
        blob = self.blobs.setdefault(name, _Blob(b"", self._etag()))
        blob.data = data
        blob.etag = self._etag()

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class _Version:
    version: str
    value: str
    created: float
    enabled: bool = True


class MemorySecrets:
    """A vault in memory: versions with creation times, latest = newest enabled, every call counted."""

    location = "Key Vault memory://vault"

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._secrets: dict[str, list[_Version]] = {}
        self.reads: Counter[str] = Counter()
        self.list_calls: Counter[str] = Counter()
        self.down = False

    def set(self, name: str, value: str, *, created: float | None = None) -> str:
        """A new version (the latest); its version id."""
        version = secrets.token_hex(16)
        when = self._clock() if created is None else created
        self._secrets.setdefault(name, []).append(_Version(version, value, when))
        return version

    def latest(self, name: str) -> str:
        return self._newest(name).version

    def _newest(self, name: str) -> _Version:
        enabled = [v for v in self._secrets.get(name, []) if v.enabled]
        if not enabled:
            raise SecretNotFound(f"Secret {name!r} does not exist in {self.location}.", secret=name)
        return max(reversed(enabled), key=lambda v: v.created)

    async def read(self, name: str, version: str | None = None) -> SecretValue:
        self.reads[name] += 1
        if self.down:
            raise SecretStoreUnavailable(f"{self.location} is unreachable.", secret=name, retry_after=10)
        if version is None:
            found = self._newest(name)
        else:
            matches = [v for v in self._secrets.get(name, []) if v.version == version]
            if not matches:
                raise SecretNotFound(f"Secret {name!r} has no version {version} in {self.location}.", secret=name)
            found = matches[0]
        return SecretValue(name=name, version=found.version, value=Secret(found.value), created=found.created)

    async def versions(self, name: str) -> list[VersionInfo]:
        self.list_calls[name] += 1
        if self.down:
            raise SecretStoreUnavailable(f"{self.location} is unreachable.", secret=name, retry_after=10)
        return [VersionInfo(v.version, v.created, v.enabled) for v in self._secrets.get(name, [])]
