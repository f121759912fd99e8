"""azd preprovision hook: the broker's Entra application, its app roles, role grants to callers,
and the provider app settings.

Safe to run on every `azd provision`. Needs the Azure CLI signed in to the tenant of the
subscription azd deploys to (AZURE_SUBSCRIPTION_ID; `az login --tenant <id>`), as someone allowed to
create app registrations (Application Developer, or members' default right where the tenant still
allows it). Granting app roles to callers needs an admin role (Application Administrator, Cloud
Application Administrator, ...): owning the service principal is not enough for Graph. Without one,
each grant Graph refuses with 403 is printed as the command an administrator runs, and the
deployment goes on.

From the azd environment (azd passes `azd env get-values` to hooks as environment variables):
0. Before anything is created: the tenant to deploy to is the tenant of AZURE_SUBSCRIPTION_ID
   (`az account show --subscription`), never az's default; Graph must answer for that tenant.
1. Finds the app registration by a stable key: BROKER_API_CLIENT_ID (the appId, stored by the first
   run), else the tag ``ilevel-token-broker/<subscription>/<env>``. Never by its URI: a URI the
   tenant's policy refused would leave an app no later run could find. Creates it when neither finds one.
2. Gives it the App ID URI BROKER_APP_ID_URI, default ``api://<tenantId>/ilevel-token-broker-<env>``,
   one of Entra's secure identifier-URI formats. If the tenant refuses the default, ``api://<appId>``.
3. Declares one application role per provider in BROKER_PROVIDERS, ``Token.Read.<provider>``. Roles
   that exist stay exactly as they are (Graph refuses to change an enabled role); missing ones are
   added; a role whose provider was removed is disabled, and deleted by a later run.
4. Creates the service principal with appRoleAssignmentRequired, so Entra issues a token for this
   audience only to callers granted a role.
5. Grants every provider's role to the object ids in BROKER_CALLER_PRINCIPAL_IDS, and one provider's
   role to those in BROKER_<NAME>_CALLER_PRINCIPAL_IDS (comma-separated; e.g. a factory's identity).
6. Stores BROKER_API_CLIENT_ID, BROKER_APP_ID_URI and BROKER_PROVIDER_SETTINGS (the provider app
   settings, base64 JSON) in the azd environment for this run's Bicep parameters (azd >= 1.21.0).
7. Operators (the diagnostics route, ``check --remote``): the app role ``Broker.Operator`` for users and
   applications, the delegated scope ``Diagnostics.Run`` with the Azure CLI pre-authorised for it (so an
   ``az login`` user gets a token without a consent prompt), and Broker.Operator granted to the deployer
   (AZURE_PRINCIPAL_ID, which azd does not store for hooks; without it, whoever az is signed in as: a user or
   the service principal) unless BROKER_GRANT_DEPLOYER_OPERATOR=false, and to the object ids in
   BROKER_OPERATOR_PRINCIPAL_IDS. A grant Graph refuses (assigning app roles needs an admin role) is
   reported with the command an administrator runs; the rest of the deployment goes on.

Why a hook and not the Microsoft Graph Bicep extension: its ``extension microsoftGraphV1`` syntax is
beyond the Bicep parser checkov uses, so it would turn the policy check into a parsing error.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_client import Graph, GraphError, HookError, az_graph_token, http_send  # noqa: E402

ROLE_PREFIX = "Token.Read."
# Who may run the diagnostics route: a user (delegated token with this scope) or an application.
OPERATOR_ROLE = "Broker.Operator"
DIAGNOSTICS_SCOPE = "Diagnostics.Run"
# The Azure CLI's public client id: pre-authorised for Diagnostics.Run so `az login` users need no consent.
AZURE_CLI_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
PROVIDER_NAME = re.compile(r"[a-z0-9-]{1,32}")
DEFAULT_TOKEN_URLS = {"ilevel": "https://api.ilevelsolutions.com/v1/token"}
# Per-provider settings (broker/config.py PROVIDER_SETTING_SUFFIXES) copied from the azd environment
# into the app settings when set. ALLOWED_ROLES is ours: the role this hook declares.
PASS_THROUGH_SUFFIXES = (
    "TOKEN_URL",
    "AUTH_METHOD",
    "BASIC_ENCODING",
    "CLIENT_ID_SECRET",
    "CLIENT_SECRET_SECRET",
    "SCOPE",
    "AUDIENCE",
    "RESOURCE",
    "ALLOWED_CALLERS",
    "API_BASE_URL",
    "MODE",
    "PROXY_CONCURRENCY",
)


def env_name(provider: str) -> str:
    """``my-api`` -> ``MY_API``, as broker/config.py spells per-provider settings."""
    return provider.upper().replace("-", "_")


def _csv(value: str | None) -> list[str]:
    """A comma-separated azd value: items trimmed, empty ones (a trailing comma) dropped."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def object_ids(value: str | None, setting: str) -> tuple[str, ...]:
    """Entra object ids from a comma-separated azd value, lowercase as Graph returns them, once each."""
    ids = []
    for item in _csv(value):
        try:
            ids.append(str(uuid.UUID(item)))
        except ValueError:
            raise HookError(f"{setting} lists {item!r}, which is not an Entra object id (a GUID)") from None
    return tuple(dict.fromkeys(ids))


