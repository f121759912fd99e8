"""``/api/proxy/{provider}/{path}``: an iLevel call passed through, and its answer streamed back.

The proxying itself (path safety, headers, links, slots, the upstream call) is :mod:`broker.proxy`,
which knows nothing of HTTP hosts; this room turns the caller's request into a :class:`~broker.proxy.Call`
and the :class:`~broker.proxy.Forwarded` answer into an ASGI response, chunk by chunk.
"""

from __future__ import annotations

import asyncio
import logging
import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from broker.caller_auth import LOCAL_DEVELOPER
from broker.config import PROVIDER_NAME
from broker.errors import BrokerError, InvalidRequest, NotFound, PayloadTooLarge
from broker.http import Access, Route
from broker.proxy import MAX_REQUEST_BODY_BYTES, Call, Forwarded, public_root, safe_path
from broker.proxy.paths import forwarded_query
from broker.runtime import Broker

errors_log = logging.getLogger("broker.errors")

PROXY_PREFIX = "/api/proxy/"
# A proxied body up to this size is read whole before the answer starts (then sent with Content-Length).
WHOLE_BODY_BYTES = 256 * 1024


async def proxy(broker: Broker, request: Request, access: Access, match: re.Match[str]) -> Response:
    """``/api/proxy/{provider}/{path}``: 404 → 403 → mode → 400 path → 413 body → upstream."""
    # The match is on the raw path, which keeps the caller's percent-encoding (under uvicorn; the
    # Functions host decodes it).
    name = match.group("provider")
    if not PROVIDER_NAME.fullmatch(name):
        raise NotFound(
            "This broker has no such provider. Check the provider name in the URL (/api/proxy/<provider>/<path>).",
            code="unknown_provider",
        )
    upstream = broker.proxy(access.caller or LOCAL_DEVELOPER, name)
    access.provider = name
    target = safe_path((match.group("path") or "").encode("latin-1"))
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


PROXY = Route(
    kind="proxy",
    # On the raw path: the provider and the path as the caller encoded them (the path goes on as it came).
    path=re.compile("^" + re.escape(PROXY_PREFIX) + r"(?P<provider>[^/]*)(?:/(?P<path>.*))?", re.DOTALL),
    raw_path=True,
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
