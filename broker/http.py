"""The request's shape: one ASGI app, hosted by Azure Functions and by uvicorn alike.

Every route has one shape (a :class:`Route`, run by :meth:`BrokerApp.handle`):
oversized headers (431) → caller token (401) → the kinds of caller the route accepts
(:class:`~broker.caller_auth.Accepts`: 401/403) → method (405) → the route's handler, whose
order is parameters (400) → provider (404) → authorization (403) → the work (200, or
502/503/504). A path no route claims goes to the fallback route, authenticated first and then
404, so an unauthenticated caller learns nothing. A route without ``accepts`` (``/api/health``)
is anonymous. Errors become responses in one place (:func:`error_response`), every response
leaves through :func:`deliver` (``X-Request-Id``, ``Cache-Control: no-store``, no HEAD body),
and every authenticated request writes one access line (:class:`Access`) after it is sent, but for the
outcomes its route counts on a metric instead (``Route.unlogged``: a cached token, ``hit``).

The routes themselves live in :mod:`broker.routes`, each in its own module; their table is
handed to :class:`BrokerApp` (:func:`broker.app.create_app`), never imported here. A handler
receives its path match, and raises a :class:`~broker.errors.BrokerError` for every failure.

No framework routing: the app answers every method and path itself (TRACE, ``*``), so
no reply is ever a framework's plain-text page. The ASGI lifespan is acknowledged and
otherwise ignored: the broker belongs to the process, and its owner closes it (see
:mod:`broker.startup`). The Functions worker may start the lifespan more than once.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from broker.caller_auth import APPLICATIONS_ONLY, Accepts, Caller
from broker.errors import (
    BrokerError,
    BrokerMisconfigured,
    ConfigError,
    HeadersTooLarge,
    InsufficientScope,
    InternalError,
    InvalidCallerToken,
    MethodNotAllowed,
    UnknownProvider,
)
from broker.runtime import Broker

log = logging.getLogger("broker.access")
errors_log = logging.getLogger("broker.errors")
_HERE = __file__

MAX_HEADER_BYTES = 16 * 1024
REQUEST_ID_HEADER = "X-Request-Id"
REALM = "ilevel-token-broker"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# On every error the broker makes itself on the proxy route, so a caller can tell it from the API's own.
BROKER_ERROR_HEADER = "X-Broker-Error"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9-]{8,64}$")


def error_response(error: BrokerError, request_id: str) -> JSONResponse:
    """The one place an error becomes a response: its status, code, description and the headers it implies."""
    headers = dict(NO_STORE)
    headers[REQUEST_ID_HEADER] = request_id
    body: dict[str, object] = {"error": error.code, "error_description": error.description}
    if isinstance(error, InvalidCallerToken):
        headers["WWW-Authenticate"] = f'Bearer realm="{REALM}", error="invalid_token"'
    elif isinstance(error, InsufficientScope):
        headers["WWW-Authenticate"] = f'Bearer realm="{REALM}", error="insufficient_scope"'
    elif isinstance(error, MethodNotAllowed):
        headers["Allow"] = ", ".join(error.allowed)
    elif isinstance(error, UnknownProvider):
        body["providers"] = list(error.providers)
    if error.retry_after is not None and error.status in (429, 503, 504):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return JSONResponse(body, status_code=error.status, headers=headers)


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

# A handler gets the broker, the request, its access line and its route's path match; it raises on failure.
Handler = Callable[[Broker, Request, "Access", re.Match[str]], Awaitable[Response]]
Observer = Callable[[Broker, "Access", BrokerError | None], None]


@dataclass(frozen=True, kw_only=True)
class Route:
    """One route: where it is, what it takes, and what its access line says.

    The shape (:meth:`BrokerApp.handle`) does the rest for every route alike: 431 for oversized
    headers, authentication (401) and ``accepts`` (401/403), the method (405), error translation,
    the access line and ``observe`` (telemetry), in that order. ``accepts=None`` is an anonymous
    route with no access line (health). An outcome in ``unlogged`` writes no access line: ``observe``
    counts it on a metric (exporting a log record costs more than answering a cached token, issue 24).
    """

    kind: str  # the access line's first word
    path: re.Pattern[str]  # matched from the start; the match goes to the handler
    methods: tuple[str, ...]  # empty: any method
    handler: Handler
    accepts: Accepts | None = APPLICATIONS_ONLY
    # The route's own access-line fields, in order, with the value written when the handler set none.
    # ``outcome``, ``status`` and ``method`` are filled in by the shape.
    line: tuple[tuple[str, str], ...] = (("outcome", "-"),)
    # Errors the broker makes itself carry X-Broker-Error, to tell them from an upstream's own.
    marks_errors: bool = False
    observe: Observer | None = None
    # Outcomes that write no access line, only a metric (``observe``): the token route's ``hit``.
    unlogged: frozenset[str] = frozenset()
    # Match ``path`` against the raw path (the caller's percent-encoding kept, read as latin-1) instead
    # of the decoded one: for a route that passes the path on (proxy). The Functions host decodes both.
    raw_path: bool = False

    def match(self, scope: Scope) -> re.Match[str] | None:
        if self.raw_path:
            return self.path.match((scope.get("raw_path") or scope["path"].encode("utf-8")).decode("latin-1"))
        return self.path.match(scope["path"])

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

    def caller_ids(self) -> tuple[str, str]:
        """The caller's oid and appid as the line writes them (``-`` before authentication)."""
        return (str(self.caller.oid), str(self.caller.app_id)) if self.caller else ("-", "-")

    def write(self) -> None:
        if self.outcome in self.route.unlogged or not log.isEnabledFor(logging.INFO):
            return
        own = {"outcome": self.outcome, "status": self.status, "method": self.method}
        values = [self.fields.get(name, own.get(name, default)) for name, default in self.route.line]
        args = (
            self.route.kind,
            self.ids.echo,
            self.ids.own,
            self.provider,
            *self.caller_ids(),
            *values,
            self.elapsed_s() * 1000,
        )
        # The record as log.info() makes it, minus the caller's frame lookup (findCaller): every request
        # writes this line, and where it was written is always here. Formatting stays lazy (%-args).
        log.handle(log.makeRecord(log.name, logging.INFO, _HERE, 0, self.route.template(), args, None, "write"))


