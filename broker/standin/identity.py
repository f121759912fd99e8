"""STAND-IN for local development and tests; never used in production.

The App Service / Azure Functions managed identity endpoint (``IDENTITY_ENDPOINT`` with the
``X-IDENTITY-HEADER`` secret, api-version 2019-08-01) that azure-identity's
``ManagedIdentityCredential`` calls. Plain HTTP on loopback, as the real one is on localhost.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

API_VERSION = "2019-08-01"
TOKEN_PATH = "/msi/token"


@dataclass(frozen=True)
class IdentityRequest:
    """One token request as the endpoint saw it (the identity header value is not kept)."""

    path: str
    params: dict[str, str]
    header_ok: bool
    status: int


@dataclass(frozen=True)
class IssuedToken:
    """A token handed out, with what it was for. The token is kept out of ``repr``."""

    token: str = field(repr=False)
    resource: str
    client_id: str
    expires_on: int


class ManagedIdentityServer:
    """ASGI app: issues random opaque tokens to callers presenting the identity header."""

    def __init__(
        self,
        *,
        identity_header: str | None = None,
        client_id: str | None = None,
        require_client_id: bool = False,
        expires_in: int = 3600,
    ) -> None:
        self.identity_header = identity_header or secrets.token_urlsafe(24)
        self.client_id = client_id  # when set, requests naming another client_id get 400
        self.require_client_id = require_client_id  # no system-assigned identity: client_id must be named
        self.expires_in = expires_in
        self.requests: list[IdentityRequest] = []
        self.issued: list[IssuedToken] = []
        # A live set: give this very object to ``KeyVaultServer.accepted_tokens`` to accept exactly these.
        self.issued_tokens: set[str] = set()
        self._failure_status: int | None = None
        self._lock = threading.Lock()
        self._app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=["GET", "POST"])])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    def environment(self, base_url: str) -> dict[str, str]:
        """The environment variables azure-identity reads, for a server running at ``base_url``."""
        return {"IDENTITY_ENDPOINT": base_url + TOKEN_PATH, "IDENTITY_HEADER": self.identity_header}

    def fail_with(self, status: int | None) -> None:
        """Answer every request with this error status; ``None`` restores normal behaviour."""
        self._failure_status = status

    async def _endpoint(self, request: Request) -> Response:
        params = dict(request.query_params)
        header_ok = secrets.compare_digest(request.headers.get("x-identity-header", ""), self.identity_header)
        response = self._respond(params, header_ok)
        with self._lock:
            self.requests.append(IdentityRequest(request.url.path, params, header_ok, response.status_code))
        return response

    def _respond(self, params: dict[str, str], header_ok: bool) -> Response:
        if self._failure_status is not None:
            return _error(self._failure_status, "The managed identity endpoint stand-in was told to fail.")
        if not header_ok:
            return _error(401, "The X-IDENTITY-HEADER header is missing or wrong.")
        if params.get("api-version") != API_VERSION:
            return _error(400, f"api-version must be {API_VERSION}.")
        resource = params.get("resource", "")
        if not resource:
            return _error(400, "The resource parameter is required.")
        requested = params.get("client_id")
        if requested is None and self.require_client_id:
            return _error(400, "No system-assigned managed identity; name a client_id.")
        if self.client_id is not None and requested not in (None, self.client_id):
            return _error(400, "Unable to load the proper Managed Identity.")
        if any(key in params for key in ("mi_res_id", "object_id", "principal_id")):
            return _error(400, "Only client_id selects an identity in this stand-in.")
        client_id = requested or self.client_id or "system-assigned"
        expires_on = int(time.time()) + self.expires_in
        issued = IssuedToken(secrets.token_urlsafe(32), resource, client_id, expires_on)
        with self._lock:
            self.issued.append(issued)
            self.issued_tokens.add(issued.token)
        return JSONResponse(
            {
                "access_token": issued.token,
                # The docs show expires_on as a string of epoch seconds; MSAL int()s it.
                "expires_on": str(expires_on),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": client_id,
            }
        )


def _error(status: int, message: str) -> Response:
    return JSONResponse({"statusCode": status, "message": message}, status_code=status)
