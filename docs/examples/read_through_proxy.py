"""Read an iLevel collection through the broker's proxy route, from any Python code with an Azure identity.

    from read_through_proxy import iter_pages
    for page in iter_pages("https://func-broker-abc123.azurewebsites.net",
                           "api://<tenantId>/ilevel-token-broker-dev/.default", "entities/assets?page%5Bsize%5D=500"):
        print(len(page["data"]))

The broker must run the provider in proxy mode (``BROKER_ILEVEL_MODE=proxy`` or ``both``). The caller
never sees an iLevel token: it sends its own Entra token for the broker, and follows ``links.next``,
which the broker has already rewritten to point at itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
from azure.core.credentials import TokenCredential
from azure.identity import DefaultAzureCredential

# Above the broker's BROKER_PROXY_TIMEOUT_SECONDS (at most 160 s): a slow upstream arrives as the broker's 504.
TIMEOUT_S = 180.0


class ProxyError(RuntimeError):
    """A failed page: the status, and the broker's error code when the broker itself refused."""

    def __init__(self, status: int, broker_error: str | None, text: str) -> None:
        source = f"the broker ({broker_error})" if broker_error else "the upstream API"
        super().__init__(f"{source} answered {status}: {text[:300]}")
        self.status = status
        self.broker_error = broker_error


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
    url: str | None = f"{broker_url.rstrip('/')}/api/proxy/{provider}/{path.lstrip('/')}"
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
    finally:
        if client is None:
            own.close()
