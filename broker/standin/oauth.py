"""STAND-IN for local development and tests; never used in production.

An OAuth2 (RFC 6749) client-credentials token endpoint at ``POST /oauth/token`` that checks
requests strictly, accepts a configurable set of client-authentication styles and credential
pairs, records every request, and can be scripted to fail.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote_plus

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from broker.standin.faults import OMIT, FaultScript, Omit, Reply, Scriptable

Variant = Literal["basic_raw", "basic_form", "post"]
ALL_VARIANTS: frozenset[Variant] = frozenset({"basic_raw", "basic_form", "post"})
TOKEN_PATH = "/oauth/token"
ISSUER = "https://standin.invalid/"
DEFAULT_AUDIENCE = "https://api.standin.invalid/"
EXTRA_PARAMS = ("scope", "audience", "resource")
_QUOTES = ('"', "'")
_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the token endpoint saw it. Headers and form are kept out of ``repr`` (they hold secrets)."""

    method: str
    path: str
    headers: dict[str, str] = field(repr=False)
    form: dict[str, str] = field(repr=False)
    variant: Variant | None
    client_id: str | None
    outcome: str

    @property
    def extras(self) -> dict[str, str]:
        """The optional parameters sent (scope, audience, resource)."""
        return {key: self.form[key] for key in EXTRA_PARAMS if key in self.form}