@dataclass(frozen=True)
class OperatorConfig:
    """Who gets Broker.Operator: the deployer unless BROKER_GRANT_DEPLOYER_OPERATOR=false, and any listed ids."""

    principal_ids: tuple[str, ...]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OperatorConfig:
        flag = env.get("BROKER_GRANT_DEPLOYER_OPERATOR", "").strip().lower()
        if flag not in ("", "true", "false", "1", "0", "yes", "no"):
            raise HookError(f"BROKER_GRANT_DEPLOYER_OPERATOR must be true or false, not {flag!r}")
        deployer = (
            () if flag in ("false", "0", "no") else object_ids(env.get("AZURE_PRINCIPAL_ID"), "AZURE_PRINCIPAL_ID")
        )
        listed = object_ids(env.get("BROKER_OPERATOR_PRINCIPAL_IDS"), "BROKER_OPERATOR_PRINCIPAL_IDS")
        return cls(tuple(dict.fromkeys((*deployer, *listed))))


@dataclass(frozen=True)
class HookConfig:
    """What the hook needs, read once from the azd environment and checked before any Graph call."""

    env_name: str
    subscription_id: str
    tenant_id: str
    providers: tuple[str, ...]
    app_id: str
    app_id_uri: str
    callers: Mapping[str, tuple[str, ...]]
    provider_settings: Mapping[str, str] = field(default_factory=dict)
    operators: OperatorConfig = field(default_factory=lambda: OperatorConfig(()))

    @property
    def display_name(self) -> str:
        return f"ilevel-token-broker-{self.env_name}"

    @property
    def tag(self) -> str:
        return f"ilevel-token-broker/{self.subscription_id or 'any'}/{self.env_name}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HookConfig:
        name = env.get("AZURE_ENV_NAME", "").strip()
        if not name:
            raise HookError("AZURE_ENV_NAME is not set; run this through `azd provision` or `azd up`")
        providers = tuple(dict.fromkeys(_csv(env.get("BROKER_PROVIDERS", "ilevel"))))
        if not providers:
            raise HookError("BROKER_PROVIDERS is empty; set it, e.g. `azd env set BROKER_PROVIDERS ilevel`")
        bad = [p for p in providers if not PROVIDER_NAME.fullmatch(p)]
        if bad:
            raise HookError(f"BROKER_PROVIDERS lists {bad}: provider names are 1-32 characters of a-z, 0-9 and '-'")
        shared = object_ids(env.get("BROKER_CALLER_PRINCIPAL_IDS"), "BROKER_CALLER_PRINCIPAL_IDS")
        callers = {p: tuple(dict.fromkeys(shared + _provider_callers(p, env))) for p in providers}
        return cls(
            env_name=name,
            subscription_id=env.get("AZURE_SUBSCRIPTION_ID", "").strip(),
            tenant_id=env.get("AZURE_TENANT_ID", "").strip(),
            providers=providers,
            app_id=env.get("BROKER_API_CLIENT_ID", "").strip(),
            app_id_uri=env.get("BROKER_APP_ID_URI", "").strip(),
            callers=callers,
            provider_settings=provider_settings(providers, env),
            operators=OperatorConfig.from_env(env),
        )


