"""The HTTP surface: one ASGI app, hosted by Azure Functions and by uvicorn alike.

Order of checks, so an unauthenticated caller learns nothing: oversized headers (431)
→ caller token (401) → route and method (404/405) → parameters (400) → provider
(404) → authorization (403) → token (200, or 502/503/504). ``/api/health`` is
anonymous and touches nothing upstream. The one place errors become responses is
:func:`error_response`, and every response leaves through :meth:`BrokerApp.__call__`,
which gives it ``X-Request-Id`` and ``Cache-Control: no-store`` and strips a HEAD body.

No framework routing: the app answers every method and path itself (TRACE, ``*``), so
no reply is ever a framework's plain-text page. The ASGI lifespan is acknowledged and
otherwise ignored: the broker belongs to the process, and its owner closes it (see
:mod:`broker.startup`). The Functions worker may start the lifespan more than once.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from broker.cache import Served
from broker.caller_auth import Caller
from broker.config import PROVIDER_NAME
from broker.errors import (
    BrokerError,
    BrokerMisconfigured,
    ConfigError,
    HeadersTooLarge,
    InsufficientScope,
    InvalidCallerToken,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
)
from broker.proxy import MAX_REQUEST_BODY_BYTES, Call, Forwarded, public_root, safe_path
from broker.proxy.paths import forwarded_query
from broker.runtime import Broker
from broker.tokens import Token

log = logging.getLogger("broker.access")
errors_log = logging.getLogger("broker.errors")

MAX_QUERY_BYTES = 4 * 1024
MAX_HEADER_BYTES = 16 * 1024
# ADF's Web activity max: min_validity is honoured up to an hour.
MAX_MIN_VALIDITY_S = 3600
DEFAULT_MIN_VALIDITY_S = 300
# "code" is the Functions key, should anyone switch key auth on.
QUERY_PARAMETERS = frozenset({"min_validity", "force_refresh", "code"})
STALE_HEADER = "X-Broker-Token-Stale"
# A force_refresh that was rate-limited still gets 200 and the cached token; this says so, and when.
FORCE_HEADER = "X-Broker-Force-Refresh"
REQUEST_ID_HEADER = "X-Request-Id"
REALM = "ilevel-token-broker"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_TOKEN_PATH = re.compile(r"^/api/token/([^/]*)/?$")
PROXY_PREFIX = "/api/proxy/"
PROXY_METHODS = "GET, HEAD, POST"
# On every error the broker makes itself on the proxy route, so a caller can tell it from the API's own.
BROKER_ERROR_HEADER = "X-Broker-Error"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9-]{8,64}$")


def token_body(token: Token, now: float) -> dict[str, Any]:
    """The 200 body: what ADF reads as ``@activity('…').output.<field>``."""
    return {
        "access_token": token.access_token.reveal(),
        "token_type": "Bearer",
        "expires_in": max(0, int(token.remaining(now))),
        "expires_on": int(token.expires_at),
    }


def token_origin(served: Served | None) -> str:
    """The access line's ``origin``: this instance's cache, the fleet cache, a token request, or no token."""
    if served is None:
        return "-"
    if served.outcome in ("hit", "stale"):
        return "instance"
    return served.token.origin


def error_response(error: BrokerError, request_id: str) -> JSONResponse:
    headers = dict(NO_STORE)
    headers[REQUEST_ID_HEADER] = request_id
    if isinstance(error, InvalidCallerToken):
        headers["WWW-Authenticate"] = f'Bearer realm="{REALM}", error="invalid_token"'
    elif isinstance(error, InsufficientScope):
        headers["WWW-Authenticate"] = f'Bearer realm="{REALM}", error="insufficient_scope"'
    if error.retry_after is not None and error.status in (429, 503, 504):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return JSONResponse(
        {"error": error.code, "error_description": error.description}, status_code=error.status, headers=headers
    )


def _method_not_allowed(allowed: str) -> JSONResponse:
    return JSONResponse(
        {"error": "method_not_allowed", "error_description": f"Use {allowed.replace(', ', ' or ')}."},
        status_code=405,
        headers={"Allow": allowed},
    )


def _internal_error(request_id: str) -> JSONResponse:
    return JSONResponse(
        {
            "error": "internal_error",
            "error_description": f"The broker failed unexpectedly; the operator finds request {request_id} in its log.",
        },
        status_code=500,
    )


def _query(request: Request) -> tuple[int, bool]:
    raw = request.scope.get("query_string", b"")
    if not raw:
        return DEFAULT_MIN_VALIDITY_S, False
    if len(raw) > MAX_QUERY_BYTES:
        raise InvalidRequest("The query string is over 4 KiB.")
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("The query string is malformed.") from None
    seen: dict[str, str] = {}
    for key, value in pairs:
        if key not in QUERY_PARAMETERS:
            named = repr(key) if _SAFE_NAME.fullmatch(key) else "a parameter"
            raise InvalidRequest(f"Unknown query parameter {named}; allowed: min_validity, force_refresh.")
        if key in seen:
            raise InvalidRequest(f"Query parameter {key!r} is given twice.")
        seen[key] = value
    min_validity = seen.get("min_validity", str(DEFAULT_MIN_VALIDITY_S))
    if not re.fullmatch(r"[0-9]{1,5}", min_validity) or int(min_validity) > MAX_MIN_VALIDITY_S:
        raise InvalidRequest("min_validity must be a whole number of seconds from 0 to 3600.")
    force = seen.get("force_refresh", "false").lower()
    if force not in ("true", "1", "false", "0"):
        raise InvalidRequest("force_refresh must be true, 1, false or 0.")
    return int(min_validity), force in ("true", "1")


@dataclass(frozen=True)
class RequestIds:
    """``echo`` goes back in X-Request-Id: the caller's own id if it sent a sane one, for correlation.
    ``own`` is always the broker's, logged beside it, so no caller can collide with another's log lines."""

    echo: str
    own: str

    @classmethod
    def of(cls, scope: Scope) -> RequestIds:
        own = secrets.token_hex(16)
        given = ""
        for key, value in scope["headers"]:
            if key.lower() == b"x-request-id":
                given = value.decode("latin-1")
                break
        return cls(given if _REQUEST_ID.fullmatch(given) else own, own)


async def acknowledge_lifespan(receive: Receive, send: Send) -> None:
    """Answer lifespan messages and do nothing else: no startup work, and above all no shutdown work."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class _Surface:
    """What every response gets, whichever route or failure made it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await acknowledge_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: not served; the server closes the connection
        ids = RequestIds.of(scope)
        response = await self.respond(Request(scope, receive), ids)
        response.headers.setdefault(REQUEST_ID_HEADER, ids.echo)
        for key, value in NO_STORE.items():
            response.headers.setdefault(key, value)
        head = scope["method"] == "HEAD"

        async def send_without_head_body(message: Message) -> None:
            if head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await response(scope, receive, send_without_head_body)

    async def respond(self, request: Request, ids: RequestIds) -> Response:
        raise NotImplementedError


class MisconfiguredApp(_Surface):
    """Served instead of the broker when the configuration is invalid: every request, /api/health
    included, answers 503 ``broker_misconfigured`` naming the setting, so probes and callers see it."""

    def __init__(self, error: ConfigError) -> None:
        self.error = BrokerMisconfigured(error)

    async def respond(self, request: Request, ids: RequestIds) -> Response:
        log.info("request id=%s broker_id=%s outcome=%s", ids.echo, ids.own, self.error.code)
        return error_response(self.error, ids.echo)


class BrokerApp(_Surface):
    """The broker's ASGI application."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def respond(self, request: Request, ids: RequestIds) -> Response:
        if request.scope["path"] == "/api/health":
            if request.method not in ("GET", "HEAD"):
                return _method_not_allowed("GET, HEAD")
            return JSONResponse({"status": "ok"})
        if request.scope["path"].startswith(PROXY_PREFIX):
            return await self.proxy(request, ids)
        return await self.dispatch(request, ids)

    async def _caller(self, request: Request) -> Caller:
        """431 for oversized headers, then 401 for the caller token: the first two checks of every route."""
        if sum(len(k) + len(v) for k, v in request.headers.raw) > MAX_HEADER_BYTES:
            raise HeadersTooLarge("The request headers are over 16 KiB.")
        try:
            return await self.broker.authenticate(request.headers.get("authorization"))
        except InvalidCallerToken as error:
            self.broker.telemetry.caller_rejected(error.reason)
            raise

    async def proxy(self, request: Request, ids: RequestIds) -> Response:
        """``/api/proxy/{provider}/{path}``: 431 → 401 → 405 → 404 → 403 → mode → 400 path → 413 body → upstream."""
        broker = self.broker
        started = time.perf_counter()
        caller: Caller | None = None
        provider = "-"
        path = "-"
        status = 500
        forwarded: Forwarded | None = None
        try:
            caller = await self._caller(request)
            if request.method not in PROXY_METHODS.split(", "):
                status = 405
                response = _method_not_allowed(PROXY_METHODS)
                response.headers[BROKER_ERROR_HEADER] = "method_not_allowed"
                return response
            # The raw path keeps the caller's percent-encoding (under uvicorn; the Functions host decodes it).
            raw = request.scope.get("raw_path") or request.scope["path"].encode("utf-8")
            parts = raw.split(b"/", 4)  # b"", b"api", b"proxy", name, path
            name = parts[3].decode("latin-1") if len(parts) > 3 else ""
            if not PROVIDER_NAME.fullmatch(name):
                raise NotFound(
                    "This broker has no such provider. Check the provider name in the URL "
                    "(/api/proxy/<provider>/<path>).",
                    code="unknown_provider",
                )
            upstream = broker.proxy(caller, name)
            provider = name
            target = safe_path(parts[4] if len(parts) > 4 else b"")
            path = "/" + target
            body = await _proxied_body(request)
            root = public_root(request.scope.get("scheme", "http"), _caller_host(request.scope), name)
            if root is None:
                raise InvalidRequest("The Host header is not a host name; the broker cannot build its links.")
            forwarded = await upstream.forward(
                Call(
                    method=request.method,
                    path=target,
                    query=forwarded_query(request.scope.get("query_string", b"")),
                    headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
                    body=body,
                    request_id=ids.echo,
                    root=root,
                )
            )
            status = forwarded.status
            return _forwarded_response(forwarded)
        except BrokerError as error:
            status = error.status
            if error.status >= 500:
                errors_log.error("proxy %s broker_id=%s: %s %s", ids.echo, ids.own, error.code, error.description)
            response = error_response(error, ids.echo)
            response.headers[BROKER_ERROR_HEADER] = error.code
            return response
        except Exception:  # noqa: BLE001 - the boundary: no stack trace may reach a caller
            errors_log.exception("proxy %s broker_id=%s failed unexpectedly", ids.echo, ids.own)
            response = _internal_error(ids.own)
            response.headers[BROKER_ERROR_HEADER] = "internal_error"
            return response
        finally:
            elapsed = time.perf_counter() - started
            broker.telemetry.proxied(provider, status, elapsed)
            log.info(
                "proxy id=%s broker_id=%s provider=%s caller_oid=%s caller_appid=%s method=%s path=%s status=%d "
                "bytes=%d upstream_ms=%.1f token=%s latency_ms=%.1f",
                ids.echo,
                ids.own,
                provider,
                caller.oid if caller else "-",
                caller.app_id if caller else "-",
                request.method,
                path,
                status,
                forwarded.size if forwarded else 0,
                forwarded.upstream_latency_s * 1000 if forwarded else 0.0,
                forwarded.token_fingerprint if forwarded else "-",
                elapsed * 1000,
            )

    async def dispatch(self, request: Request, ids: RequestIds) -> Response:
        broker = self.broker
        request_id = ids.echo
        started = time.perf_counter()
        caller: Caller | None = None
        provider = "-"
        outcome = "error"
        served: Served | None = None
        try:
            caller = await self._caller(request)
            match = _TOKEN_PATH.fullmatch(request.scope["path"])
            if match is None:
                raise NotFound("No such endpoint; tokens are at /api/token/<provider>.")
            if request.method not in ("GET", "POST"):
                outcome = "method_not_allowed"
                return _method_not_allowed("GET, POST")
            min_validity, force = _query(request)
            name = match.group(1)
            if not PROVIDER_NAME.fullmatch(name):
                raise InvalidRequest("A provider name is 1 to 32 characters of a-z, 0-9 and '-'.")
            provider = name
            served = await broker.token(caller, name, min_validity=min_validity, force=force)
            now = broker.clock()
            outcome = served.outcome
            broker.telemetry.token_served(name, served, now)
            response: Response = JSONResponse(token_body(served.token, now))
            if served.stale_reason is not None:
                response.headers[STALE_HEADER] = served.stale_reason.code
            if served.force_refused_retry_after is not None:
                response.headers[FORCE_HEADER] = f"refused; retry-after={served.force_refused_retry_after}"
            return response
        except BrokerError as error:
            outcome = error.code
            if provider != "-":
                broker.telemetry.token_failed(provider, error)
            if error.status >= 500:
                errors_log.error("request %s broker_id=%s: %s %s", request_id, ids.own, error.code, error.description)
            return error_response(error, request_id)
        except Exception:  # noqa: BLE001 - the boundary: no stack trace may reach a caller
            outcome = "internal_error"
            errors_log.exception("request %s broker_id=%s failed unexpectedly", request_id, ids.own)
            return _internal_error(ids.own)
        finally:
            log.info(
                "request id=%s broker_id=%s provider=%s caller_oid=%s caller_appid=%s outcome=%s origin=%s token=%s "
                "latency_ms=%.1f",
                request_id,
                ids.own,
                provider,
                caller.oid if caller else "-",
                caller.app_id if caller else "-",
                outcome,
                token_origin(served),
                served.token.access_token.fingerprint() if served else "-",
                (time.perf_counter() - started) * 1000,
            )


