"""The fleet's shared store: the protocol the fleet layer needs (read, lease, conditional write), and the
blob container that implements it.

azure-storage-blob's synchronous client, run on a small thread pool of its own: the async
client would add aiohttp (a second HTTP stack in a process that has httpx), while a fleet
read happens only on an in-process miss (about once per token lifetime, plus a waiter's polls).
Every call is bounded twice: the SDK's connect/read timeouts with no SDK retry, and
:data:`CALL_BUDGET_S` around the thread, so a hung storage account costs a caller about 2 s,
and a thread is never held longer than the socket timeouts. The pool is separate from the
default executor, so a hung storage account cannot starve Key Vault reads.

Every azure-core exception is translated here into :class:`StoreUnavailable` (with a short
reason that carries no URL, key or token) or into the two answers the protocol expects: the
lease is taken (``None``) and the write lost its condition (:class:`WriteConflict`).
Tolerated Azurite differences: creating over a leased blob answers ``BlobAlreadyExists``
(Azure: ``LeaseIdMissing``); reads are plain (Azurite answers a conditional GET on a
missing blob with 412, Azure with 404).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from broker.config import FleetSettings

T = TypeVar("T")

# Storage answers in milliseconds; a call that takes longer is treated as a failure (the issue's
# "about 2 s per call"), and the fleet layer falls back to a per-instance fetch.
CALL_BUDGET_S = 2.0
# Importing azure.storage.blob and building the client, once per process (runs beside the key read).
PREPARE_BUDGET_S = 10.0
SDK_TIMEOUTS: dict[str, Any] = {"connection_timeout": 2, "read_timeout": 2, "retry_total": 0}
STORAGE_THREADS = 4


class StoreUnavailable(Exception):  # noqa: N818 - translated at this boundary, never reaches a caller
    """Storage failed, hung, throttled or refused: ``reason`` is short and holds no secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WriteConflict(Exception):  # noqa: N818
    """The blob changed under us (ETag) or the lease was lost: someone else's write stands."""


@dataclass(frozen=True)
class Snapshot:
    """A blob as read: its bytes (None when missing or empty), ETag, and whether a lease is held on it."""

    data: bytes | None
    etag: str | None
    leased: bool


class Store(Protocol):
    """What the fleet layer needs of shared storage: one small record per name, leases and ETags.

    - ``read``: the bytes (None when missing or empty), the ETag, whether a lease is held.
    - ``acquire``: a lease of ``duration_s`` (creating the record empty if missing), or None when held.
    - ``write``: replace under our lease, only if the ETag is still ``etag``; else :class:`WriteConflict`.
    - ``release``: end our lease (a lease expired or taken over is no error).

    Every failure of the storage itself is :class:`StoreUnavailable`.
    """

    location: str

    async def prepare(self) -> None: ...

    async def read(self, name: str) -> Snapshot: ...

    async def acquire(self, name: str, duration_s: int) -> str | None: ...

    async def renew(self, name: str, lease_id: str) -> None: ...

    async def release(self, name: str, lease_id: str) -> None: ...

    async def write(self, name: str, data: bytes, *, lease_id: str, etag: str | None) -> None: ...

    def close(self) -> None: ...


