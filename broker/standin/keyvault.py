"""STAND-IN for local development and tests; never used in production.

Azure Key Vault's secrets REST API, close enough that the real ``SecretClient`` works against it
over TLS: the bearer challenge, get (latest or by version), list versions, set, update enabled,
the real error shapes (disabled, not found, RBAC denial), and scripted faults.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from broker.standin.faults import FaultScript, Scriptable

KEY_VAULT_RESOURCE = "https://vault.azure.net"
RECOVERY_LEVEL = "Recoverable+Purgeable"
# Why a 403: no role, or the network (public access off, or the firewall).
Denial = Literal["rbac", "connection", "firewall"]
_NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
_NOT_FOUND_HINT = (
    "If you recently deleted this secret you may be able to recover it using the correct recovery command. "
    "For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
)
_RBAC_ACTIONS = {
    "get": "Microsoft.KeyVault/vaults/secrets/getSecret/action",
    "list": "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
    "set": "Microsoft.KeyVault/vaults/secrets/setSecret/action",
    "update": "Microsoft.KeyVault/vaults/secrets/writeMetadata/action",
}


@dataclass
class SecretVersion:
    """One stored version of a secret. The value is kept out of ``repr``."""

    version: str
    value: str = field(repr=False)
    enabled: bool
    created: int
    updated: int
    content_type: str | None = None
    tags: dict[str, str] | None = None


@dataclass(frozen=True)
class VaultRequest:
    """A request as the vault saw it (no header values, no body)."""

    method: str
    path: str
    authenticated: bool
    status: int


@dataclass(frozen=True)
class _Operation:
    kind: str  # get | list | set | update | list-secrets | unknown
    name: str = ""
    version: str = ""  # "" means latest


class KeyVaultServer(Scriptable):
    """ASGI app: an in-memory Key Vault (secrets only) with bearer-challenge auth and faults."""

    def __init__(self, *, tenant_id: str | None = None, accepted_tokens: set[str] | None = None) -> None:
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.accepted_tokens = accepted_tokens  # None accepts any non-empty bearer token
        self.latency_s = 0.0
        # Authenticated attempts per secret name, counted before faults apply (a scripted 429 counts).
        self.reads: Counter[str] = Counter()  # value GETs: latest or a given version
        self.list_calls: Counter[str] = Counter()  # GET /secrets/{name}/versions
        self.requests: list[VaultRequest] = []
        self.faults = FaultScript()
        self._forbidden: Denial | None = None
        self._secrets: dict[str, list[SecretVersion]] = {}
        self._lock = threading.Lock()
        self._app = Starlette(
            routes=[Route("/{path:path}", self._endpoint, methods=["GET", "PUT", "PATCH", "POST", "DELETE"])]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    # --- test API -------------------------------------------------------------------------
    @property
    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value sent with every 401."""
        authority = f"https://login.microsoftonline.com/{self.tenant_id}"
        return f'Bearer authorization="{authority}", resource="{KEY_VAULT_RESOURCE}"'

    @property
    def unauthenticated_requests(self) -> int:
        """How many requests arrived without an acceptable bearer token (and were challenged)."""
        return sum(1 for request in self.requests if not request.authenticated)

    def set_secret(self, name: str, value: str, *, enabled: bool = True, created: int | None = None) -> str:
        """Store a new version (it becomes the latest) and return its version id; ``created`` backdates it."""
        return self._store(name, value, enabled=enabled, created=created).version

    def set_enabled(self, name: str, version: str, enabled: bool) -> None:
        """Enable or disable one version."""
        entry = self._find(name, version)
        if entry is None:
            raise KeyError(f"{name}/{version}")
        entry.enabled = enabled
        entry.updated = int(time.time())

    def delete(self, name: str) -> None:
        """Remove a secret and all its versions."""
        with self._lock:
            self._secrets.pop(name, None)

    def versions(self, name: str) -> list[str]:
        """Version ids of a secret, oldest first."""
        with self._lock:
            return [entry.version for entry in self._secrets.get(name, [])]

    def reset_counts(self) -> None:
        """Zero ``reads`` and ``list_calls`` and forget recorded requests."""
        with self._lock:
            self.reads.clear()
            self.list_calls.clear()
            self.requests.clear()

    def forbid(self, by: Denial = "rbac") -> None:
        """Answer every authenticated request with a 403, as Key Vault does when:

        - ``rbac``: the caller has no role assignment (``ForbiddenByRbac``);
        - ``connection``: the vault's public network access is disabled and the request did not come
          through an approved private endpoint (``ForbiddenByConnection``);
        - ``firewall``: the vault's firewall does not admit the client address (``ForbiddenByFirewall``).
        """
        self._forbidden = by

    def allow(self) -> None:
        """Undo :meth:`forbid`."""
        self._forbidden = None

    # --- HTTP -----------------------------------------------------------------------------
    async def _endpoint(self, request: Request) -> Response:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        if not self._authenticated(request.headers.get("authorization", "")):
            response = self._challenge_response()
            self._record(request, authenticated=False, status=response.status_code)
            return response
        operation = _parse(request.method, request.url.path)
        with self._lock:
            if operation.kind == "get":
                self.reads[operation.name] += 1
            elif operation.kind == "list":
                self.list_calls[operation.name] += 1
        response = await self._respond(request, operation)
        self._record(request, authenticated=True, status=response.status_code)
        return response

    async def _respond(self, request: Request, operation: _Operation) -> Response:
        scripted = self.faults.next_reply()
        if scripted is not None:
            return await scripted.respond()
        if self._forbidden == "rbac":
            return _forbidden_by_rbac(operation, request)
        if self._forbidden is not None:
            return _forbidden_by_network(self._forbidden)
        vault = str(request.base_url).rstrip("/")
        if operation.kind == "unknown":
            return _error(400, "BadParameter", "The request URI is not valid for this stand-in.")
        if operation.kind == "list-secrets":
            return self._list_secrets(vault)
        if not _NAME.match(operation.name):
            return _error(400, "BadParameter", "The request URI contains an invalid name: " + operation.name)
        if operation.kind == "set":
            return await self._set(request, vault, operation.name)
        if operation.kind == "list":
            return self._list_versions(vault, operation.name)
        entry = self._find(operation.name, operation.version)
        if entry is None:
            shown = operation.name + (f"/{operation.version}" if operation.version else "")
            message = f"A secret with (name/id) {shown} was not found in this key vault. {_NOT_FOUND_HINT}"
            return _error(404, "SecretNotFound", message)
        if operation.kind == "update":
            return await self._update(request, vault, operation.name, entry)
        if not entry.enabled:
            message = "Operation get is not allowed on a disabled secret."
            return _error(403, "Forbidden", message, inner="SecretDisabled")
        return JSONResponse(_bundle(vault, operation.name, entry, with_value=True))

    def _authenticated(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        return self.accepted_tokens is None or token in self.accepted_tokens

    def _challenge_response(self) -> Response:
        return _error(
            401,
            "Unauthorized",
            "AKV10000: Request is missing a Bearer or PoP token.",
            headers={"WWW-Authenticate": self.challenge},
        )

    def _record(self, request: Request, *, authenticated: bool, status: int) -> None:
        with self._lock:
            self.requests.append(VaultRequest(request.method, request.url.path, authenticated, status))

    def _store(
        self,
        name: str,
        value: str,
        *,
        enabled: bool,
        content_type: str | None = None,
        tags: dict[str, str] | None = None,
        created: int | None = None,
    ) -> SecretVersion:
        now = int(time.time()) if created is None else created
        entry = SecretVersion(secrets.token_hex(16), value, enabled, now, now, content_type, tags)
        with self._lock:
            self._secrets.setdefault(name, []).append(entry)
        return entry

    def _find(self, name: str, version: str) -> SecretVersion | None:
        with self._lock:
            entries = self._secrets.get(name, [])
            if not version:
                return entries[-1] if entries else None
            return next((entry for entry in entries if entry.version == version), None)

    async def _set(self, request: Request, vault: str, name: str) -> Response:
        body = await _json_object(request)
        if body is None or not isinstance(body.get("value"), str):
            return _error(400, "BadParameter", "Property value is required and must be a string.")
        attributes = body.get("attributes") or {}
        entry = self._store(
            name,
            body["value"],
            enabled=bool(attributes.get("enabled", True)),
            content_type=body.get("contentType"),
            tags=body.get("tags"),
        )
        return JSONResponse(_bundle(vault, name, entry, with_value=True))

    async def _update(self, request: Request, vault: str, name: str, entry: SecretVersion) -> Response:
        body = await _json_object(request)
        if body is None:
            return _error(400, "BadParameter", "The request body is not a JSON object.")
        attributes = body.get("attributes") or {}
        if "enabled" in attributes:
            entry.enabled = bool(attributes["enabled"])
        if "contentType" in body:
            entry.content_type = body["contentType"]
        if "tags" in body:
            entry.tags = body["tags"]
        entry.updated = int(time.time())
        return JSONResponse(_bundle(vault, name, entry, with_value=False))

    def _list_versions(self, vault: str, name: str) -> Response:
        with self._lock:
            entries = list(self._secrets.get(name, []))
        items = [_bundle(vault, name, entry, with_value=False) for entry in entries]
        return JSONResponse({"value": items, "nextLink": None})

    def _list_secrets(self, vault: str) -> Response:
        with self._lock:
            latest = {name: entries[-1] for name, entries in self._secrets.items() if entries}
        items = []
        for name, entry in latest.items():
            item = _bundle(vault, name, entry, with_value=False)
            item["id"] = f"{vault}/secrets/{name}"
            items.append(item)
        return JSONResponse({"value": items, "nextLink": None})


def _parse(method: str, path: str) -> _Operation:
    parts = path.strip("/").split("/")
    if parts[0] != "secrets":
        return _Operation("unknown")
    if len(parts) == 1 and method == "GET":
        return _Operation("list-secrets")
    name = parts[1] if len(parts) > 1 else ""
    rest = parts[2:]
    if method == "GET" and rest == ["versions"]:
        return _Operation("list", name)
    if method == "GET" and len(rest) <= 1:
        return _Operation("get", name, rest[0] if rest else "")
    if method == "PUT" and not rest:
        return _Operation("set", name)
    if method == "PATCH" and len(rest) <= 1:
        return _Operation("update", name, rest[0] if rest else "")
    return _Operation("unknown", name)


def _bundle(vault: str, name: str, entry: SecretVersion, *, with_value: bool) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "id": f"{vault}/secrets/{name}/{entry.version}",
        "attributes": {
            "enabled": entry.enabled,
            "created": entry.created,
            "updated": entry.updated,
            "recoveryLevel": RECOVERY_LEVEL,
            "recoverableDays": 90,
        },
    }
    if with_value:
        bundle["value"] = entry.value
    if entry.content_type is not None:
        bundle["contentType"] = entry.content_type
    if entry.tags is not None:
        bundle["tags"] = entry.tags
    return bundle


