"""The HTTP surface: one ASGI app, hosted by Azure Functions and by uvicorn alike.

Every route has one shape (:class:`Route` in :data:`ROUTES`, run by :meth:`BrokerApp.handle`):
oversized headers (431) → caller token (401) → the kinds of caller the route accepts
(:class:`~broker.caller_auth.Accepts`: 401/403) → method (405) → the route's handler, whose
order is parameters (400) → provider (404) → authorization (403) → the work (200, or
502/503/504). A path no route claims is authenticated first and then 404, so an
unauthenticated caller learns nothing. ``/api/health`` is anonymous and touches nothing
upstream. Errors become responses in one place (:func:`error_response`), every response
leaves through :func:`deliver` (``X-Request-Id``, ``Cache-Control: no-store``, no HEAD body),
and every authenticated request writes one access line (:class:`Access`) after it is sent.
A new route is a handler plus a :class:`Route` entry, nothing more.

No framework routing: the app answers every method and path itself (TRACE, ``*``), so
no reply is ever a framework's plain-text page. The ASGI lifespan is acknowledged and
otherwise ignored: the broker belongs to the process, and its owner closes it (see
:mod:`broker.startup`). The Functions worker may start the lifespan more than once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from broker.cache import Served
from broker.caller_auth import ANY_CALLER, APPLICATIONS_ONLY, LOCAL_DEVELOPER, Accepts, Caller
from broker.config import PROVIDER_NAME
from broker.diagnostics import Diagnostics
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
_HERE = __file__

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
_DIAGNOSTICS_PATH = re.compile(r"^/api/diagnostics(?:/([^/]*))?/?$")
# The diagnostics verdict for a HEAD (or a monitor that reads no body): ok or failed.
DIAGNOSTICS_HEADER = "X-Broker-Diagnostics"
# Who may run diagnostics: a user (delegated token) with the Diagnostics.Run scope, or an application;
# either way holding the app role Broker.Operator (the Entra hook declares both).
OPERATORS = Accepts(applications=True, users=True, scope="Diagnostics.Run", role="Broker.Operator")
PROXY_PREFIX = "/api/proxy/"
# On every error the broker makes itself on the proxy route, so a caller can tell it from the API's own.
BROKER_ERROR_HEADER = "X-Broker-Error"
# A proxied body up to this size is read whole before the answer starts (then sent with Content-Length).
WHOLE_BODY_BYTES = 256 * 1024
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


def token_origin(served: Served) -> str:
    """The access line's ``origin``: this instance's cache, the fleet cache, or this instance's token request."""
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
        if key.lower() == "code":
            continue  # the Functions key, in any case, as the Functions host reads it
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


async def deliver(response: Response, request: Request, ids: RequestIds, send: Send) -> None:
    """Send ``response`` with what every response gets: X-Request-Id, no-store, and no body on HEAD."""
    response.headers.setdefault(REQUEST_ID_HEADER, ids.echo)
    for key, value in NO_STORE.items():
        response.headers.setdefault(key, value)
    head = request.method == "HEAD"

    async def send_without_head_body(message: Message) -> None:
        if head and message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    await response(request.scope, request.receive, send_without_head_body)


