"""The preprovision hook against a Graph that keeps a real tenant's rules (tests/infra/graph_fake.py).

Each test gives the hook an azd environment and a Graph state, runs it like azd would (values the
hook stores are in the environment of the next run), and reads the conversation it had.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.infra import standin_az as standin_az_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra" / "hooks"))
sys.path.insert(0, str(Path(__file__).parent))
import entra_app  # noqa: E402
from entra_app import AZURE_CLI_CLIENT_ID, EntraApp, HookConfig, Outcome, plan_roles  # noqa: E402
from graph_client import RETRY_DELAYS_S, Graph, HookError, Reply, az_graph_token  # noqa: E402
from graph_fake import FakeGraph, Request, app_id_only_policy, secure_uri_policy  # noqa: E402

SUBSCRIPTION = "11111111-2222-4333-8444-555555555555"
FACTORY = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
EXISTING_APP_ID = "5b1f7e0c-2d4a-4c51-9f8e-1a2b3c4d5e6f"
DEPLOYER = "d3b10e00-1111-4222-8333-444455556666"
OPERATOR = "0e0e0e0e-1111-4222-8333-444455556666"


@dataclass
class Azd:
    """The azd environment: what the hook reads, and what it stores for the next run."""

    values: dict[str, str]
    sleeps: list[float] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def set(self, name: str, value: str) -> None:
        self.values[name] = value

    def run(self, graph: FakeGraph) -> Outcome:
        client = Graph(graph, sleep=self.sleeps.append, log=self.log.append)
        return EntraApp(client, HookConfig.from_env(self.values), self.set, self.log.append).run()

    def settings(self) -> dict[str, str]:
        decoded: dict[str, str] = json.loads(base64.b64decode(self.values["BROKER_PROVIDER_SETTINGS"]))
        return decoded


def azd(**values: str) -> Azd:
    return Azd({"AZURE_ENV_NAME": "dev", "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION, **values})


def fresh(**options: Any) -> FakeGraph:
    graph = FakeGraph.from_recording("fresh_tenant.json", **options)
    graph.uri_allowed = graph.uri_allowed or secure_uri_policy(graph.tenant)
    return graph


def existing(**options: Any) -> FakeGraph:
    graph = FakeGraph.from_recording("existing_app.json", **options)
    graph.uri_allowed = secure_uri_policy(graph.tenant)
    return graph


def roles(graph: FakeGraph) -> dict[str, dict[str, Any]]:
    (app,) = graph.applications
    return {role["value"]: role for role in app["appRoles"]}


def writes(graph: FakeGraph, start: int = 0) -> list[Request]:
    return [r for r in graph.conversation[start:] if r.method != "GET"]


def test_first_run_creates_one_app_with_a_secure_uri_and_a_role_per_provider() -> None:
    """A fresh tenant gets one tagged app, URI api://<tenantId>/ilevel-token-broker-<env>, role per provider."""
    graph, env = fresh(), azd(BROKER_CALLER_PRINCIPAL_IDS=FACTORY)
    outcome = env.run(graph)
    (app,) = graph.applications
    assert outcome.created_app and outcome.created_service_principal
    assert app["identifierUris"] == [f"api://{graph.tenant}/ilevel-token-broker-dev"]
    assert env.values["BROKER_APP_ID_URI"] == app["identifierUris"][0]
    assert env.values["BROKER_API_CLIENT_ID"] == app["appId"]
    assert app["tags"] == [f"ilevel-token-broker/{SUBSCRIPTION}/dev"]
    assert set(roles(graph)) == {"Token.Read.ilevel", "Broker.Operator"}
    assert graph.service_principals[0]["appRoleAssignmentRequired"] is True
    assert [(a["principalId"], a["appRoleId"]) for a in graph.assignments] == [
        (FACTORY, roles(graph)["Token.Read.ilevel"]["id"])
    ]


def test_second_run_creates_nothing_and_writes_nothing() -> None:
    """Idempotent: run twice on the same state, and the second run only reads."""
    graph, env = fresh(), azd(BROKER_CALLER_PRINCIPAL_IDS=FACTORY)
    env.run(graph)
    first = len(graph.conversation)
    again = env.run(graph)
    assert not again.created_app and not again.created_service_principal and not again.granted
    assert writes(graph, first) == []
    assert len(graph.requests("POST", r"^/applications$")) == 1
    assert len(graph.applications) == 1


