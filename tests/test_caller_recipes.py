"""docs/callers.md's recipes: each caller's token shape meets the broker as stated, and each sample file parses.

Token shapes are the ones Entra issues to each recipe (Microsoft's access-token claims reference, read
2026-12-06): a managed identity's v1 token (Logic Apps, Synapse: ``appid``, ``appidacr`` 2, no
``idtyp`` unless the app asks for it, ``oid`` equal to ``sub``, ``xms_mirid`` naming the resource); a
service principal's v2 token (``azp``, ``azpacr`` 1 for a client secret); and a signed-in user's
token, which is what Fabric's "Organizational account" connection sends (``scp``, a pairwise ``sub``).
"""

from __future__ import annotations

import ast
import json
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from azure.mgmt.datafactory import models

from broker.config import MAX_PROXY_SLOT_WAIT_S, MAX_PROXY_TIMEOUT_S, MAX_TOKEN_BUDGET_S
from broker.source import KEY_VAULT_BUDGET_S
from tests.adf.test_adf_models import check
from tests.conftest import ROLE, Api, Stack
from tests.hosts import open_host
from tests.test_serve import EntraStandinCredential, served  # noqa: F401 - the fixture, for the notebook cell

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
CALLERS = ROOT / "docs" / "callers.md"
SUBSCRIPTION = "0a1b2c3d-0000-4000-8000-00000000aaaa"


def managed_identity_v1(resource: str) -> dict[str, object]:
    """What Entra adds to a managed identity's v1 token: no idtyp, the resource that holds the identity."""
    return {"idtyp": None, "xms_mirid": resource, "appidacr": "2"}


def recipe_shapes() -> dict[str, dict[str, Any]]:
    logic_app = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Logic/workflows/la-ilevel"
    synapse = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Synapse/workspaces/syn-data"
    return {
        "Logic Apps managed identity (v1)": {"version": "1.0", "extra_claims": managed_identity_v1(logic_app)},
        "Synapse workspace identity (v1)": {"version": "1.0", "extra_claims": managed_identity_v1(synapse)},
        "service principal with a secret (v2, azp)": {
            "version": "2.0",
            "extra_claims": {"idtyp": None, "azpacr": "1"},
        },
    }


@pytest.mark.parametrize("shape", list(recipe_shapes()))
async def test_each_recipes_application_token_gets_the_ilevel_token(stack: Stack, host: str, shape: str) -> None:
    """Logic Apps' and Synapse's managed identities and a service principal's v2 token are served."""
    broker = stack.broker()
    token = stack.caller(**recipe_shapes()[shape])
    async with open_host(host, broker) as client:
        response = await Api(client, stack).get("/api/token/ilevel", token=token)
    assert response.status_code == 200, response.text
    assert response.json()["access_token"] == stack.tokens.issued_tokens[-1]
    await broker.aclose()


def fabric_organizational_account(stack: Stack) -> tuple[str, dict[str, object]]:
    """A delegated token as a Fabric connection set to "Organizational account" gets it: a user's, with scp."""
    user = {
        "scp": "user_impersonation",
        "idtyp": None,
        "sub": str(uuid.uuid4()),  # pairwise for a user, unlike an app-only token's oid
        "upn": f"analyst-{uuid.uuid4().hex[:8]}@contoso.example",
        "name": f"Analyst {uuid.uuid4().hex[:8]}",
        "amr": ["pwd", "mfa"],
    }
    return stack.caller(oid=str(uuid.uuid4()), extra_claims=user), user


@pytest.mark.parametrize("route", ["/api/token/ilevel", "/api/proxy/ilevel/entities/assets"])
async def test_a_fabric_organizational_account_token_is_refused_with_what_to_do(
    stack: Stack, host: str, route: str
) -> None:
    """401 invalid_token naming the likely mistake and docs/callers.md; none of the user's claims echoed."""
    broker = stack.broker(
        stack.settings(BROKER_ILEVEL_MODE="both", BROKER_ILEVEL_API_BASE_URL="http://127.0.0.1:9/v1/")
    )
    token, user = fabric_organizational_account(stack)
    async with open_host(host, broker) as client:
        response = await Api(client, stack).get(route, token=token)
    assert (response.status_code, response.json()["error"]) == (401, "invalid_token")
    description = response.json()["error_description"]
    assert "signed a user in" in description and '"Organizational account"' in description
    assert "managed identity or a service principal" in description and "docs/callers.md" in description
    for value in (user["upn"], user["name"], user["sub"], "user_impersonation", stack.entra.tenant_id):
        assert str(value) not in response.text
    assert stack.tokens.request_count == 0
    await broker.aclose()


# --- the sample files ---------------------------------------------------------------------------------


def test_the_synapse_pipeline_loads_into_the_data_factory_models_synapse_shares() -> None:
    """A Web activity with MSI authentication for the App ID URI, secureOutput on, nothing unknown."""
    document = json.loads((EXAMPLES / "synapse_pipeline.json").read_text(encoding="utf-8"))
    assert check(document, models.PipelineResource) == []
    (activity,) = document["properties"]["activities"]
    assert activity["typeProperties"]["authentication"]["type"] == "MSI"
    assert activity["typeProperties"]["authentication"]["resource"]["value"] == "@pipeline().parameters.brokerAppIdUri"
    assert activity["policy"]["secureOutput"] is True


