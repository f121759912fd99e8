"""One Key Vault read of the client id per fleet fetch.

The fleet layer reads the client id to name the blob; on a miss the source would read it again.
:class:`HandOver` wraps the provider's secret store for both: inside :meth:`HandOver.handing_over`
the next plain read of that secret (latest version) gets the value the layer already read, once;
any later read (the source's re-read after a rejection) goes to Key Vault again, so a rotation
is still seen at the next fetch. The hand-over lives in a context variable: it belongs to the fetch
that made it (concurrent fetches of other providers or other requests never see it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from broker.secrets import SecretStore, SecretValue, VersionInfo

_HANDED: ContextVar[dict[str, SecretValue] | None] = ContextVar("fleet_handed_secrets", default=None)


class HandOver:
    """A secret store that can hand a value already read to the next read of it, within one fetch."""

    def __init__(self, inner: SecretStore) -> None:
        self._inner = inner
        self.location = inner.location

    @contextlib.contextmanager
    def handing_over(self, value: SecretValue) -> Iterator[None]:
        """Within this block (and the tasks it starts), the next read of ``value.name`` returns ``value``."""
        token = _HANDED.set({value.name: value})
        try:
            yield
        finally:
            _HANDED.reset(token)

    async def read(self, name: str, version: str | None = None) -> SecretValue:
        handed = _HANDED.get()
        if version is None and handed is not None and name in handed:
            return handed.pop(name)
        return await self._inner.read(name, version)

    async def versions(self, name: str) -> list[VersionInfo]:
        return await self._inner.versions(name)