def test_a_lost_environment_finds_the_app_by_its_tag_not_a_second_create() -> None:
    """Without BROKER_API_CLIENT_ID (a new machine, a CI runner), the tag finds the app made before."""
    graph = fresh()
    azd().run(graph)
    outcome = azd().run(graph)
    assert not outcome.created_app
    assert len(graph.applications) == 1


def test_an_app_whose_uri_was_refused_is_found_again_and_not_duplicated() -> None:
    """The appId is stored before the URI is set, so a failed URI step leaves nothing a re-run cannot find."""
    graph, env = fresh(), azd()

    def refuse_uri_once(request: Request) -> Reply | None:
        if request.method == "PATCH" and "identifierUris" in (request.body or {}) and not graph.requests("PATCH")[:-1]:
            return Reply(403, {"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges"}})
        return None

    graph.fail = refuse_uri_once
    with pytest.raises(HookError, match="refused the App ID URI"):
        env.run(graph)
    graph.fail = None
    env.run(graph)
    assert len(graph.applications) == 1
    assert graph.applications[0]["identifierUris"] == [f"api://{graph.tenant}/ilevel-token-broker-dev"]


def test_a_tenant_that_allows_only_app_id_uris_gets_api_app_id() -> None:
    """When the tenant refuses the default URI, the hook uses api://<appId> and stores it."""
    graph, env = fresh(uri_allowed=app_id_only_policy), azd()
    env.run(graph)
    app_id = graph.applications[0]["appId"]
    assert graph.applications[0]["identifierUris"] == [f"api://{app_id}"]
    assert env.values["BROKER_APP_ID_URI"] == f"api://{app_id}"


def test_a_uri_the_operator_chose_and_the_tenant_refuses_is_a_clear_error() -> None:
    """An explicit BROKER_APP_ID_URI in an insecure format fails with the formats that work."""
    with pytest.raises(HookError, match=r"refused the App ID URI 'api://ilevel-token-broker'.*api://<tenantId>/<name>"):
        azd(BROKER_APP_ID_URI="api://ilevel-token-broker").run(fresh())


def test_existing_app_is_found_by_the_stored_app_id_and_keeps_its_uri_and_roles() -> None:
    """An app from an earlier version: found by appId, its URI kept, its role text untouched."""
    graph = existing()
    before = roles(graph)["Token.Read.ilevel"].copy()
    env = azd(BROKER_API_CLIENT_ID=EXISTING_APP_ID)
    outcome = env.run(graph)
    assert not outcome.created_app
    assert outcome.app_id_uri == "api://ilevel-token-broker-dev"
    assert roles(graph)["Token.Read.ilevel"] == before
    # The only writes add what operators need (tests/infra below); the URI and the provider role stay.
    assert all(w.method == "PATCH" and set(w.body) <= {"appRoles", "api", "optionalClaims"} for w in writes(graph))
    first = len(graph.conversation)
    env.run(graph)
    assert writes(graph, first) == []


def test_rerun_after_the_role_text_changed_in_code_keeps_the_enabled_role() -> None:
    """An enabled role whose description differs from what the hook would write is left as it is."""
    graph = existing()
    roles(graph)["Token.Read.ilevel"]["description"] = "Older wording"
    azd(BROKER_API_CLIENT_ID=EXISTING_APP_ID).run(graph)
    assert roles(graph)["Token.Read.ilevel"]["description"] == "Older wording"


def test_an_added_provider_gets_a_role_and_existing_roles_stay() -> None:
    """A new provider's role is added; the other app roles, ours or not, are kept byte for byte."""
    graph = existing()
    before = roles(graph)
    env = azd(
        BROKER_API_CLIENT_ID=EXISTING_APP_ID,
        BROKER_PROVIDERS="ilevel,other",
        BROKER_OTHER_TOKEN_URL="https://login.other.example/oauth2/token",
    )
    env.run(graph)
    after = roles(graph)
    assert after["Token.Read.ilevel"] == before["Token.Read.ilevel"]
    assert after["Broker.Admin"] == before["Broker.Admin"]
    assert after["Token.Read.other"]["isEnabled"] is True


def test_a_removed_provider_role_is_disabled_then_deleted_on_the_next_run() -> None:
    """Retiring a role takes two runs, as Graph demands: disable, then delete."""
    graph = existing()
    env = azd(
        BROKER_API_CLIENT_ID=EXISTING_APP_ID,
        BROKER_PROVIDERS="other",
        BROKER_OTHER_TOKEN_URL="https://login.other.example/oauth2/token",
    )
    first = env.run(graph)
    assert roles(graph)["Token.Read.ilevel"]["isEnabled"] is False
    assert any("disabled Token.Read.ilevel" in change for change in first.role_changes)
    second = env.run(graph)
    assert "Token.Read.ilevel" not in roles(graph)
    assert any("deleted Token.Read.ilevel" in change for change in second.role_changes)
    assert env.run(graph).role_changes == []