def _caller_host(scope: Scope) -> str:
    """The host the caller used: its Host header, else the scope's server (under Functions, the request URL's)."""
    for key, value in scope["headers"]:
        if key.lower() == b"host":
            return str(value.decode("latin-1"))
    server = scope.get("server")
    if not server:
        return ""
    name, port = server
    # The Functions bridge reports port 80 for a URL without one, https included: omit the defaults.
    return str(name) if port in (80, 443, None) else f"{name}:{port}"


async def _proxied_body(request: Request) -> bytes:
    """The request body, up to 1 MiB: 413 past that, by Content-Length or as it streams in."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_REQUEST_BODY_BYTES:
        raise PayloadTooLarge("The request body is over 1 MiB, the most the proxy forwards; send a smaller one.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REQUEST_BODY_BYTES:
            raise PayloadTooLarge("The request body is over 1 MiB, the most the proxy forwards; send a smaller one.")
        chunks.append(chunk)
    return b"".join(chunks)


def _forwarded_response(forwarded: Forwarded) -> Response:
    """The upstream's status, allowed headers and body; several chunks are sent as they are, not joined."""
    response: Response
    if len(forwarded.chunks) > 1:

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in forwarded.chunks:
                yield chunk

        response = StreamingResponse(chunks(), status_code=forwarded.status)
        response.raw_headers.append((b"content-length", str(forwarded.size).encode()))
    else:
        response = Response(forwarded.chunks[0] if forwarded.chunks else b"", status_code=forwarded.status)
    response.raw_headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in forwarded.headers)
    return response


def create_app(broker: Broker) -> BrokerApp:
    """The broker's ASGI application (no lifespan work: the caller owns ``broker`` and closes it)."""
    return BrokerApp(broker)