class _Surface:
    """What every response gets, whichever route or failure made it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await acknowledge_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: not served; the server closes the connection
        await self.handle(Request(scope, receive), RequestIds.of(scope), send)

    async def handle(self, request: Request, ids: RequestIds, send: Send) -> None:
        raise NotImplementedError


class MisconfiguredApp(_Surface):
    """Served instead of the broker when the configuration is invalid: every request, /api/health
    included, answers 503 ``broker_misconfigured`` naming the setting, so probes and callers see it."""

    def __init__(self, error: ConfigError) -> None:
        self.error = BrokerMisconfigured(error)

    async def handle(self, request: Request, ids: RequestIds, send: Send) -> None:
        log.info("request id=%s broker_id=%s outcome=%s", ids.echo, ids.own, self.error.code)
        await deliver(error_response(self.error, ids.echo), request, ids, send)


# --- one shape for every route ---------------------------------------------------------------------

Handler = Callable[[Broker, Request, "Access"], Awaitable[Response]]
Observer = Callable[[Broker, "Access", BrokerError | None], None]


@dataclass(frozen=True, kw_only=True)
class Route:
    """One route: where it is, what it takes, and what its access line says.

    The shape (:meth:`BrokerApp.handle`) does the rest for every route alike: 431 for oversized
    headers, authentication (401) and ``accepts`` (401/403), the method (405), error translation,
    the access line and ``observe`` (telemetry), in that order. ``accepts=None`` is an anonymous
    route with no access line (health).
    """

    kind: str  # the access line's first word
    path: re.Pattern[str]
    methods: tuple[str, ...]  # empty: any method
    handler: Handler
    accepts: Accepts | None = APPLICATIONS_ONLY
    # The route's own access-line fields, in order, with the value written when the handler set none.
    # ``outcome``, ``status`` and ``method`` are filled in by the shape.
    line: tuple[tuple[str, str], ...] = (("outcome", "-"),)
    # Errors the broker makes itself carry X-Broker-Error, to tell them from an upstream's own.
    marks_errors: bool = False
    observe: Observer | None = None

    def allowed(self) -> str:
        return ", ".join(self.methods)

    def template(self) -> str:
        """The access line's %-format: the common fields, the route's own, then the latency."""
        return _template(self.line)


@functools.cache
def _template(line: tuple[tuple[str, str], ...]) -> str:
    own = "".join(f"{name}=%s " for name, _ in line)
    return f"%s id=%s broker_id=%s provider=%s caller_oid=%s caller_appid=%s {own}latency_ms=%.1f"


@dataclass
class Access:
    """One request's access line (logger ``broker.access``), written once after the answer is sent.

    The shape fills in the caller, status and outcome; the handler sets ``provider`` and its own
    fields (``access.fields["path"] = ...``).
    """

    route: Route
    ids: RequestIds
    method: str
    started: float = field(default_factory=time.perf_counter)
    caller: Caller | None = None
    provider: str = "-"
    status: int = 500
    outcome: str = "error"
    fields: dict[str, object] = field(default_factory=dict)

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def write(self) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        own = {"outcome": self.outcome, "status": self.status, "method": self.method}
        values = [self.fields.get(name, own.get(name, default)) for name, default in self.route.line]
        args = (
            self.route.kind,
            self.ids.echo,
            self.ids.own,
            self.provider,
            self.caller.oid if self.caller else "-",
            self.caller.app_id if self.caller else "-",
            *values,
            self.elapsed_s() * 1000,
        )
        # The record as log.info() makes it, minus the caller's frame lookup (findCaller): every request
        # writes this line, and where it was written is always here. Formatting stays lazy (%-args).
        log.handle(log.makeRecord(log.name, logging.INFO, _HERE, 0, self.route.template(), args, None, "write"))


class BrokerApp(_Surface):
    """The broker's ASGI application: the first route in :data:`ROUTES` whose path matches answers."""

    def __init__(self, broker: Broker, routes: Sequence[Route] | None = None) -> None:
        self.broker = broker
        self.routes = tuple(routes if routes is not None else ROUTES)

    def route(self, path: str) -> Route:
        for route in self.routes:
            if route.path.match(path):
                return route
        return NOT_FOUND

    async def handle(self, request: Request, ids: RequestIds, send: Send) -> None:
        route = self.route(request.scope["path"])
        if route.accepts is None:
            response = await self._anonymous(route, request)
            await deliver(response, request, ids, send)
            return
        access = Access(route, ids, request.method)
        error: BrokerError | None = None
        try:
            try:
                response = await self._answer(route, request, access)
                access.status = response.status_code
            except BrokerError as exc:
                error = exc
                response = self._error_response(route, access, exc)
            except Exception:  # noqa: BLE001 - the boundary: no stack trace may reach a caller
                access.outcome = "internal_error"
                access.status = 500
                errors_log.exception("%s %s broker_id=%s failed unexpectedly", route.kind, ids.echo, ids.own)
                response = _internal_error(ids.own)
                if route.marks_errors:
                    response.headers[BROKER_ERROR_HEADER] = "internal_error"
            await deliver(response, request, ids, send)
        finally:
            if route.observe is not None:
                route.observe(self.broker, access, error)
            access.write()

    async def _anonymous(self, route: Route, request: Request) -> Response:
        if request.method not in route.methods:
            return _method_not_allowed(route.allowed())
        return await route.handler(self.broker, request, Access(route, RequestIds("-", "-"), request.method))

    async def _answer(self, route: Route, request: Request, access: Access) -> Response:
        """431 → 401 → the route's callers (401/403) → 405 → the handler."""
        if sum(len(k) + len(v) for k, v in request.headers.raw) > MAX_HEADER_BYTES:
            raise HeadersTooLarge("The request headers are over 16 KiB.")
        try:
            access.caller = await self.broker.authenticate(request.headers.get("authorization"))
            if route.accepts is not None and not self.broker.settings.caller_auth_disabled:
                route.accepts.admit(access.caller)
        except InvalidCallerToken as error:
            self.broker.telemetry.caller_rejected(error.reason)
            raise
        if route.methods and request.method not in route.methods:
            access.outcome = "method_not_allowed"
            response = _method_not_allowed(route.allowed())
            if route.marks_errors:
                response.headers[BROKER_ERROR_HEADER] = "method_not_allowed"
            return response
        return await route.handler(self.broker, request, access)

    def _error_response(self, route: Route, access: Access, error: BrokerError) -> Response:
        access.status = error.status
        access.outcome = error.code
        if error.status >= 500:
            errors_log.error(
                "%s %s broker_id=%s: %s %s", route.kind, access.ids.echo, access.ids.own, error.code, error.description
            )
        response = error_response(error, access.ids.echo)
        if route.marks_errors:
            response.headers[BROKER_ERROR_HEADER] = error.code
        return response