def test_providers_without_ilevel_need_no_ilevel_role() -> None:
    """BROKER_PROVIDERS without ilevel: callers get the listed provider's role, no KeyError."""
    graph = fresh()
    env = azd(
        BROKER_PROVIDERS="other",
        BROKER_OTHER_TOKEN_URL="https://login.other.example/oauth2/token",
        BROKER_CALLER_PRINCIPAL_IDS=FACTORY,
    )
    env.run(graph)
    assert set(roles(graph)) == {"Token.Read.other", "Broker.Operator"}
    assert graph.assignments[0]["appRoleId"] == roles(graph)["Token.Read.other"]["id"]
    assert env.settings() == {
        "BROKER_PROVIDERS": "other",
        "BROKER_OTHER_TOKEN_URL": "https://login.other.example/oauth2/token",
        "BROKER_OTHER_ALLOWED_ROLES": "Token.Read.other",
    }


def test_per_provider_callers_get_only_that_providers_role() -> None:
    """BROKER_<NAME>_CALLER_PRINCIPAL_IDS grants one provider's role; the shared list grants all."""
    graph = fresh()
    azd(
        BROKER_PROVIDERS="ilevel,other",
        BROKER_OTHER_TOKEN_URL="https://login.other.example/oauth2/token",
        BROKER_OTHER_CALLER_PRINCIPAL_IDS=FACTORY,
    ).run(graph)
    granted = {(a["principalId"], a["appRoleId"]) for a in graph.assignments}
    assert granted == {(FACTORY, roles(graph)["Token.Read.other"]["id"])}


def test_replication_delay_is_retried_with_backoff() -> None:
    """Objects Graph has not replicated yet (app, service principal) are retried with growing waits."""
    graph, env = fresh(lag=3), azd(BROKER_CALLER_PRINCIPAL_IDS=FACTORY)
    env.run(graph)
    waits: list[list[float]] = []
    for delay in env.sleeps:
        if delay == RETRY_DELAYS_S[0]:
            waits.append([])
        waits[-1].append(delay)
    assert len(waits) >= 2, "both the new app and the new service principal should have been waited for"
    assert all(tuple(call) == RETRY_DELAYS_S[: len(call)] for call in waits)
    assert len(graph.applications) == 1 and len(graph.service_principals) == 1
    assert len(graph.assignments) == 1


def test_replication_that_never_completes_fails_with_graphs_message() -> None:
    """After the last wait the hook gives up and reports what Graph said."""
    graph = fresh(lag=1000)
    with pytest.raises(HookError, match="Request_ResourceNotFound"):
        azd().run(graph)


def test_role_assignments_are_read_across_every_page() -> None:
    """The caller's grant is on the last page (@odata.nextLink): no duplicate grant, which Graph answers 409."""
    graph = existing(page_size=2)
    env = azd(BROKER_API_CLIENT_ID=EXISTING_APP_ID, BROKER_CALLER_PRINCIPAL_IDS=FACTORY)
    outcome = env.run(graph)
    assert outcome.granted == []
    assert len(graph.requests("GET", r"appRoleAssignedTo")) == 3


def test_a_stale_app_id_is_a_clear_error() -> None:
    """BROKER_API_CLIENT_ID of a deleted app names the variable and how to start over."""
    with pytest.raises(HookError, match=r"BROKER_API_CLIENT_ID=.*azd env set BROKER_API_CLIENT_ID"):
        azd(BROKER_API_CLIENT_ID="00000000-0000-4000-8000-000000000000").run(fresh())


def test_az_signed_in_to_another_tenant_is_a_clear_error() -> None:
    """When az and the azd environment disagree on the tenant, the hook says which login to run."""
    with pytest.raises(HookError, match=r"az login --tenant 99999999"):
        azd(AZURE_TENANT_ID="99999999-9999-4999-8999-999999999999").run(fresh())


def test_a_provider_without_a_token_url_is_a_clear_error() -> None:
    """A provider other than ilevel needs BROKER_<NAME>_TOKEN_URL, and the error names it."""
    with pytest.raises(HookError, match=r"azd env set BROKER_MY_API_TOKEN_URL"):
        HookConfig.from_env(azd(BROKER_PROVIDERS="ilevel,my-api").values)