async def _json_object(request: Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.body())
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _error(
    status: int, code: str, message: str, *, inner: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner is not None:
        error["innererror"] = {"code": inner}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _forbidden_by_rbac(operation: _Operation, request: Request) -> Response:
    action = _RBAC_ACTIONS.get(operation.kind, _RBAC_ACTIONS["get"])
    resource = f"{request.base_url}secrets/{operation.name}" if operation.name else str(request.base_url)
    message = (
        "Caller is not authorized to perform action on resource.\r\n"
        "If role assignments, deny assignments or role definitions were changed recently, "
        "please observe propagation time.\r\n"
        f"Caller: appid=(stand-in);oid=(stand-in)\r\nAction: '{action}'\r\nResource: '{resource}'\r\n"
        "Assignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: null \r\n"
        "Vault: standin;location=local\r\n"
    )
    return _error(403, "Forbidden", message, inner="ForbiddenByRbac")


def _forbidden_by_network(denial: Denial) -> Response:
    """Key Vault's network-layer 403s; the texts as Key Vault writes them (seen in public issue threads)."""
    caller = "Caller: appid=(stand-in);oid=(stand-in);iss=https://sts.windows.net/(stand-in)/\r\n"
    if denial == "connection":
        message = (
            "Public network access is disabled and request is not from a trusted service nor via an approved "
            f"private link.\r\n{caller}Vault: standin;location=local"
        )
        return _error(403, "Forbidden", message, inner="ForbiddenByConnection")
    message = (
        "Client address is not authorized and caller is not a trusted service.\r\nClient address: 203.0.113.7\r\n"
        f"{caller}Vault: standin;location=local"
    )
    return _error(403, "Forbidden", message, inner="ForbiddenByFirewall")
