"""A Microsoft Graph that cannot run here, replaced by the few rules of it the hook depends on.

It serves the hook's ``Send`` from state loaded out of recorded Graph objects (tests/infra/recordings/)
and keeps the rules a real tenant enforces, so a hook that breaks one fails:
- an enabled app role can be neither changed nor deleted (CannotDeleteOrUpdateEnabledEntitlement);
- an identifier URI must match the tenant's allowed formats (the restriction policy, on by default);
- a new object is invisible to other requests for ``lag`` requests (replication);
- collections come in pages of ``page_size`` with an absolute ``@odata.nextLink``;
- a duplicate role assignment is a 409;
- an enabled delegated scope can be neither changed nor deleted, like a role, and a pre-authorised client
  may name only scopes the app already has (written by an earlier PATCH).
Every request is kept in ``conversation`` in the order it arrived.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from graph_client import GRAPH, Reply

RECORDINGS = Path(__file__).parent / "recordings"


def secure_uri_policy(tenant: str) -> Callable[[str, dict[str, Any]], bool]:
    """Entra's default identifier-URI formats: api://<appId>, api://<tenantId>/<name>, api://<name>/<appId>."""

    def allowed(uri: str, app: dict[str, Any]) -> bool:
        app_id = app["appId"]
        return uri in (f"api://{app_id}",) or uri.startswith(f"api://{tenant}/") or uri.endswith(f"/{app_id}")

    return allowed


def app_id_only_policy(uri: str, app: dict[str, Any]) -> bool:
    """A stricter tenant: api://<appId> only."""
    return uri == f"api://{app['appId']}"


@dataclass
class Request:
    method: str
    path: str
    body: Any