def test_provider_settings_carry_the_azd_values_to_the_app() -> None:
    """Token URL and pass-through settings reach BROKER_PROVIDER_SETTINGS; roles match the app roles."""
    env = azd(
        BROKER_ILEVEL_TOKEN_URL="https://sandbox.ilevelsolutions.example/v1/token",
        BROKER_ILEVEL_AUTH_METHOD="client_secret_post",
    )
    env.run(fresh())
    assert env.settings() == {
        "BROKER_PROVIDERS": "ilevel",
        "BROKER_ILEVEL_TOKEN_URL": "https://sandbox.ilevelsolutions.example/v1/token",
        "BROKER_ILEVEL_AUTH_METHOD": "client_secret_post",
        "BROKER_ILEVEL_ALLOWED_ROLES": "Token.Read.ilevel",
    }


def test_plan_roles_never_edits_an_enabled_role() -> None:
    """Every enabled role comes back unchanged or only disabled, whatever the providers."""
    graph = existing()
    old = list(graph.applications[0]["appRoles"])
    for providers in [(), ("ilevel",), ("other",), ("ilevel", "other")]:
        planned, _ = plan_roles(old, providers)
        by_id = {role["id"]: role for role in planned}
        for role in old:
            assert role["id"] in by_id
            assert {**role, "isEnabled": by_id[role["id"]]["isEnabled"]} == by_id[role["id"]]


# --- issue 16: the tenant comes from azd's subscription; 403 on a grant; lists and GUIDs ---

OTHER_SUBSCRIPTION = "99999999-2222-4333-8444-555555555555"
AZD_TENANT = "a0a0a0a0-1111-4111-8111-000000000001"
OTHER_TENANT = "b0b0b0b0-1111-4111-8111-000000000002"


def forbid_grants(request: Request) -> Reply | None:
    """Graph's answer to an Application Developer: app-role grants need an admin role."""
    if request.method == "POST" and request.path.endswith("/appRoleAssignedTo"):
        message = "Insufficient privileges to complete the operation."
        return Reply(403, {"error": {"code": "Authorization_RequestDenied", "message": message}})
    return None