class BlobStore:
    """The :class:`Store` on one Azure blob container (or Azurite's); every call bounded by :data:`CALL_BUDGET_S`."""

    def __init__(self, settings: FleetSettings, credential: Any, *, client: Any = None) -> None:
        self._settings = settings
        self._credential = credential
        self._container = client
        self._emulator = settings.connection_string is not None
        self._ready = not self._emulator
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=STORAGE_THREADS, thread_name_prefix="fleet-store")
        self.location = (
            f"blob container {settings.container_url}"
            if settings.container_url
            else f"blob container {settings.container} on the local storage emulator"
        )

    def _client(self) -> Any:
        with self._lock:
            if self._container is None:
                from azure.storage.blob import ContainerClient

                if self._settings.connection_string is not None:
                    self._container = ContainerClient.from_connection_string(
                        self._settings.connection_string, self._settings.container, **SDK_TIMEOUTS
                    )
                else:
                    self._container = ContainerClient.from_container_url(
                        str(self._settings.container_url), credential=self._credential, **SDK_TIMEOUTS
                    )
            if not self._ready:
                # The emulator starts empty; in Azure the deployment creates the container.
                with contextlib.suppress(ResourceExistsError):
                    self._container.create_container()
                self._ready = True
            return self._container

    async def prepare(self) -> None:
        """Import the SDK and build the client (and the emulator's container) outside the per-call budget:
        on a cold instance the import alone can take longer than a storage call may."""
        if self._container is not None and self._ready:
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(PREPARE_BUDGET_S):
                await loop.run_in_executor(self._pool, self._client)
        except TimeoutError:
            raise StoreUnavailable(f"the storage client was not ready within {PREPARE_BUDGET_S:.0f} s") from None
        except AzureError as exc:
            raise StoreUnavailable(_reason(exc)) from None
        except Exception as exc:  # noqa: BLE001 - e.g. the SDK missing: the caller falls back, never fails
            raise StoreUnavailable(f"the storage client could not be built ({type(exc).__name__})") from None

    async def _call(self, work: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CALL_BUDGET_S):
                return await loop.run_in_executor(self._pool, work)
        except TimeoutError:
            raise StoreUnavailable(f"no answer within {CALL_BUDGET_S:.0f} s") from None
        except (StoreUnavailable, WriteConflict):
            raise
        except AzureError as exc:
            raise StoreUnavailable(_reason(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the boundary: a storage failure never reaches a caller
            raise StoreUnavailable(type(exc).__name__) from None

    async def read(self, name: str) -> Snapshot:
        def work() -> Snapshot:
            blob = self._client().get_blob_client(name)
            try:
                downloader = blob.download_blob()
                data = downloader.readall()
            except ResourceNotFoundError:
                return Snapshot(None, None, False)
            props = downloader.properties
            leased = getattr(getattr(props, "lease", None), "state", None) == "leased"
            return Snapshot(data or None, props.etag, leased)

        return await self._call(work)

    async def acquire(self, name: str, duration_s: int) -> str | None:
        """A lease on the blob (created empty if missing), or None when another instance holds one."""

        def work() -> str | None:
            from azure.storage.blob import BlobLeaseClient

            blob = self._client().get_blob_client(name)
            for _ in range(2):
                try:
                    lease = BlobLeaseClient(blob)
                    lease.acquire(lease_duration=duration_s)
                    return str(lease.id)
                except ResourceNotFoundError:
                    try:
                        blob.upload_blob(b"", overwrite=False)
                    except ResourceExistsError:
                        pass  # created meanwhile; Azurite also says this when the blob is leased
                    except HttpResponseError as exc:
                        if exc.status_code != 412:  # Azure's LeaseIdMissing: leased meanwhile
                            raise
                except HttpResponseError as exc:
                    if exc.status_code == 409:  # LeaseAlreadyPresent
                        return None
                    raise
            return None

        return await self._call(work)

    async def renew(self, name: str, lease_id: str) -> None:
        def work() -> None:
            from azure.storage.blob import BlobLeaseClient

            BlobLeaseClient(self._client().get_blob_client(name), lease_id=lease_id).renew()

        await self._call(work)

    async def release(self, name: str, lease_id: str) -> None:
        def work() -> None:
            from azure.storage.blob import BlobLeaseClient

            try:
                BlobLeaseClient(self._client().get_blob_client(name), lease_id=lease_id).release()
            except HttpResponseError as exc:
                if exc.status_code not in (409, 412):  # expired or taken over: nothing left to release
                    raise

        await self._call(work)

    async def write(self, name: str, data: bytes, *, lease_id: str, etag: str | None) -> None:
        """Replace the blob under our lease, only if it is still the version we read."""

        def work() -> None:
            blob = self._client().get_blob_client(name)
            condition: dict[str, Any] = {}
            if etag is not None:
                condition = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
            try:
                blob.upload_blob(data, overwrite=True, lease=lease_id, **condition)
            except HttpResponseError as exc:
                if exc.status_code in (409, 412):  # ConditionNotMet, LeaseLost, LeaseIdMismatch
                    raise WriteConflict(str(exc.status_code)) from None
                raise

        await self._call(work)

    async def put(self, name: str, data: bytes) -> None:
        """Write without a lease (tests that plant a blob)."""
        await self._call(lambda: self._client().get_blob_client(name).upload_blob(data, overwrite=True))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _reason(exc: AzureError) -> str:
    """A short cause: status and error code, or the network failure's kind (no URL, no key)."""
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        code = getattr(exc, "error_code", None) or ""
        return f"HTTP {exc.status_code} {code}".strip()
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        text = f"{exc} {exc.__cause__ or ''}".lower()
        if "refused" in text:
            return "connection refused"
        if "timed out" in text or "timeout" in text:
            return "timed out"
        if "name or service not known" in text or "getaddrinfo" in text:
            return "DNS lookup failed"
        return "unreachable"
    if "credential" in type(exc).__name__.lower() or "authentication" in type(exc).__name__.lower():
        return f"the managed identity could not get a storage token ({type(exc).__name__})"
    return type(exc).__name__
