"""azd preprovision hook: the broker's Entra application, its app roles, and role grants to callers.

Idempotent; safe to run on every `azd provision`. Needs the az CLI signed in to the target
tenant (`az login`) as someone allowed to create app registrations (Application Developer
or equivalent) and to assign app roles on the app they own.

What it does, from the azd environment (`azd env get-values`):
1. Finds or creates the app registration whose App ID URI is BROKER_APP_ID_URI
   (default ``api://ilevel-token-broker-<AZURE_ENV_NAME>``, the same default infra/main.bicep uses).
2. Declares one application role per provider, ``Token.Read.<provider>``, keeping existing role ids.
3. Creates its service principal and sets appRoleAssignmentRequired, so Entra refuses a token for
   this audience to any caller that was not granted a role (the broker checks the role again).
4. Grants ``Token.Read.ilevel`` to every object id in BROKER_CALLER_PRINCIPAL_IDS (comma-separated;
   e.g. the data factory's managed identity).
5. Stores BROKER_APP_ID_URI and BROKER_API_CLIENT_ID in the azd environment for the Bicep parameters.

Why a hook and not the Microsoft Graph Bicep extension: the extension's ``extension microsoftGraphV1``
syntax is beyond the Bicep parser checkov uses here, so it would turn the policy check into a
parsing error, and app-role assignments would still need a principal list resolved at deploy time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from typing import Any

GRAPH = "https://graph.microsoft.com/v1.0"


def az(*args: str) -> Any:
    """Run one az CLI command and return its JSON output (None when it prints nothing)."""
    exe = shutil.which("az")
    if exe is None:
        raise SystemExit("entra-app: the az CLI is required; install it and run `az login`")
    done = subprocess.run([exe, *args, "--output", "json"], capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise SystemExit(f"entra-app: `az {' '.join(args[:3])} ...` failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout) if done.stdout.strip() else None


def graph(method: str, path: str, body: object | None = None) -> Any:
    """Call Microsoft Graph through `az rest` (it brings the signed-in user's token)."""
    args = ["rest", "--method", method, "--url", f"{GRAPH}{path}"]
    if body is not None:
        args += ["--body", json.dumps(body)]
    return az(*args)


def azd_env_set(name: str, value: str) -> None:
    exe = shutil.which("azd")
    if exe is None:
        print(f"entra-app: azd not found; set {name}={value} in your azd environment yourself")
        return
    subprocess.run([exe, "env", "set", name, value], check=True)  # noqa: S603


def app_roles(existing: list[dict[str, Any]], providers: list[str]) -> list[dict[str, Any]]:
    """One enabled application role per provider; roles already declared keep their ids."""
    by_value = {role.get("value"): role for role in existing}
    roles = [role for role in existing if not str(role.get("value", "")).startswith("Token.Read.")]
    for provider in providers:
        value = f"Token.Read.{provider}"
        old = by_value.get(value, {})
        roles.append(
            {
                "id": old.get("id") or str(uuid.uuid4()),
                "allowedMemberTypes": ["Application"],
                "description": f"Get {provider} access tokens from the token broker",
                "displayName": f"Read {provider} tokens",
                "isEnabled": True,
                "value": value,
            }
        )
    return roles


def main() -> int:
    env_name = os.environ.get("AZURE_ENV_NAME", "").strip()
    if not env_name:
        raise SystemExit("entra-app: AZURE_ENV_NAME is not set; run this through `azd provision`")
    providers = [p.strip() for p in os.environ.get("BROKER_PROVIDERS", "ilevel").split(",") if p.strip()]
    app_id_uri = os.environ.get("BROKER_APP_ID_URI", "").strip() or f"api://ilevel-token-broker-{env_name}"
    display_name = f"ilevel-token-broker-{env_name}"

    found = az("ad", "app", "list", "--filter", f"identifierUris/any(u:u eq '{app_id_uri}')")
    if found:
        app = found[0]
        print(f"entra-app: using app registration {app['appId']} ({app_id_uri})")
    else:
        app = az("ad", "app", "create", "--display-name", display_name, "--sign-in-audience", "AzureADMyOrg")
        az("ad", "app", "update", "--id", app["appId"], "--identifier-uris", app_id_uri)
        print(f"entra-app: created app registration {app['appId']} ({app_id_uri})")

    roles = app_roles(app.get("appRoles") or [], providers)
    graph("PATCH", f"/applications/{app['id']}", {"appRoles": roles})

    sps = az("ad", "sp", "list", "--filter", f"appId eq '{app['appId']}'")
    sp = sps[0] if sps else az("ad", "sp", "create", "--id", app["appId"])
    graph("PATCH", f"/servicePrincipals/{sp['id']}", {"appRoleAssignmentRequired": True})

    role_ids = {role["value"]: role["id"] for role in roles}
    callers = [c.strip() for c in os.environ.get("BROKER_CALLER_PRINCIPAL_IDS", "").split(",") if c.strip()]
    granted = graph("GET", f"/servicePrincipals/{sp['id']}/appRoleAssignedTo")
    have = {(a["principalId"], a["appRoleId"]) for a in (granted or {}).get("value", [])}
    for caller in callers:
        role_id = role_ids["Token.Read.ilevel"]
        if (caller, role_id) in have:
            print(f"entra-app: {caller} already has Token.Read.ilevel")
            continue
        body = {"principalId": caller, "resourceId": sp["id"], "appRoleId": role_id}
        graph("POST", f"/servicePrincipals/{sp['id']}/appRoleAssignedTo", body)
        print(f"entra-app: granted Token.Read.ilevel to {caller}")

    azd_env_set("BROKER_APP_ID_URI", app_id_uri)
    azd_env_set("BROKER_API_CLIENT_ID", app["appId"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