@pytest.fixture
def standin_az(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in `az` on PATH (tests/infra/standin_az.py) whose default subscription is in another tenant."""
    state, bin_dir = standin_az_cli.install(
        tmp_path,
        {SUBSCRIPTION: AZD_TENANT, OTHER_SUBSCRIPTION: OTHER_TENANT},
        default=OTHER_SUBSCRIPTION,
        azd_subscription=SUBSCRIPTION,
    )
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_AZ_STATE", str(state))
    return state


@pytest.mark.slow
def test_the_tenant_is_the_azd_subscriptions_not_azs_default(standin_az: Path) -> None:
    """A first run (no AZURE_TENANT_ID yet) takes the tenant of AZURE_SUBSCRIPTION_ID, via --subscription."""
    config = HookConfig.from_env(azd().values)
    assert entra_app.deployment_tenant(config, entra_app.az_subscription_tenant) == AZD_TENANT
    assert az_graph_token(SUBSCRIPTION) == f"stand-in-graph-token-for-{AZD_TENANT}"
    calls = json.loads(standin_az.read_text(encoding="utf-8"))["calls"]
    assert len(calls) == 2
    assert all(call[call.index("--subscription") + 1] == SUBSCRIPTION for call in calls)


@pytest.mark.slow
def test_a_subscription_az_cannot_see_names_the_login_to_run(standin_az: Path) -> None:
    """az signed in elsewhere only: the error names AZURE_SUBSCRIPTION_ID and `az login --tenant`."""
    config = HookConfig.from_env(azd(AZURE_SUBSCRIPTION_ID="12345678-0000-4000-8000-000000000000").values)
    with pytest.raises(HookError, match=r"AZURE_SUBSCRIPTION_ID.*az login --tenant"):
        entra_app.deployment_tenant(config, entra_app.az_subscription_tenant)


def test_an_environment_whose_tenant_disagrees_with_its_subscription_is_refused() -> None:
    """AZURE_TENANT_ID from an earlier run and the subscription's tenant differ: stop, before any Graph call."""
    config = HookConfig.from_env(azd(AZURE_TENANT_ID=OTHER_TENANT).values)
    with pytest.raises(HookError, match=r"AZURE_TENANT_ID"):
        entra_app.deployment_tenant(config, lambda subscription: AZD_TENANT)


def test_first_run_signed_in_to_another_tenant_fails_fast_before_anything_is_created() -> None:
    """Graph answers for a tenant other than the subscription's: the hook stops after one read, writing nothing."""
    graph = fresh()
    env = azd(BROKER_CALLER_PRINCIPAL_IDS=FACTORY)
    config = HookConfig.from_env(env.values)
    config = dataclasses.replace(config, tenant_id=entra_app.deployment_tenant(config, lambda subscription: AZD_TENANT))
    client = Graph(graph, sleep=env.sleeps.append, log=env.log.append)
    with pytest.raises(HookError, match=rf"az login --tenant {AZD_TENANT}"):
        EntraApp(client, config, env.set, env.log.append).run()
    assert [r.path for r in graph.conversation] == ["/organization?$select=id"]
    assert graph.applications == [] and "BROKER_API_CLIENT_ID" not in env.values


def test_a_refused_grant_is_a_warning_with_the_admin_command_and_the_deployment_goes_on() -> None:
    """403 on appRoleAssignedTo (an Application Developer): warn, print the admin's command, finish the run."""
    graph, env = fresh(fail=forbid_grants), azd(BROKER_CALLER_PRINCIPAL_IDS=FACTORY)
    outcome = env.run(graph)
    (sp,) = graph.service_principals
    role_id = roles(graph)["Token.Read.ilevel"]["id"]
    assert outcome.granted == [] and outcome.left_to_admin == [(FACTORY, "Token.Read.ilevel")]
    assert graph.assignments == []
    assert "BROKER_PROVIDER_SETTINGS" in env.values, "the rest of the deployment went on"
    (warning,) = [line for line in env.log if "WARNING" in line]
    assert "owning the service principal is not enough" in warning
    body = json.dumps({"principalId": FACTORY, "resourceId": sp["id"], "appRoleId": role_id}, separators=(",", ":"))
    assert (
        f"az rest --method POST --uri https://graph.microsoft.com/v1.0/servicePrincipals/{sp['id']}/appRoleAssignedTo "
        f"--headers Content-Type=application/json --body '{body}'"
    ) in warning


def test_other_graph_errors_on_a_grant_still_stop_the_hook() -> None:
    """Only 403 becomes a warning: a 400 from Graph is still an error."""

    def bad_request(request: Request) -> Reply | None:
        if request.method == "POST" and request.path.endswith("/appRoleAssignedTo"):
            return Reply(400, {"error": {"code": "Request_BadRequest", "message": "Invalid principal"}})
        return None

    with pytest.raises(HookError, match="Invalid principal"):
        azd(BROKER_CALLER_PRINCIPAL_IDS=FACTORY).run(fresh(fail=bad_request))


def test_uppercase_principal_ids_match_graphs_lowercase_assignments() -> None:
    """An id typed in uppercase is the grant Graph already holds: no second POST (which Graph answers 409)."""
    graph = existing(page_size=2)
    outcome = azd(BROKER_API_CLIENT_ID=EXISTING_APP_ID, BROKER_CALLER_PRINCIPAL_IDS=FACTORY.upper()).run(graph)
    assert outcome.granted == []
    assert graph.requests("POST") == []


def test_spaces_and_trailing_commas_in_every_list_are_ignored() -> None:
    """Providers and both caller lists: items trimmed, empty items (a trailing comma) dropped, duplicates once."""
    graph = fresh()
    env = azd(
        BROKER_PROVIDERS=" ilevel , other ,",
        BROKER_OTHER_TOKEN_URL="https://login.other.example/oauth2/token",
        BROKER_CALLER_PRINCIPAL_IDS=f" {FACTORY} , ,",
        BROKER_OTHER_CALLER_PRINCIPAL_IDS=f"{FACTORY.upper()},",
    )
    env.run(graph)
    assert env.settings()["BROKER_PROVIDERS"] == "ilevel,other"
    granted = sorted((a["principalId"], a["appRoleId"]) for a in graph.assignments)
    assert granted == sorted((FACTORY, roles(graph)[role]["id"]) for role in ("Token.Read.ilevel", "Token.Read.other"))


def test_a_principal_id_that_is_not_a_guid_is_a_clear_error() -> None:
    """A name or an appId typo in a caller list is refused before any Graph call, naming the variable."""
    with pytest.raises(HookError, match=r"BROKER_ILEVEL_CALLER_PRINCIPAL_IDS lists 'my-factory'"):
        HookConfig.from_env(azd(BROKER_ILEVEL_CALLER_PRINCIPAL_IDS="my-factory").values)


# --- operators: Broker.Operator, Diagnostics.Run, the Azure CLI pre-authorised ----------------------------


def operator_assignments(graph: FakeGraph) -> set[str]:
    role_id = roles(graph)["Broker.Operator"]["id"]
    return {a["principalId"] for a in graph.assignments if a["appRoleId"] == role_id}


def api(graph: FakeGraph) -> dict[str, Any]:
    (app,) = graph.applications
    return dict(app["api"])


def test_operators_get_a_role_for_users_and_apps_a_scope_and_the_azure_cli_preauthorised() -> None:
    """Broker.Operator for User and Application, scope exactly Diagnostics.Run, the CLI pre-authorised for it,
    and the deployer (AZURE_PRINCIPAL_ID) holding the role; a second run writes nothing."""
    graph, env = fresh(), azd(AZURE_PRINCIPAL_ID=DEPLOYER)
    outcome = env.run(graph)
    role = roles(graph)["Broker.Operator"]
    assert role["allowedMemberTypes"] == ["User", "Application"] and role["isEnabled"] is True
    (scope,) = api(graph)["oauth2PermissionScopes"]
    assert scope["value"] == "Diagnostics.Run" and scope["isEnabled"] is True
    assert api(graph)["preAuthorizedApplications"] == [
        {"appId": "04b07795-8ddb-461a-bbee-02f9e1bf7b46", "delegatedPermissionIds": [scope["id"]]}
    ]
    assert AZURE_CLI_CLIENT_ID == "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
    assert operator_assignments(graph) == {DEPLOYER}
    assert (DEPLOYER, "Broker.Operator") in outcome.granted and outcome.left_to_admin == []
    first = len(graph.conversation)
    assert env.run(graph).operator_changes == []
    assert writes(graph, first) == []


def test_the_deployer_is_not_made_an_operator_when_told_not_to_but_listed_operators_are() -> None:
    """BROKER_GRANT_DEPLOYER_OPERATOR=false leaves the deployer out; BROKER_OPERATOR_PRINCIPAL_IDS are granted."""
    graph = fresh()
    azd(
        AZURE_PRINCIPAL_ID=DEPLOYER, BROKER_GRANT_DEPLOYER_OPERATOR="false", BROKER_OPERATOR_PRINCIPAL_IDS=OPERATOR
    ).run(graph)
    assert operator_assignments(graph) == {OPERATOR}


def test_an_enabled_operator_role_for_applications_only_is_disabled_then_rewritten() -> None:
    """Graph refuses to change an enabled role: disable it in one PATCH, write both member types in the next."""
    graph = existing()
    app = graph.applications[0]
    app["appRoles"].append({**new_app_only_operator_role(), "isEnabled": True})
    outcome = azd(BROKER_API_CLIENT_ID=EXISTING_APP_ID).run(graph)
    role = roles(graph)["Broker.Operator"]
    assert role["allowedMemberTypes"] == ["User", "Application"] and role["isEnabled"] is True
    assert role["id"] == "55555555-1c3b-4d6e-8f7a-9b0c1d2e3f40", "the same role: existing grants keep working"
    role_patches = [w for w in writes(graph) if "appRoles" in (w.body or {})]
    assert [
        next(r for r in w.body["appRoles"] if r["value"] == "Broker.Operator")["isEnabled"] for w in role_patches
    ] == [
        False,
        True,
    ]
    assert any("disabled, then rewritten" in change for change in outcome.operator_changes)


def test_a_disabled_scope_is_reenabled_and_other_preauthorised_clients_are_kept() -> None:
    """An earlier Diagnostics.Run that someone disabled comes back; another client's pre-authorisation stays."""
    graph = existing()
    other = {
        "appId": "11111111-aaaa-4bbb-8ccc-dddddddddddd",
        "delegatedPermissionIds": ["66666666-0000-4000-8000-0000000000aa"],
    }
    graph.applications[0]["api"] = {
        "oauth2PermissionScopes": [
            {"id": "66666666-0000-4000-8000-0000000000aa", "value": "Other.Read", "type": "User", "isEnabled": True},
            {
                "id": "77777777-0000-4000-8000-0000000000bb",
                "value": "Diagnostics.Run",
                "type": "User",
                "isEnabled": False,
            },
        ],
        "preAuthorizedApplications": [other],
    }
    azd(BROKER_API_CLIENT_ID=EXISTING_APP_ID).run(graph)
    scopes = {s["value"]: s for s in api(graph)["oauth2PermissionScopes"]}
    assert scopes["Diagnostics.Run"]["isEnabled"] is True and scopes["Other.Read"]["isEnabled"] is True
    assert other in api(graph)["preAuthorizedApplications"]
    cli = next(p for p in api(graph)["preAuthorizedApplications"] if p["appId"] == AZURE_CLI_CLIENT_ID)
    assert cli["delegatedPermissionIds"] == ["77777777-0000-4000-8000-0000000000bb"]


def test_a_refused_operator_grant_says_what_an_administrator_runs_and_the_hook_goes_on() -> None:
    """Assigning app roles needs an admin role: a 403 names the command to run, and the deployment continues."""
    graph, env = fresh(), azd(AZURE_PRINCIPAL_ID=DEPLOYER)

    def no_admin_role(request: Request) -> Reply | None:
        if (
            request.method == "POST"
            and request.path.endswith("/appRoleAssignedTo")
            and request.body["principalId"] == DEPLOYER
        ):
            return Reply(403, {"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges"}})
        return None

    graph.fail = no_admin_role
    outcome = env.run(graph)
    assert outcome.left_to_admin == [(DEPLOYER, "Broker.Operator")]
    line = next(text for text in env.log if "Broker.Operator" in text and "refused" in text)
    assert "az rest --method POST" in line and DEPLOYER in line and "appRoleAssignedTo" in line
    assert "BROKER_PROVIDER_SETTINGS" in env.values, "the rest of the hook ran"