@dataclass
class FakeGraph:
    tenant: str
    applications: list[dict[str, Any]] = field(default_factory=list)
    service_principals: list[dict[str, Any]] = field(default_factory=list)
    assignments: list[dict[str, Any]] = field(default_factory=list)
    lag: int = 0
    page_size: int = 2
    uri_allowed: Callable[[str, dict[str, Any]], bool] | None = None
    fail: Callable[[Request], Reply | None] | None = None
    conversation: list[Request] = field(default_factory=list)
    _visible_at: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_recording(cls, name: str, **options: Any) -> FakeGraph:
        state = json.loads((RECORDINGS / name).read_text(encoding="utf-8"))
        return cls(
            tenant=state["organization"]["value"][0]["id"],
            applications=state["applications"]["value"],
            service_principals=state["servicePrincipals"]["value"],
            assignments=state["appRoleAssignedTo"]["value"],
            **options,
        )

    def requests(self, method: str, pattern: str = "") -> list[Request]:
        return [r for r in self.conversation if r.method == method and re.search(pattern, r.path)]

    # --- the Send the hook calls ---
    def __call__(self, method: str, url: str, body: object | None) -> Reply:
        assert url.startswith(GRAPH), f"not a Graph v1.0 URL: {url}"
        parts = urlsplit(url)
        path = unquote(parts.path.removeprefix(urlsplit(GRAPH).path))
        request = Request(method, path + (f"?{unquote(parts.query)}" if parts.query else ""), copy.deepcopy(body))
        self.conversation.append(request)
        if self.fail is not None and (reply := self.fail(request)) is not None:
            return reply
        return self._route(method, path, parse_qs(parts.query), body)

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Reply:
        if method == "GET" and path == "/organization":
            return Reply(200, {"value": [{"id": self.tenant}]})
        if match := re.fullmatch(r"/applications\(appId='([^']+)'\)", path):
            app = self._find(self.applications, "appId", match[1])
            return Reply(200, copy.deepcopy(app)) if app else _not_found(match[1])
        if method == "GET" and path == "/applications":
            tag = re.fullmatch(r"tags/any\(t:t eq '([^']*)'\)", query["$filter"][0])
            assert tag, f"unsupported filter {query['$filter']}"
            return self._page(path, [a for a in self.applications if tag[1] in a.get("tags", [])], query)
        if method == "POST" and path == "/applications":
            return self._create_app(body)
        if method == "PATCH" and (match := re.fullmatch(r"/applications/([^/]+)", path)):
            return self._patch_app(match[1], body)
        if match := re.fullmatch(r"/servicePrincipals\(appId='([^']+)'\)", path):
            sp = self._find(self.service_principals, "appId", match[1])
            return Reply(200, copy.deepcopy(sp)) if sp else _not_found(match[1])
        if method == "POST" and path == "/servicePrincipals":
            return self._create_sp(body)
        if match := re.fullmatch(r"/servicePrincipals/([^/]+)/appRoleAssignedTo", path):
            return self._assignments(method, path, match[1], query, body)
        if method == "PATCH" and (match := re.fullmatch(r"/servicePrincipals/([^/]+)", path)):
            sp = self._find(self.service_principals, "id", match[1])
            if sp is None:
                return _not_found(match[1])
            sp.update(body)
            return Reply(204, None)
        raise AssertionError(f"the fake has no route for {method} {path}")

    # --- state ---
    def _tick(self) -> int:
        return len(self.conversation)

    def _born(self, object_id: str) -> None:
        self._visible_at[object_id] = self._tick() + self.lag

    def _find(self, items: list[dict[str, Any]], key: str, value: str) -> dict[str, Any] | None:
        for item in items:
            if item.get(key) == value and self._tick() > self._visible_at.get(item["id"], 0):
                return item
        return None

    def _page(self, path: str, items: list[dict[str, Any]], query: dict[str, list[str]]) -> Reply:
        start = int(query.get("$skiptoken", ["0"])[0])
        page = {"value": copy.deepcopy(items[start : start + self.page_size])}
        if start + self.page_size < len(items):
            page["@odata.nextLink"] = f"{GRAPH}{path}?$skiptoken={start + self.page_size}"
        return Reply(200, page)

    def _create_app(self, body: dict[str, Any]) -> Reply:
        app = {
            "id": str(uuid.uuid4()),
            "appId": str(uuid.uuid4()),
            "identifierUris": [],
            "appRoles": [],
            "tags": [],
            "api": {"oauth2PermissionScopes": [], "preAuthorizedApplications": [], "requestedAccessTokenVersion": None},
            **copy.deepcopy(body),
        }
        self.applications.append(app)
        self._born(app["id"])
        return Reply(201, copy.deepcopy(app))

    def _patch_app(self, object_id: str, body: dict[str, Any]) -> Reply:
        app = self._find(self.applications, "id", object_id)
        if app is None:
            return _not_found(object_id)
        for uri in body.get("identifierUris", []):
            if uri not in app["identifierUris"] and self.uri_allowed and not self.uri_allowed(uri, app):
                return _error(
                    400, "Request_BadRequest", f"Values of identifierUris property must use a secure format: {uri}"
                )
        if "appRoles" in body:
            new = {role["id"]: role for role in body["appRoles"]}
            for old in app["appRoles"]:
                kept = new.get(old["id"])
                if old["isEnabled"] and (kept is None or {**old, "isEnabled": kept["isEnabled"]} != kept):
                    return _error(
                        400,
                        "CannotDeleteOrUpdateEnabledEntitlement",
                        "Property value cannot be deleted or updated unless it is disabled first.",
                    )
        if "api" in body:
            refused = _api_change_refused(app.get("api") or {}, body["api"])
            if refused is not None:
                return refused
        app.update(copy.deepcopy(body))
        return Reply(204, None)

    def _create_sp(self, body: dict[str, Any]) -> Reply:
        if self._find(self.applications, "appId", body["appId"]) is None:
            return _error(
                400,
                "Request_BadRequest",
                f"The appId '{body['appId']}' of the service principal does not reference a valid application object.",
            )
        sp = {"id": str(uuid.uuid4()), "appId": body["appId"], "appRoleAssignmentRequired": False}
        self.service_principals.append(sp)
        self._born(sp["id"])
        return Reply(201, copy.deepcopy(sp))

    def _assignments(self, method: str, path: str, sp_id: str, query: dict[str, list[str]], body: Any) -> Reply:
        sp = self._find(self.service_principals, "id", sp_id)
        if sp is None:
            return _not_found(sp_id)
        if method == "GET":
            return self._page(path, [a for a in self.assignments if a["resourceId"] == sp_id], query)
        app = self._find(self.applications, "appId", sp["appId"])
        assert app is not None
        if not any(r["id"] == body["appRoleId"] and r["isEnabled"] for r in app["appRoles"]):
            return _error(
                400, "Request_BadRequest", f"Permission being assigned was not found on application '{app['appId']}'."
            )
        key = (body["principalId"], body["appRoleId"], sp_id)
        if any((a["principalId"], a["appRoleId"], a["resourceId"]) == key for a in self.assignments):
            return _error(409, "Request_BadRequest", "Permission being assigned already exists on the object.")
        assignment = {"id": str(uuid.uuid4()), **body}
        self.assignments.append(assignment)
        return Reply(201, assignment)


def _error(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message, "innerError": {"request-id": str(uuid.uuid4())}}})


def _not_found(object_id: str) -> Reply:
    return _error(
        404,
        "Request_ResourceNotFound",
        f"Resource '{object_id}' does not exist or one of its queried reference-property objects are not present.",
    )


def _api_change_refused(old: dict[str, Any], new: dict[str, Any]) -> Reply | None:
    """Graph's rules for ``api``: enabled scopes stay as they are; pre-authorisations name existing scopes."""
    kept = {scope["id"]: scope for scope in new.get("oauth2PermissionScopes", old.get("oauth2PermissionScopes", []))}
    for scope in old.get("oauth2PermissionScopes", []):
        after = kept.get(scope["id"])
        if scope["isEnabled"] and (after is None or {**scope, "isEnabled": after["isEnabled"]} != after):
            return _error(
                400,
                "CannotDeleteOrUpdateEnabledEntitlement",
                "Property value cannot be deleted or updated unless it is disabled first.",
            )
    existing = {scope["id"] for scope in old.get("oauth2PermissionScopes", [])}
    for client in new.get("preAuthorizedApplications", []):
        missing = [i for i in client.get("delegatedPermissionIds", []) if i not in existing]
        if missing:
            return _error(
                400,
                "Request_BadRequest",
                f"Property PreAuthorizedApplication references a permission that does not exist: {missing[0]}",
            )
    return None
