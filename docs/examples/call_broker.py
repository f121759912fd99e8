"""Get an iLevel access token from the broker, from any Python code running with an Azure identity.

    from call_broker import fetch_ilevel_token
    token = fetch_ilevel_token("https://func-broker-abc123.azurewebsites.net", "api://<tenantId>/ilevel-token-broker-dev/.default")

``broker_url`` is the broker's base URL (scheme and host, no path); ``scope`` is the broker's
App ID URI followed by ``/.default``. The credential defaults to DefaultAzureCredential: the
managed identity of the Azure resource the code runs on. The identity needs the broker's
``Token.Read.ilevel`` app role (docs/adf.md, step 2). A person's ``az login`` does not work: the
broker's roles are application roles and its routes refuse user tokens (docs/callers.md).
"""

from __future__ import annotations

from typing import Any

import httpx
from azure.core.credentials import TokenCredential
from azure.identity import DefaultAzureCredential

# Above the broker's longest token fetch (BROKER_TOKEN_BUDGET_SECONDS at most 50 s, plus 15 s of Key Vault
# reads), so a slow fetch arrives as the broker's own 504 rather than a client-side timeout.
TIMEOUT_S = 90.0


class BrokerError(RuntimeError):
    """The broker refused or failed; carries its status and RFC 6749/6750 error code, never a token."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"broker answered {status} {error}: {description}")
        self.status = status
        self.error = error
        self.description = description


def fetch_ilevel_token(
    broker_url: str,
    scope: str,
    credential: TokenCredential | None = None,
    *,
    min_validity: int = 300,
    provider: str = "ilevel",
    client: httpx.Client | None = None,
) -> str:
    """Return an iLevel access token valid for at least ``min_validity`` seconds."""
    credential = credential or DefaultAzureCredential()
    entra_token = credential.get_token(scope).token
    url = f"{broker_url.rstrip('/')}/api/token/{provider}"
    request: dict[str, Any] = {
        "params": {"min_validity": str(min_validity)},
        "headers": {"Authorization": f"Bearer {entra_token}"},
        "timeout": TIMEOUT_S,
    }
    if client is not None:
        response = client.get(url, **request)
    else:
        with httpx.Client() as own_client:
            response = own_client.get(url, **request)
    if response.status_code != 200:
        try:
            body = response.json()
        except ValueError:
            body = {}
        error = body.get("error", "http_error") if isinstance(body, dict) else "http_error"
        description = body.get("error_description", response.reason_phrase) if isinstance(body, dict) else ""
        raise BrokerError(response.status_code, str(error), str(description))
    return str(response.json()["access_token"])
