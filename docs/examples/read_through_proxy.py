"""Read an iLevel collection through the broker's proxy route, from any Python code with an Azure identity.

    from read_through_proxy import iter_pages
    for page in iter_pages("https://func-broker-abc123.azurewebsites.net",
                           "api://<tenantId>/ilevel-token-broker-dev/.default", "entities/assets?page%5Bsize%5D=500"):
        print(len(page["data"]))

The broker must run the provider in proxy mode (``BROKER_ILEVEL_MODE=proxy`` or ``both``). The caller
never sees an iLevel token: it sends its own Entra token for the broker, and follows ``links.next``,
which the broker has already rewritten to point at itself. It follows a link **only** when it lies under
the broker's own proxy root for the provider (same scheme, host and port, path under
``/api/proxy/<provider>/``): any other link would carry the caller's Entra token somewhere else, so it
raises instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
from azure.core.credentials import TokenCredential
from azure.identity import DefaultAzureCredential

# Above the broker's longest proxied request (a slot wait of at most 30 s, then BROKER_PROXY_TIMEOUT_SECONDS of at
# most 160 s): a slow upstream arrives as the broker's 503 or 504, not as a connection the client gave up on.
TIMEOUT_S = 200.0


class ProxyError(RuntimeError):
    """A failed page: the status, and the broker's error code when the broker itself refused."""

    def __init__(self, status: int, broker_error: str | None, text: str) -> None:
        source = f"the broker ({broker_error})" if broker_error else "the upstream API"
        super().__init__(f"{source} answered {status}: {text[:300]}")
        self.status = status
        self.broker_error = broker_error


class UnsafeLink(RuntimeError):
    """A ``links.next`` outside the broker's proxy root: not followed, so the Entra token stays with the broker."""


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def under_root(url: str, root: str) -> bool:
    """Whether ``url`` lies under ``root`` (origin compared case-insensitively, default ports implicit)."""
    return _origin(url) == _origin(root) and urlsplit(url).path.startswith(urlsplit(root).path)


def iter_pages(
    broker_url: str,
    scope: str,
    path: str,
    credential: TokenCredential | None = None,
    *,
    provider: str = "ilevel",
    client: httpx.Client | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield each JSON page of ``path`` (relative to the provider's API root), following ``links.next``."""
    credential = credential or DefaultAzureCredential()
    root = f"{broker_url.rstrip('/')}/api/proxy/{provider}/"
    url: str | None = root + path.lstrip("/")
    own = client or httpx.Client(timeout=TIMEOUT_S)
    try:
        while url:
            # A fresh Entra token per page: azure-identity caches it, and a long read outlives one.
            entra = credential.get_token(scope).token
            response = own.get(url, headers={"Authorization": f"Bearer {entra}"})
            if response.status_code != 200:
                raise ProxyError(response.status_code, response.headers.get("X-Broker-Error"), response.text)
            page: dict[str, Any] = response.json()
            yield page
            url = (page.get("links") or {}).get("next")
            if url and not under_root(url, root):
                raise UnsafeLink(f"links.next is not under {root}; not following it with the caller's token")
    finally:
        if client is None:
            own.close()