# --- the routes ------------------------------------------------------------------------------------


async def health(broker: Broker, request: Request, access: Access) -> Response:
    """``/api/health``: anonymous, touches nothing upstream."""
    return JSONResponse({"status": "ok"})


async def token(broker: Broker, request: Request, access: Access) -> Response:
    """``/api/token/{provider}``: 400 parameters → 400 name → 404 provider → 403 → the token."""
    min_validity, force = _query(request)
    match = _TOKEN_PATH.fullmatch(request.scope["path"])
    name = match.group(1) if match else ""
    if not PROVIDER_NAME.fullmatch(name):
        raise InvalidRequest("A provider name is 1 to 32 characters of a-z, 0-9 and '-'.")
    access.provider = name
    served = await broker.token(access.caller or LOCAL_DEVELOPER, name, min_validity=min_validity, force=force)
    now = broker.clock()
    access.outcome = served.outcome
    access.fields["origin"] = token_origin(served)
    access.fields["token"] = served.token.access_token.fingerprint()
    broker.telemetry.token_served(name, served, now)
    response: Response = JSONResponse(token_body(served.token, now))
    if served.stale_reason is not None:
        response.headers[STALE_HEADER] = served.stale_reason.code
    if served.force_refused_retry_after is not None:
        response.headers[FORCE_HEADER] = f"refused; retry-after={served.force_refused_retry_after}"
    return response


def _token_failed(broker: Broker, access: Access, error: BrokerError | None) -> None:
    if error is not None and access.provider != "-":
        broker.telemetry.token_failed(access.provider, error)


async def proxy(broker: Broker, request: Request, access: Access) -> Response:
    """``/api/proxy/{provider}/{path}``: 404 → 403 → mode → 400 path → 413 body → upstream."""
    # The raw path keeps the caller's percent-encoding (under uvicorn; the Functions host decodes it).
    raw = request.scope.get("raw_path") or request.scope["path"].encode("utf-8")
    parts = raw.split(b"/", 4)  # b"", b"api", b"proxy", name, path
    name = parts[3].decode("latin-1") if len(parts) > 3 else ""
    if not PROVIDER_NAME.fullmatch(name):
        raise NotFound(
            "This broker has no such provider. Check the provider name in the URL (/api/proxy/<provider>/<path>).",
            code="unknown_provider",
        )
    upstream = broker.proxy(access.caller or LOCAL_DEVELOPER, name)
    access.provider = name
    target = safe_path(parts[4] if len(parts) > 4 else b"")
    access.fields["path"] = "/" + target
    body = b"" if request.method in ("GET", "HEAD") else await _proxied_body(request)
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
            request_id=access.ids.echo,
            root=root,
            caller=(access.caller or LOCAL_DEVELOPER).oid or "-",
        )
    )
    access.fields.update(upstream_ms=f"{forwarded.upstream_latency_s * 1000:.1f}", token=forwarded.token_fingerprint)
    try:
        # A small body is read whole first: it goes out with a Content-Length, in one piece, and a
        # failure while reading it is still an error response rather than an aborted one.
        head: list[bytes] = []
        size = 0
        async for chunk in forwarded.body:
            head.append(chunk)
            size += len(chunk)
            if size > WHOLE_BODY_BYTES:
                return _Proxied(forwarded, access, head, complete=False)
    except BaseException:
        await forwarded.aclose()
        raise
    return _Proxied(forwarded, access, head, complete=True)


def _proxied(broker: Broker, access: Access, error: BrokerError | None) -> None:
    broker.telemetry.proxied(access.provider, access.status, access.elapsed_s())


