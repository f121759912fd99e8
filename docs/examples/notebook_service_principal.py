"""A notebook cell (Azure Databricks or Microsoft Fabric): the broker's iLevel token with a service principal.

Neither notebook has an Azure managed identity it can use for the broker, and a notebook's own token
(Fabric's ``notebookutils.credentials.getToken``, Databricks' user token) signs a *user* in, which
the broker refuses. So the cell signs the service principal in with client credentials; its secret
comes from the caller's own Key Vault (a Databricks secret scope backed by it, or Fabric's
``notebookutils.credentials.getSecret``), never from the notebook's text.

The service principal's *object id* (Enterprise applications, not its application id) is in
BROKER_CALLER_PRINCIPAL_IDS, so ``azd provision`` granted it Token.Read.ilevel.
"""

from __future__ import annotations

import httpx
from azure.core.credentials import TokenCredential
from azure.identity import ClientSecretCredential

TENANT_ID = "<tenantId>"
CLIENT_ID = "<the service principal's application (client) id>"
BROKER_URL = "https://func-broker-abc123.azurewebsites.net"
SCOPE = "api://<tenantId>/ilevel-token-broker-dev/.default"


def read_client_secret() -> str:
    """The service principal's secret from the caller's Key Vault, by the notebook's own means."""
    try:  # Azure Databricks: a Key Vault-backed secret scope.
        return str(dbutils.secrets.get(scope="broker-caller", key="client-secret"))  # type: ignore[name-defined]  # noqa: F821
    except NameError:  # Microsoft Fabric: the notebook reads the vault itself.
        import notebookutils  # type: ignore[import-not-found]

        return str(notebookutils.credentials.getSecret("https://kv-callers.vault.azure.net/", "client-secret"))


def fetch_ilevel_token(
    credential: TokenCredential, *, broker_url: str = BROKER_URL, scope: str = SCOPE, min_validity: int = 300
) -> str:
    """The iLevel access token the broker serves to this service principal."""
    entra = credential.get_token(scope).token
    response = httpx.get(
        f"{broker_url}/api/token/ilevel",
        params={"min_validity": str(min_validity)},
        headers={"Authorization": f"Bearer {entra}"},
        timeout=90.0,  # above the broker's longest token fetch: a 50 s budget plus 15 s of Key Vault
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


if __name__ == "__main__":
    ilevel_token = fetch_ilevel_token(ClientSecretCredential(TENANT_ID, CLIENT_ID, read_client_secret()))