class _Rejected(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


def _bad_request(description: str, error: str = "invalid_request") -> _Rejected:
    return _Rejected(400, error, description)


class TokenServer(Scriptable):
    """ASGI app: a strict client-credentials token endpoint with faults on demand."""

    def __init__(
        self,
        *,
        variants: Iterable[Variant] = ("basic_raw",),
        expires_in: object = 3600,
        token_type: str = "Bearer",
        audience: str = DEFAULT_AUDIENCE,
        latency_s: float = 0.0,
    ) -> None:
        self.variants: set[Variant] = set(variants)
        self.expires_in: object = expires_in  # any JSON value, or OMIT to leave the field out
        self.token_type = token_type
        self.audience = audience
        self.latency_s = latency_s
        self.signing_key = secrets.token_bytes(32)
        self.requests: list[RecordedRequest] = []
        # Requests that have arrived, counted before latency_s passes (requests lists them once answered).
        self.arrived = 0
        self.issued_tokens: list[str] = []
        self.faults = FaultScript()
        # When True, rejections echo the request's Authorization header and body in error_description.
        self.echo_request = False
        self._accepted: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._app = Starlette(routes=[Route(TOKEN_PATH, self._endpoint, methods=_ANY_METHOD)])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    # --- test API -------------------------------------------------------------------------
    def accept(self, client_id: str, client_secret: str) -> None:
        """Make this credential pair valid (several pairs may be valid at once, as during rotation)."""
        self._accepted.add((client_id, client_secret))

    def revoke(self, client_id: str, client_secret: str) -> None:
        """Make this credential pair invalid."""
        self._accepted.discard((client_id, client_secret))

    @property
    def request_count(self) -> int:
        """How many requests reached the endpoint (including scripted and rejected ones)."""
        return len(self.requests)

    def reset(self) -> None:
        """Forget recorded requests and issued tokens, and drop any scripted or default fault."""
        with self._lock:
            self.requests.clear()
            self.issued_tokens.clear()
        self.faults.clear()
        self.echo_request = False

    def decode(self, token: str) -> dict[str, object]:
        """Verify a token this server issued and return its claims."""
        claims: dict[str, object] = jwt.decode(
            token, self.signing_key, algorithms=["HS256"], options={"verify_aud": False}, issuer=ISSUER
        )
        return claims

    # --- HTTP -----------------------------------------------------------------------------
    async def _endpoint(self, request: Request) -> Response:
        with self._lock:
            self.arrived += 1
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        headers = {key.lower(): value for key, value in request.headers.items()}
        body = await request.body()
        form = _lenient_form(body)
        scripted = self.faults.next_reply()
        if scripted is not None:
            self._record(request, headers, form, None, None, "scripted")
            return await scripted.respond()
        try:
            form = self._check_request(request.method, headers, body)
            variant, client_id = self._authenticate(headers, form)
        except _Rejected as rejected:
            self._record(request, headers, form, None, None, rejected.error)
            if self.echo_request:
                # Some real endpoints echo what they received in error_description: the Basic
                # header and the raw body, secrets and all. The broker must scrub every form.
                raw_body = body.decode("utf-8", errors="replace")
                echoed = f"{rejected.description}; received Authorization: {headers.get('authorization', '')} body: "
                rejected = _Rejected(rejected.status, rejected.error, echoed + raw_body)
            return _error_response(rejected)
        token = self._mint(client_id, form)
        self._record(request, headers, form, variant, client_id, "issued")
        payload: dict[str, object] = {"access_token": token, "token_type": self.token_type}
        if not isinstance(self.expires_in, Omit):
            payload["expires_in"] = self.expires_in
        return JSONResponse(payload, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _record(
        self,
        request: Request,
        headers: dict[str, str],
        form: dict[str, str],
        variant: Variant | None,
        client_id: str | None,
        outcome: str,
    ) -> None:
        entry = RecordedRequest(request.method, request.url.path, headers, form, variant, client_id, outcome)
        with self._lock:
            self.requests.append(entry)

    @staticmethod
    def _check_request(method: str, headers: Mapping[str, str], body: bytes) -> dict[str, str]:
        if method != "POST":
            raise _bad_request("the token endpoint only accepts POST (RFC 6749 §3.2)")
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/x-www-form-urlencoded":
            raise _bad_request("Content-Type must be application/x-www-form-urlencoded")
        if body.lstrip()[:1] in (b"{", b"["):
            raise _bad_request("the body must be form-encoded, not JSON")
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _bad_request("the body is not a valid form") from exc
        form: dict[str, str] = {}
        for key, value in pairs:
            if key in form:
                raise _bad_request(f"parameter {key!r} repeated (RFC 6749 §3.2)")
            if any(quote in key or quote in value for quote in _QUOTES):
                raise _bad_request(f"parameter {key!r} contains a quote character")
            form[key] = value
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise _bad_request("grant_type is missing")
        if grant_type != "client_credentials":
            raise _bad_request("only grant_type=client_credentials is supported", "unsupported_grant_type")
        return form

    def _authenticate(self, headers: Mapping[str, str], form: Mapping[str, str]) -> tuple[Variant, str]:
        authorization = headers.get("authorization")
        in_body = "client_id" in form or "client_secret" in form
        if authorization is not None and in_body:
            raise _bad_request("client credentials in both the Authorization header and the body (RFC 6749 §2.3)")
        if authorization is not None:
            return self._match_basic(_decode_basic(authorization))
        if "client_id" in form and "client_secret" in form:
            pair = (form["client_id"], form["client_secret"])
            if "post" in self.variants and pair in self._accepted:
                return "post", pair[0]
        raise _Rejected(401, "invalid_client", "client authentication failed")

    def _match_basic(self, raw: tuple[str, str]) -> tuple[Variant, str]:
        decoded = (unquote_plus(raw[0]), unquote_plus(raw[1]))
        for part in (*raw, *decoded):
            if any(quote in part for quote in _QUOTES):
                raise _bad_request("client credentials contain a quote character")
        if "basic_raw" in self.variants and raw in self._accepted:
            return "basic_raw", raw[0]
        if "basic_form" in self.variants and decoded in self._accepted:
            return "basic_form", decoded[0]
        raise _Rejected(401, "invalid_client", "client authentication failed")

    def _mint(self, client_id: str, form: Mapping[str, str]) -> str:
        now = int(time.time())
        lifetime = self.expires_in if isinstance(self.expires_in, int) else 3600
        claims: dict[str, object] = {
            "iss": ISSUER,
            "aud": form.get("audience") or form.get("resource") or self.audience,
            "iat": now,
            "exp": now + lifetime,
            "client_id": client_id,
            "jti": secrets.token_hex(16),
        }
        if "scope" in form:
            claims["scope"] = form["scope"]
        token = jwt.encode(claims, self.signing_key, algorithm="HS256")
        with self._lock:
            self.issued_tokens.append(token)
        return token


def _decode_basic(authorization: str) -> tuple[str, str]:
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise _bad_request("only HTTP Basic client authentication is supported in the Authorization header")
    try:
        text = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise _bad_request("the Basic credentials are not valid base64 of UTF-8 text") from exc
    client_id, colon, client_secret = text.partition(":")
    if not colon:
        raise _bad_request("the Basic credentials have no ':' separator")
    return client_id, client_secret


def _lenient_form(body: bytes) -> dict[str, str]:
    """Best-effort parse for the record, whatever the request looked like."""
    try:
        return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
    except ValueError:
        return {}


def _error_response(rejected: _Rejected) -> Response:
    headers = {"Cache-Control": "no-store"}
    if rejected.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="standin"'
    return JSONResponse(
        {"error": rejected.error, "error_description": rejected.description},
        status_code=rejected.status,
        headers=headers,
    )


__all__ = ["ALL_VARIANTS", "OMIT", "TOKEN_PATH", "RecordedRequest", "Reply", "TokenServer", "Variant"]