async def diagnostics(broker: Broker, request: Request, access: Access) -> Response:
    """``/api/diagnostics[/{provider}]``: 404 provider → check's steps inside the app (:mod:`broker.diagnostics`).

    200 whatever the verdict: the report is the answer. At most one run per provider per minute reaches
    Key Vault and the token endpoint; in between, the last report with its age.
    """
    match = _DIAGNOSTICS_PATH.fullmatch(request.scope["path"])
    name = match.group(1) if match else None
    runner = Diagnostics.of(broker)
    body: dict[str, Any]
    if name:
        if name not in broker.providers:
            # The caller holds Broker.Operator: it may learn which providers there are (check --remote names them).
            access.outcome = "unknown_provider"
            error = NotFound(f"This broker has no provider {name[:32]!r}; it serves {', '.join(broker.providers)}.")
            return JSONResponse(
                {"error": "unknown_provider", "error_description": error.description, "providers": runner.providers},
                status_code=404,
            )
        access.provider = name
        report = await runner.report(name)
        body, ok = report.as_dict(), report.ok
        access.fields["age_s"] = f"{report.age_s or 0:.0f}"
    else:
        body = await runner.summary()
        ok = body["ok"] is True
    access.outcome = "ok" if ok else "failed"
    response = JSONResponse(body)
    response.headers[DIAGNOSTICS_HEADER] = access.outcome
    return response


async def not_found(broker: Broker, request: Request, access: Access) -> Response:
    """Any other path, once the caller is authenticated: a 404 that says where tokens are."""
    raise NotFound("No such endpoint; tokens are at /api/token/<provider>.")


HEALTH = Route(kind="health", path=re.compile(r"^/api/health$"), methods=("GET", "HEAD"), handler=health, accepts=None)
TOKEN = Route(
    kind="request",
    path=_TOKEN_PATH,
    methods=("GET", "POST"),
    handler=token,
    # origin: where the token came from (instance, fleet, fetch; "-" for none), see token_origin.
    line=(("outcome", "-"), ("origin", "-"), ("token", "-")),
    observe=_token_failed,
)
PROXY = Route(
    kind="proxy",
    path=re.compile("^" + re.escape(PROXY_PREFIX)),
    methods=("GET", "HEAD", "POST"),
    handler=proxy,
    line=(
        ("method", "-"),
        ("path", "-"),
        ("status", "500"),
        ("bytes", "0"),
        ("upstream_ms", "0.0"),
        ("token", "-"),
        ("body", "-"),
    ),
    marks_errors=True,
    observe=_proxied,
)
# Anything else: authenticated first (so an unauthenticated caller learns nothing), then 404.
NOT_FOUND = Route(
    kind="request",
    path=re.compile(""),
    methods=(),
    handler=not_found,
    accepts=ANY_CALLER,
    line=(("outcome", "-"), ("origin", "-"), ("token", "-")),
)
DIAGNOSTICS = Route(
    kind="diagnostics",
    path=_DIAGNOSTICS_PATH,
    methods=("GET", "HEAD"),
    handler=diagnostics,
    accepts=OPERATORS,
    line=(("outcome", "-"), ("age_s", "-")),
)
ROUTES: tuple[Route, ...] = (HEALTH, TOKEN, PROXY, DIAGNOSTICS)


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


async def _wait_for_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


class ResponseAborted(Exception):
    """A proxied answer failed after its status was sent: the host aborts it (serve closes the
    connection; the Functions worker fails the invocation), so the caller never takes it as whole."""


class _Proxied(Response):
    """The upstream's status, allowed headers (raw bytes) and body, sent chunk by chunk as it arrives."""

    def __init__(self, forwarded: Forwarded, access: Access, head: list[bytes], *, complete: bool) -> None:
        self.status_code = forwarded.status
        self.raw_headers = list(forwarded.headers)
        self.background = None
        self._forwarded = forwarded
        self._access = access
        self._head = head
        self._complete = complete
        if complete:
            self.raw_headers.append((b"content-length", str(sum(len(c) for c in head)).encode()))
        access.fields["body"] = "complete"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        forwarded, access = self._forwarded, self._access
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if self._complete:
                body, self._head = b"".join(self._head), []
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            # A caller that goes away frees its slot at once: uvicorn's send() then returns silently,
            # so without this the rest of the upstream body would be read for nobody.
            gone = asyncio.Event()
            watcher = asyncio.create_task(_wait_for_disconnect(receive, gone))
            try:
                for chunk in self._head:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._head = []
                async for chunk in forwarded.body:
                    if gone.is_set():
                        access.fields["body"] = "abandoned"
                        return
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except BrokerError as error:
                access.fields["body"] = "truncated"
                access.outcome = error.code
                errors_log.error(
                    "proxy %s broker_id=%s: the answer was cut short after its status was sent (%s: %s); "
                    "the response is aborted",
                    access.ids.echo,
                    access.ids.own,
                    error.code,
                    error.description,
                )
                raise ResponseAborted(f"proxied answer aborted mid-body: {error.code}") from None
            finally:
                watcher.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            access.fields["bytes"] = forwarded.sent
            await forwarded.aclose()


def create_app(broker: Broker) -> BrokerApp:
    """The broker's ASGI application (no lifespan work: the caller owns ``broker`` and closes it)."""
    return BrokerApp(broker)