def test_an_operator_id_that_is_not_a_guid_is_a_clear_error() -> None:
    """A typo in BROKER_OPERATOR_PRINCIPAL_IDS fails before any Graph call, naming the variable."""
    with pytest.raises(HookError, match="BROKER_OPERATOR_PRINCIPAL_IDS"):
        HookConfig.from_env(azd(BROKER_OPERATOR_PRINCIPAL_IDS="alice@contoso.com").values)


def new_app_only_operator_role() -> dict[str, Any]:
    return {
        "allowedMemberTypes": ["Application"],
        "description": "Older wording",
        "displayName": "Broker operator",
        "id": "55555555-1c3b-4d6e-8f7a-9b0c1d2e3f40",
        "value": "Broker.Operator",
    }


# --- the deployer, when azd leaves AZURE_PRINCIPAL_ID out -----------------------------------------------

SP_APP_ID = "7c0e0e0e-1111-4222-8333-444455556666"
SP_OBJECT_ID = "8d0e0e0e-1111-4222-8333-444455556666"


def signed_in(state: Path, who: dict[str, str] | None) -> None:
    values = json.loads(state.read_text(encoding="utf-8"))
    values["signed_in"] = who
    state.write_text(json.dumps(values), encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ({"type": "user", "name": "deployer@contoso.example", "id": DEPLOYER}, DEPLOYER),
        ({"type": "servicePrincipal", "name": SP_APP_ID, "id": SP_OBJECT_ID}, SP_OBJECT_ID),
    ],
    ids=["a user", "a service principal"],
)
def test_without_azure_principal_id_the_deployer_is_whoever_az_is_signed_in_as(
    standin_az: Path, who: dict[str, str], expected: str
) -> None:
    """azd keeps AZURE_PRINCIPAL_ID out of the hooks' environment: the hook asks az, and Broker.Operator goes there."""
    signed_in(standin_az, who)
    said: list[str] = []
    env = entra_app.with_deployer(azd().values, say=said.append)
    assert "AZURE_PRINCIPAL_ID" not in azd().values
    assert HookConfig.from_env(env).operators.principal_ids == (expected,)
    assert said == [f"entra-app: the deployer, as az is signed in, is object id {expected}"]


