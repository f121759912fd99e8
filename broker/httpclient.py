"""The process's one outbound HTTP client, replaced if anything ever closes it.

Token endpoints and Entra metadata share one pooled ``httpx.AsyncClient``. Its lifetime
is the process's: no request and no ASGI lifespan message closes it (the Functions worker
may start the lifespan more than once). Should something close it all the same, the next
caller gets a new client instead of ``RuntimeError: the client has been closed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx

from broker import __version__

log = logging.getLogger(__name__)

# What the broker calls itself upstream: on the token request and on every proxied call alike.
USER_AGENT = f"ilevel-token-broker/{__version__}"


def default_client() -> httpx.AsyncClient:
    """Explicit timeouts everywhere; redirects are never followed (a token endpoint has no business redirecting)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, connect=5.0),
        follow_redirects=False,
        limits=httpx.Limits(max_connections=50, max_keepalive_connections=10),
    )


class SharedClient:
    """Call it for the live client: a closed client is never handed out again."""

    def __init__(
        self, client: httpx.AsyncClient | None = None, *, factory: Callable[[], httpx.AsyncClient] = default_client
    ) -> None:
        self._factory = factory
        self._client = client or factory()

    def __call__(self) -> httpx.AsyncClient:
        if self._client.is_closed:
            log.warning("http: the shared client was closed; replacing it")
            self._client = self._factory()
        return self._client

    @property
    def closed(self) -> bool:
        """Whether the current client is closed (after a real shutdown, until the next call replaces it)."""
        return self._client.is_closed

    async def aclose(self) -> None:
        """Close the current client; only the process's owner calls this, at a real shutdown."""
        await self._client.aclose()