class BrokerApp(_Surface):
    """The broker's ASGI application: the first of ``routes`` whose path matches answers, else ``fallback``
    (whose path must match any path)."""

    def __init__(self, broker: Broker, routes: Sequence[Route], *, fallback: Route) -> None:
        self.broker = broker
        self.routes = (*routes, fallback)

    def route(self, scope: Scope) -> tuple[Route, re.Match[str]]:
        for route in self.routes:
            match = route.match(scope)
            if match is not None:
                return route, match
        raise LookupError(f"the fallback route {self.routes[-1].kind!r} does not match every path")

    async def handle(self, request: Request, ids: RequestIds, send: Send) -> None:
        route, match = self.route(request.scope)
        if route.accepts is None:
            response = await self._anonymous(route, request, ids, match)
            await deliver(response, request, ids, send)
            return
        access = Access(route, ids, request.method)
        error: BrokerError | None = None
        try:
            try:
                response = await self._answer(route, request, access, match)
                access.status = response.status_code
            except BrokerError as exc:
                error = exc
                response = self._error_response(route, access, exc)
            except Exception:  # noqa: BLE001 - the boundary: no stack trace may reach a caller
                errors_log.exception("%s %s broker_id=%s failed unexpectedly", route.kind, ids.echo, ids.own)
                response = self._error_response(route, access, InternalError(ids.own), logged=True)
            await deliver(response, request, ids, send)
        finally:
            if route.observe is not None:
                route.observe(self.broker, access, error)
            access.write()

    async def _anonymous(self, route: Route, request: Request, ids: RequestIds, match: re.Match[str]) -> Response:
        if request.method not in route.methods:
            return error_response(MethodNotAllowed(route.methods), ids.echo)
        return await route.handler(self.broker, request, Access(route, RequestIds("-", "-"), request.method), match)

    async def _answer(self, route: Route, request: Request, access: Access, match: re.Match[str]) -> Response:
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
            raise MethodNotAllowed(route.methods)
        return await route.handler(self.broker, request, access, match)

    def _error_response(self, route: Route, access: Access, error: BrokerError, *, logged: bool = False) -> Response:
        access.status = error.status
        access.outcome = error.code
        if error.status >= 500 and not logged:
            errors_log.error(
                "%s %s broker_id=%s: %s %s", route.kind, access.ids.echo, access.ids.own, error.code, error.description
            )
        response = error_response(error, access.ids.echo)
        if route.marks_errors:
            response.headers[BROKER_ERROR_HEADER] = error.code
        return response