@pytest.mark.slow
def test_without_azure_principal_id_and_no_sign_in_the_hook_says_how_to_set_it(standin_az: Path) -> None:
    """az cannot say who it is: no grant to the deployer, and the command that sets AZURE_PRINCIPAL_ID."""
    signed_in(standin_az, None)
    said: list[str] = []
    env = entra_app.with_deployer(azd().values, say=said.append)
    assert HookConfig.from_env(env).operators.principal_ids == ()
    assert "azd env set AZURE_PRINCIPAL_ID" in said[0]


@pytest.mark.slow
def test_a_given_azure_principal_id_or_the_opt_out_asks_az_nothing(standin_az: Path) -> None:
    """AZURE_PRINCIPAL_ID set, or BROKER_GRANT_DEPLOYER_OPERATOR=false: az is not asked."""
    signed_in(standin_az, {"type": "user", "name": "someone", "id": OPERATOR})
    assert entra_app.with_deployer(azd(AZURE_PRINCIPAL_ID=DEPLOYER).values)["AZURE_PRINCIPAL_ID"] == DEPLOYER
    assert "AZURE_PRINCIPAL_ID" not in entra_app.with_deployer(azd(BROKER_GRANT_DEPLOYER_OPERATOR="false").values)
    assert json.loads(standin_az.read_text(encoding="utf-8"))["calls"] == []