def _provider_callers(provider: str, env: Mapping[str, str]) -> tuple[str, ...]:
    name = f"BROKER_{env_name(provider)}_CALLER_PRINCIPAL_IDS"
    return object_ids(env.get(name), name)


def provider_settings(providers: tuple[str, ...], env: Mapping[str, str]) -> dict[str, str]:
    """The app settings that depend on the providers: BROKER_PROVIDERS and each BROKER_<NAME>_*."""
    settings = {"BROKER_PROVIDERS": ",".join(providers)}
    for provider in providers:
        prefix = f"BROKER_{env_name(provider)}_"
        token_url = env.get(f"{prefix}TOKEN_URL", "").strip() or DEFAULT_TOKEN_URLS.get(provider, "")
        if not token_url:
            raise HookError(
                f"provider {provider!r} has no token endpoint: set it with `azd env set {prefix}TOKEN_URL https://...`"
            )
        if not token_url.startswith("https://"):
            raise HookError(f"{prefix}TOKEN_URL must be an https:// URL, not {token_url!r}")
        for suffix in PASS_THROUGH_SUFFIXES:
            value = token_url if suffix == "TOKEN_URL" else env.get(f"{prefix}{suffix}", "").strip()
            if value:
                settings[f"{prefix}{suffix}"] = value
        settings[f"{prefix}ALLOWED_ROLES"] = f"{ROLE_PREFIX}{provider}"
    return settings


def encode_settings(settings: Mapping[str, str]) -> str:
    """base64 of compact JSON: azd pastes the value into main.parameters.json, where quotes would break it."""
    return base64.b64encode(json.dumps(dict(settings), separators=(",", ":")).encode("utf-8")).decode("ascii")


def new_role(provider: str) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "allowedMemberTypes": ["Application"],
        "description": f"Get {provider} access tokens from the token broker",
        "displayName": f"Read {provider} tokens",
        "isEnabled": True,
        "value": f"{ROLE_PREFIX}{provider}",
    }


def plan_roles(existing: list[dict[str, Any]], providers: tuple[str, ...]) -> tuple[list[dict[str, Any]], list[str]]:
    """The app roles to write, and what changed. Graph refuses to change or delete an enabled role
    (CannotDeleteOrUpdateEnabledEntitlement), so an enabled role is kept byte for byte or only disabled."""
    wanted = {f"{ROLE_PREFIX}{p}" for p in providers}
    roles: list[dict[str, Any]] = []
    changes: list[str] = []
    present: set[str] = set()
    for role in existing:
        value = str(role.get("value") or "")
        if not value.startswith(ROLE_PREFIX):
            roles.append(role)
            continue
        present.add(value)
        if value in wanted:
            roles.append(role if role.get("isEnabled") else {**role, "isEnabled": True})
            if not role.get("isEnabled"):
                changes.append(f"re-enabled {value}")
        elif role.get("isEnabled"):
            roles.append({**role, "isEnabled": False})
            changes.append(f"disabled {value} (its provider is gone; the next run deletes it)")
        else:
            changes.append(f"deleted {value} (disabled by an earlier run)")
    for provider in providers:
        if f"{ROLE_PREFIX}{provider}" not in present:
            roles.append(new_role(provider))
            changes.append(f"added {ROLE_PREFIX}{provider}")
    return roles, changes


def new_operator_role() -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "allowedMemberTypes": ["User", "Application"],
        "description": "Run the token broker's diagnostics (GET /api/diagnostics) as a user or an application",
        "displayName": "Broker operator",
        "isEnabled": True,
        "value": OPERATOR_ROLE,
    }