def test_the_logic_apps_workflow_is_json_whose_broker_calls_use_the_managed_identity() -> None:
    """Every call to the broker authenticates with the managed identity and the App ID URI as audience."""
    workflow = json.loads((EXAMPLES / "logic_app_workflow.json").read_text(encoding="utf-8"))
    definition = workflow["definition"]
    assert definition["$schema"].endswith("/workflowdefinition.json#")
    broker_calls = {n: a for n, a in definition["actions"].items() if "brokerHost" in a["inputs"]["uri"]}
    assert set(broker_calls) == {"Get_iLevel_token", "Get_iLevel_assets_through_the_proxy"}
    for action in broker_calls.values():
        assert action["inputs"]["authentication"] == {
            "type": "ManagedServiceIdentity",
            "audience": "@parameters('brokerAppIdUri')",
        }
    assert definition["actions"]["Get_iLevel_token"]["runtimeConfiguration"]["secureData"]["properties"] == ["outputs"]
    uses_token = definition["actions"]["Get_iLevel_assets"]
    assert uses_token["runtimeConfiguration"]["secureData"]["properties"] == ["inputs"]


def test_the_power_automate_action_uses_client_credentials_with_the_secret_from_key_vault() -> None:
    """ActiveDirectoryOAuth (an application token), its secret read from Key Vault, secure inputs and outputs."""
    actions = json.loads((EXAMPLES / "power_automate_http_action.json").read_text(encoding="utf-8"))
    auth = actions["Get_iLevel_token"]["inputs"]["authentication"]
    assert auth["type"] == "ActiveDirectoryOAuth"
    assert auth["secret"].startswith("@body('Get_broker_client_secret')")
    assert actions["Get_broker_client_secret"]["inputs"]["host"]["operationId"] == "GetSecret"
    for action in actions.values():
        assert set(action["runtimeConfiguration"]["secureData"]["properties"]) == {"inputs", "outputs"}


def policy(name: str) -> ET.Element:
    root = ET.parse(EXAMPLES / name).getroot()  # noqa: S314 - our own sample file
    assert root.tag == "policies"
    assert [child.tag for child in root] == ["inbound", "backend", "outbound", "on-error"]
    return root


def test_the_apim_token_mode_policy_fetches_with_its_identity_above_the_longest_token_fetch() -> None:
    """send-request to the token route with authentication-managed-identity; its timeout covers the broker's."""
    root = policy("apim_policy_token_mode.xml")
    request = root.find("./inbound/choose/when/send-request")
    assert request is not None
    assert (request.findtext("set-url") or "").split("?")[0].endswith("/api/token/ilevel")
    identity = request.find("authentication-managed-identity")
    assert identity is not None and identity.get("resource") == "api://<tenantId>/ilevel-token-broker-dev"
    assert int(request.get("timeout", "60")) > MAX_TOKEN_BUDGET_S + KEY_VAULT_BUDGET_S
    assert 'Body.As<JObject>()["access_token"]' in (root.find("./inbound/choose/when/set-variable").get("value") or "")  # type: ignore[union-attr]


def test_the_apim_proxy_mode_policy_forwards_to_the_proxy_route_with_its_identity() -> None:
    """No token route (403 token_route_disabled in proxy mode): the backend is the proxy, the identity signs."""
    root = policy("apim_policy_proxy_mode.xml")
    backend = root.find("./inbound/set-backend-service")
    assert backend is not None and (backend.get("base-url") or "").endswith("/api/proxy/ilevel")
    assert root.find("./inbound/authentication-managed-identity") is not None
    values = [v for element in root.iter() for v in (element.text or "", *element.attrib.values())]
    assert not any("/api/token/" in value for value in values)
    forward = root.find("./backend/forward-request")
    assert forward is not None and int(forward.get("timeout", "0")) >= MAX_PROXY_TIMEOUT_S + MAX_PROXY_SLOT_WAIT_S


def load_notebook_cell() -> Any:
    source = (EXAMPLES / "notebook_service_principal.py").read_text(encoding="utf-8")
    ast.parse(source)
    namespace: dict[str, Any] = {"__name__": "notebook_cell"}
    exec(compile(source, "notebook_service_principal.py", "exec"), namespace)  # noqa: S102 - our own sample
    return namespace


@pytest.mark.slow
def test_the_notebook_cell_gets_a_token_for_a_service_principal(
    served: tuple[str, subprocess.Popen[str]],  # noqa: F811 - the fixture imported above
    stack: Stack,
) -> None:
    """Run as written against `serve`: a service principal's token for the broker buys the iLevel token."""
    base, _ = served
    cell = load_notebook_cell()
    token = cell["fetch_ilevel_token"](
        EntraStandinCredential(stack, (ROLE,)), broker_url=base, scope="api://ilevel-token-broker/.default"
    )
    assert token == stack.tokens.issued_tokens[-1]
    source = (EXAMPLES / "notebook_service_principal.py").read_text(encoding="utf-8")
    assert "ClientSecretCredential(TENANT_ID, CLIENT_ID, read_client_secret())" in source


def test_callers_md_links_every_sample_file() -> None:
    """Every sample under docs/examples/ is shown or linked from docs/callers.md."""
    text = CALLERS.read_text(encoding="utf-8")
    for path in sorted(EXAMPLES.iterdir()):
        if path.suffix in {".json", ".xml", ".py"}:
            assert f"examples/{path.name}" in text, path.name


def test_callers_md_states_the_rule_first_and_the_service_principals_object_id() -> None:
    """Up front: a signed-in user fails, pick a managed identity or a service principal; then the object id."""
    text = CALLERS.read_text(encoding="utf-8")
    intro = text[: text.index("\n## ")]
    assert "any option that signs a *user* in fails; pick a managed identity or a service\nprincipal" in intro
    assert "`BROKER_CALLER_PRINCIPAL_IDS` takes the service principal's **object id**" in text
    assert "caller's own Key Vault" in text
    for heading in ("Azure Synapse pipelines", "Microsoft Fabric Data Factory pipelines", "Azure Databricks"):
        assert heading in text
    for heading in ("Logic Apps (Consumption and Standard)", "API Management", "Power Automate"):
        assert f"## {heading}" in text