# --- who is an application, who may consent to diagnostics (issue 22 items 8 and 9) ----------------------


def test_access_tokens_get_the_idtyp_optional_claim_and_other_claims_stay() -> None:
    """Entra writes idtyp only as an optional claim: the hook asks for it in access tokens, once."""
    graph = existing()
    graph.applications[0]["optionalClaims"] = {
        "idToken": [{"name": "email", "source": None, "essential": False, "additionalProperties": []}],
        "accessToken": [{"name": "acct", "source": None, "essential": False, "additionalProperties": []}],
    }
    env = azd(BROKER_API_CLIENT_ID=EXISTING_APP_ID)
    outcome = env.run(graph)
    claims = graph.applications[0]["optionalClaims"]
    assert [c["name"] for c in claims["accessToken"]] == ["acct", "idtyp"]
    assert claims["accessToken"][1] == {"name": "idtyp", "source": None, "essential": False, "additionalProperties": []}
    assert [c["name"] for c in claims["idToken"]] == ["email"]
    assert "added the optional claim idtyp to access tokens" in outcome.operator_changes
    first = len(graph.conversation)
    env.run(graph)
    assert not [w for w in writes(graph, first) if "optionalClaims" in (w.body or {})]


def test_a_new_diagnostics_scope_needs_admin_consent() -> None:
    """Diagnostics.Run is type Admin: no user can consent to it for an app of their choosing."""
    graph = fresh()
    azd().run(graph)
    (scope,) = api(graph)["oauth2PermissionScopes"]
    assert (scope["value"], scope["type"], scope["isEnabled"]) == ("Diagnostics.Run", "Admin", True)
    assert [c["name"] for c in graph.applications[0]["optionalClaims"]["accessToken"]] == ["idtyp"]


def test_an_enabled_user_consent_diagnostics_scope_is_disabled_then_rewritten_admin_only() -> None:
    """Graph refuses to change an enabled scope: disable it in one PATCH, make it Admin in the next; same id,
    so the Azure CLI's pre-authorisation keeps working."""
    graph = existing()
    scope_id = "77777777-0000-4000-8000-0000000000bb"
    graph.applications[0]["api"] = {
        "oauth2PermissionScopes": [{"id": scope_id, "value": "Diagnostics.Run", "type": "User", "isEnabled": True}],
        "preAuthorizedApplications": [{"appId": AZURE_CLI_CLIENT_ID, "delegatedPermissionIds": [scope_id]}],
    }
    outcome = azd(BROKER_API_CLIENT_ID=EXISTING_APP_ID).run(graph)
    (scope,) = api(graph)["oauth2PermissionScopes"]
    assert (scope["id"], scope["type"], scope["isEnabled"]) == (scope_id, "Admin", True)
    steps = [w.body["api"]["oauth2PermissionScopes"][0] for w in writes(graph) if "api" in (w.body or {})]
    assert [(s["type"], s["isEnabled"]) for s in steps] == [("User", False), ("Admin", True)]
    assert any("admin-consent only (disabled, then rewritten)" in c for c in outcome.operator_changes)


def test_clients_in_the_diagnostics_setting_are_pre_authorised_beside_the_azure_cli() -> None:
    """BROKER_DIAGNOSTICS_CLIENT_IDS (GUIDs, any case) are pre-authorised for Diagnostics.Run; a name is refused."""
    graph = fresh()
    client = "8c6d1e2f-3a4b-4c5d-9e6f-7a8b9c0d1e2f"
    azd(BROKER_DIAGNOSTICS_CLIENT_IDS=f"{client.upper()},").run(graph)
    (scope,) = api(graph)["oauth2PermissionScopes"]
    assert sorted(p["appId"] for p in api(graph)["preAuthorizedApplications"]) == sorted([AZURE_CLI_CLIENT_ID, client])
    assert all(p["delegatedPermissionIds"] == [scope["id"]] for p in api(graph)["preAuthorizedApplications"])
    env = azd(BROKER_DIAGNOSTICS_CLIENT_IDS=f"{client.upper()},")
    env.run(fresh())
    assert env.settings()["BROKER_DIAGNOSTICS_CLIENT_IDS"] == client, "the app takes users through the same clients"
    with pytest.raises(HookError, match="BROKER_DIAGNOSTICS_CLIENT_IDS"):
        HookConfig.from_env(azd(BROKER_DIAGNOSTICS_CLIENT_IDS="my-portal").values)