def plan_operator_role(existing: list[dict[str, Any]]) -> tuple[list[list[dict[str, Any]]], str]:
    """The appRoles PATCH bodies that give Broker.Operator for users and applications (none if it has that).

    An enabled role whose member types lack one takes two PATCHes, as Graph demands: disable it, then
    write it with both member types, enabled.
    """
    role = next((r for r in existing if r.get("value") == OPERATOR_ROLE), None)
    if role is None:
        return [[*existing, new_operator_role()]], f"added the app role {OPERATOR_ROLE}"
    wanted = {**role, "allowedMemberTypes": ["User", "Application"], "isEnabled": True}
    if set(role.get("allowedMemberTypes") or []) == {"User", "Application"} and role.get("isEnabled"):
        return [], ""

    def swap(replacement: dict[str, Any]) -> list[dict[str, Any]]:
        return [replacement if r is role else r for r in existing]

    if not role.get("isEnabled"):
        return [swap(wanted)], f"enabled the app role {OPERATOR_ROLE} for users and applications"
    return (
        [swap({**role, "isEnabled": False}), swap(wanted)],
        f"changed the app role {OPERATOR_ROLE} to users and applications (disabled, then rewritten)",
    )


def new_diagnostics_scope() -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "value": DIAGNOSTICS_SCOPE,
        # Consent is no gate here: the route also wants the Broker.Operator role, which only an admin assigns.
        "type": "User",
        "isEnabled": True,
        "adminConsentDisplayName": "Run the token broker's diagnostics",
        "adminConsentDescription": "Lets the signed-in user run the token broker's diagnostics, if they hold the "
        "Broker.Operator role.",
        "userConsentDisplayName": "Run the token broker's diagnostics",
        "userConsentDescription": "Lets you run the token broker's diagnostics, if you hold the Broker.Operator role.",
    }


def plan_diagnostics_scope(existing: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str, str]:
    """The oauth2PermissionScopes with Diagnostics.Run enabled, its id, and what changed ("" for nothing).
    An enabled scope is kept byte for byte (Graph refuses to update it); a disabled one is re-enabled."""
    scope = next((s for s in existing if s.get("value") == DIAGNOSTICS_SCOPE), None)
    if scope is None:
        scope = new_diagnostics_scope()
        return [*existing, scope], scope["id"], f"added the delegated scope {DIAGNOSTICS_SCOPE}"
    if scope.get("isEnabled"):
        return existing, str(scope["id"]), ""
    enabled = {**scope, "isEnabled": True}
    return (
        [enabled if s is scope else s for s in existing],
        str(scope["id"]),
        f"re-enabled the delegated scope {DIAGNOSTICS_SCOPE}",
    )


def plan_cli_preauthorization(existing: list[dict[str, Any]], scope_id: str) -> tuple[list[dict[str, Any]], str]:
    """preAuthorizedApplications with the Azure CLI allowed ``scope_id``; other clients and scopes kept."""
    entry = next((p for p in existing if p.get("appId") == AZURE_CLI_CLIENT_ID), None)
    ids = list((entry or {}).get("delegatedPermissionIds") or [])
    if scope_id in ids:
        return existing, ""
    updated = {"appId": AZURE_CLI_CLIENT_ID, "delegatedPermissionIds": [*ids, scope_id]}
    others = [p for p in existing if p is not entry]
    return [*others, updated], f"pre-authorised the Azure CLI ({AZURE_CLI_CLIENT_ID}) for {DIAGNOSTICS_SCOPE}"


@dataclass
class Outcome:
    app_id: str
    app_id_uri: str
    created_app: bool = False
    created_service_principal: bool = False
    role_changes: list[str] = field(default_factory=list)
    granted: list[tuple[str, str]] = field(default_factory=list)
    # Grants Graph refused with 403 (no admin role): each printed as the command an administrator runs.
    left_to_admin: list[tuple[str, str]] = field(default_factory=list)
    operator_changes: list[str] = field(default_factory=list)


class EntraApp:
    """The hook's steps against one Graph. ``env_set`` stores a value in the azd environment."""

    def __init__(
        self, graph: Graph, config: HookConfig, env_set: Callable[[str, str], None], log: Callable[[str], None]
    ) -> None:
        self.graph = graph
        self.config = config
        self.env_set = env_set
        self.log = log

    def run(self) -> Outcome:
        tenant = self.signed_in_tenant()
        app, created = self.find_or_create_app()
        outcome = Outcome(app_id=app["appId"], app_id_uri="", created_app=created)
        outcome.app_id_uri = self.ensure_identifier_uri(app, tenant, just_created=created)
        self.env_set("BROKER_APP_ID_URI", outcome.app_id_uri)
        outcome.role_changes = self.ensure_roles(app, just_created=created)
        outcome.operator_changes = self.ensure_operator_access(app, just_created=created)
        sp, outcome.created_service_principal = self.ensure_service_principal(app["appId"])
        outcome.granted, outcome.left_to_admin = self.grant_callers(sp["id"], self.current_roles(app))
        granted, refused = self.grant_operators(sp["id"], self.current_roles(app))
        outcome.granted += granted
        outcome.left_to_admin += refused
        self.env_set("BROKER_PROVIDER_SETTINGS", encode_settings(self.config.provider_settings))
        return outcome

    def signed_in_tenant(self) -> str:
        organizations = self.graph.list("/organization?$select=id")
        tenant = str(organizations[0]["id"]) if organizations else ""
        expected = self.config.tenant_id
        if expected and tenant.lower() != expected.lower():
            raise HookError(
                f"az's Microsoft Graph answers for tenant {tenant or '(none)'}, but subscription "
                f"{self.config.subscription_id or '(unset)'} belongs to tenant {expected}; nothing was created. "
                f"Run `az login --tenant {expected}`"
            )
        return tenant or expected

    def find_or_create_app(self) -> tuple[dict[str, Any], bool]:
        config = self.config
        if config.app_id:
            try:
                app = self.graph.request("GET", f"/applications(appId='{config.app_id}')")
            except GraphError as error:
                if error.status != 404:
                    raise
                raise HookError(
                    f"BROKER_API_CLIENT_ID={config.app_id} names no app registration in this tenant (deleted?). "
                    'To create a new one, clear it: `azd env set BROKER_API_CLIENT_ID ""`, then provision again'
                ) from None
            self.log(f"entra-app: using app registration {app['appId']} (BROKER_API_CLIENT_ID)")
            return app, False
        tag_filter = quote(f"tags/any(t:t eq '{config.tag}')")
        found = self.graph.list(f"/applications?$filter={tag_filter}")
        if len(found) > 1:
            ids = ", ".join(sorted(str(a["appId"]) for a in found))
            raise HookError(
                f"several app registrations carry the tag {config.tag!r} ({ids}); keep one and set "
                "`azd env set BROKER_API_CLIENT_ID <its appId>`"
            )
        if found:
            app = found[0]
            self.log(f"entra-app: found app registration {app['appId']} by its tag")
        else:
            body = {
                "displayName": config.display_name,
                "signInAudience": "AzureADMyOrg",
                "tags": [config.tag],
                "appRoles": [new_role(p) for p in config.providers],
            }
            app = self.graph.request("POST", "/applications", body)
            self.log(f"entra-app: created app registration {app['appId']} ({config.display_name})")
        # Stored at once: should a later step fail, the next run finds this app instead of making another.
        self.env_set("BROKER_API_CLIENT_ID", app["appId"])
        return app, not found

    def ensure_identifier_uri(self, app: dict[str, Any], tenant: str, *, just_created: bool) -> str:
        uris = list(app.get("identifierUris") or [])
        if not self.config.app_id_uri and uris:
            # An app that already has a URI keeps it: callers request tokens for it.
            return str(uris[0])
        wanted = self.config.app_id_uri or f"api://{tenant}/{self.config.display_name}"
        if wanted in uris:
            return wanted
        try:
            self._patch_app(app, {"identifierUris": [*uris, wanted]}, just_created=just_created)
        except GraphError as error:
            if self.config.app_id_uri or error.status != 400:
                raise HookError(
                    f"the tenant refused the App ID URI {wanted!r} ({error.code}: {error.message}). "
                    "Use a secure format: `azd env set BROKER_APP_ID_URI api://<tenantId>/<name>` or "
                    f"api://{app['appId']}"
                ) from None
            wanted = f"api://{app['appId']}"
            self.log(f"entra-app: the tenant refused the default App ID URI ({error.code}); using {wanted}")
            if wanted not in uris:
                self._patch_app(app, {"identifierUris": [*uris, wanted]}, just_created=just_created)
        self.log(f"entra-app: App ID URI {wanted}")
        return wanted

    def ensure_roles(self, app: dict[str, Any], *, just_created: bool) -> list[str]:
        roles, changes = plan_roles(list(app.get("appRoles") or []), self.config.providers)
        if changes:
            self._patch_app(app, {"appRoles": roles}, just_created=just_created)
            for change in changes:
                self.log(f"entra-app: {change}")
        return changes

    def current_roles(self, app: dict[str, Any]) -> dict[str, str]:
        """Enabled role value -> id, as they are after ensure_roles."""
        return {str(role["value"]): str(role["id"]) for role in app.get("appRoles") or [] if role.get("isEnabled")}

    def ensure_service_principal(self, app_id: str) -> tuple[dict[str, Any], bool]:
        created = False
        try:
            sp = self.graph.request("GET", f"/servicePrincipals(appId='{app_id}')")
        except GraphError as error:
            if error.status != 404:
                raise
            sp = self.graph.request("POST", "/servicePrincipals", {"appId": app_id}, just_created=True)
            created = True
            self.log(f"entra-app: created the service principal of {app_id}")
        if not sp.get("appRoleAssignmentRequired"):
            self.graph.request(
                "PATCH", f"/servicePrincipals/{sp['id']}", {"appRoleAssignmentRequired": True}, just_created=created
            )
        return sp, created

    def grant_callers(
        self, sp_id: str, role_ids: dict[str, str]
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """Grant each caller its roles; returns (granted, left to an administrator after a 403)."""
        have = {
            (str(a["principalId"]).lower(), str(a["appRoleId"]).lower())
            for a in self.graph.list(f"/servicePrincipals/{sp_id}/appRoleAssignedTo")
        }
        granted, refused = [], []
        for provider, callers in self.config.callers.items():
            role = f"{ROLE_PREFIX}{provider}"
            for caller in callers:
                if (caller, role_ids[role].lower()) in have:
                    continue
                if self._grant(sp_id, caller, role, role_ids[role]):
                    granted.append((caller, role))
                else:
                    refused.append((caller, role))
        return granted, refused

    def _grant(self, sp_id: str, caller: str, role: str, role_id: str) -> bool:
        """One grant. A 403 (the signed-in user has no admin role) is a warning with the admin's command."""
        body = {"principalId": caller, "resourceId": sp_id, "appRoleId": role_id}
        try:
            # A role added or a caller created moments ago may not have replicated yet.
            self.graph.request("POST", f"/servicePrincipals/{sp_id}/appRoleAssignedTo", body, just_created=True)
        except GraphError as error:
            if error.status != 403:
                raise
            self.log(admin_grant_warning(sp_id, caller, role, role_id))
            return False
        self.log(f"entra-app: granted {role} to {caller}")
        return True

    # --- operators: Broker.Operator, Diagnostics.Run and the Azure CLI's pre-authorisation ----------------

    def ensure_operator_access(self, app: dict[str, Any], *, just_created: bool) -> list[str]:
        """The operator role, the delegated scope, then the Azure CLI pre-authorised for that scope.

        Three PATCHes at most, each only when something is missing: Graph refuses to change an enabled role
        or scope in place, and a pre-authorisation names a scope id that must already exist.
        """
        changes: list[str] = []
        roles, role_change = plan_operator_role(list(app.get("appRoles") or []))
        if role_change:
            for step in roles:
                self._patch_app(app, {"appRoles": step}, just_created=just_created)
            changes.append(role_change)
        api = dict(app.get("api") or {})
        scopes, scope_id, scope_change = plan_diagnostics_scope(list(api.get("oauth2PermissionScopes") or []))
        if scope_change:
            api["oauth2PermissionScopes"] = scopes
            self._patch_app(app, {"api": dict(api)}, just_created=just_created)
            changes.append(scope_change)
        pre, pre_change = plan_cli_preauthorization(list(api.get("preAuthorizedApplications") or []), scope_id)
        if pre_change:
            api["preAuthorizedApplications"] = pre
            self._patch_app(app, {"api": dict(api)}, just_created=just_created)
            changes.append(pre_change)
        for change in changes:
            self.log(f"entra-app: {change}")
        return changes

    def grant_operators(
        self, sp_id: str, role_ids: dict[str, str]
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """Broker.Operator to each operator without it; returns (granted, left to an administrator after a 403).
        The broker works without these grants: only the diagnostics route needs them."""
        operators = self.config.operators.principal_ids
        if not operators:
            return [], []
        role_id = role_ids[OPERATOR_ROLE]
        have = {
            str(a["principalId"]).lower()
            for a in self.graph.list(f"/servicePrincipals/{sp_id}/appRoleAssignedTo")
            if str(a["appRoleId"]).lower() == role_id.lower()
        }
        granted, refused = [], []
        for principal in operators:
            if principal in have:
                continue
            if self._grant(sp_id, principal, OPERATOR_ROLE, role_id):
                granted.append((principal, OPERATOR_ROLE))
            else:
                refused.append((principal, OPERATOR_ROLE))
        return granted, refused

    def _patch_app(self, app: dict[str, Any], change: dict[str, Any], *, just_created: bool) -> None:
        self.graph.request("PATCH", f"/applications/{app['id']}", change, just_created=just_created)
        app.update(change)


def admin_grant_warning(sp_id: str, caller: str, role: str, role_id: str) -> str:
    """What to print when Graph refuses a grant: why, and the exact command an administrator runs."""
    body = json.dumps({"principalId": caller, "resourceId": sp_id, "appRoleId": role_id}, separators=(",", ":"))
    return (
        f"entra-app: WARNING: Graph refused to grant {role} to {caller} (403): granting app roles needs "
        "Application Administrator, Cloud Application Administrator or Privileged Role Administrator; "
        "owning the service principal is not enough. The deployment goes on without this grant. "
        "An administrator runs:\n"
        f"  az rest --method POST --uri https://graph.microsoft.com/v1.0/servicePrincipals/{sp_id}/appRoleAssignedTo "
        f"--headers Content-Type=application/json --body '{body}'\n"
        "  (PowerShell, Microsoft Graph module: "
        f"New-MgServicePrincipalAppRoleAssignedTo -ServicePrincipalId {sp_id} -PrincipalId {caller} "
        f"-ResourceId {sp_id} -AppRoleId {role_id})"
    )


def az_subscription_tenant(subscription: str) -> str:
    """The tenant of the subscription azd deploys to, as az knows it (never az's default subscription)."""
    exe = shutil.which("az")
    if exe is None:
        raise HookError("the Azure CLI (az) is required: install it, then run `az login --tenant <tenant id>`")
    args = [exe, "account", "show", "--subscription", subscription, "--query", "tenantId", "-o", "tsv"]
    done = subprocess.run(args, capture_output=True, text=True, check=False)  # noqa: S603
    tenant = done.stdout.strip()
    if done.returncode != 0 or not tenant:
        raise HookError(
            f"az does not know subscription {subscription} (AZURE_SUBSCRIPTION_ID, the one azd deploys to): "
            "sign az in to that subscription's tenant, `az login --tenant <its tenant id>`, "
            f"then check with `az account show --subscription {subscription}`.\n{done.stderr.strip()}"
        )
    return tenant


def deployment_tenant(config: HookConfig, tenant_of: Callable[[str], str]) -> str:
    """The tenant this run deploys to: the subscription's. AZURE_TENANT_ID, set by an earlier run, must agree."""
    if not config.subscription_id:
        raise HookError("AZURE_SUBSCRIPTION_ID is not set; run this through `azd provision` or `azd up`")
    tenant = tenant_of(config.subscription_id)
    if config.tenant_id and config.tenant_id.lower() != tenant.lower():
        raise HookError(
            f"subscription {config.subscription_id} belongs to tenant {tenant}, but this azd environment's "
            f"AZURE_TENANT_ID is {config.tenant_id}: check `azd env get-value AZURE_SUBSCRIPTION_ID` "
            "(an environment deploys to one tenant; use a new azd environment for another)"
        )
    return tenant


def az_signed_in_principal() -> str | None:
    """The object id of whoever az is signed in as: a user (``az ad signed-in-user show``) or a service
    principal (``az ad sp show --id <its appId>``, as ``az account show`` names it). None when az cannot say."""
    exe = shutil.which("az")
    if exe is None:
        return None

    def az(*args: str) -> str | None:
        done = subprocess.run([exe, *args], capture_output=True, text=True, check=False)  # noqa: S603
        return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None

    account = az("account", "show", "--query", "user", "-o", "json")
    try:
        user = json.loads(account) if account else {}
    except ValueError:
        return None
    kind, name = str(user.get("type", "")), str(user.get("name", ""))
    if kind == "user":
        return az("ad", "signed-in-user", "show", "--query", "id", "-o", "tsv")
    if kind == "servicePrincipal" and name:
        return az("ad", "sp", "show", "--id", name, "--query", "id", "-o", "tsv")
    return None


def with_deployer(
    env: Mapping[str, str],
    find: Callable[[], str | None] = az_signed_in_principal,
    say: Callable[[str], None] = print,
) -> dict[str, str]:
    """The environment with AZURE_PRINCIPAL_ID filled in from az when azd left it out.

    azd passes Bicep the principal id but does not store it in the environment's .env (azd's source,
    cli/azd/pkg/infra/provisioning/bicep/bicep_provider.go: "principalID (not stored to .env by default)",
    read 2026-12-06), and hooks see only .env values, so without this the deployer never got Broker.Operator.
    """
    values = dict(env)
    flag = values.get("BROKER_GRANT_DEPLOYER_OPERATOR", "").strip().lower()
    if values.get("AZURE_PRINCIPAL_ID", "").strip() or flag in ("false", "0", "no"):
        return values
    principal = find()
    if principal:
        values["AZURE_PRINCIPAL_ID"] = principal
        say(f"entra-app: the deployer, as az is signed in, is object id {principal}")
    else:
        say(
            "entra-app: cannot tell who az is signed in as, so Broker.Operator is not granted to you this run; "
            "set it and run again: azd env set AZURE_PRINCIPAL_ID <your object id> "
            "(az ad signed-in-user show --query id -o tsv), then azd hooks run preprovision"
        )
    return values


def azd_env_set(name: str, value: str) -> None:
    exe = shutil.which("azd")
    if exe is None:
        print(f"entra-app: azd not found; set {name} in your azd environment yourself: azd env set {name} <value>")
        return
    done = subprocess.run([exe, "env", "set", name, value], capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise HookError(f"`azd env set {name}` failed: {done.stderr.strip()}")


def main() -> int:
    try:
        config = HookConfig.from_env(with_deployer(os.environ))
        config = replace(config, tenant_id=deployment_tenant(config, az_subscription_tenant))
        graph = Graph(http_send(az_graph_token(config.subscription_id)))
        EntraApp(graph, config, azd_env_set, print).run()
    except HookError as error:
        print(f"entra-app: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
