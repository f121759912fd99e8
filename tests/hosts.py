"""The two hosts a contract test runs on: one HTTP contract, whichever host serves it.

- ``serve``: the ASGI app under uvicorn with ``python -m broker serve``'s own configuration
  (:func:`broker.serving.server_config`, :class:`broker.serving.BrokerServer`), over real HTTP
  on a loopback socket bound to port 0 (no free-port race), in the test's event loop.
- ``functions``: the Azure Functions entry point driven as the Python worker drives it: a fresh
  import of ``function_app``, ``app.get_functions()``, then ``azure.functions.HttpRequest``
  invocations of the indexed ``http_app_func``, all on the test's (default asyncio) loop.

Both come as an ``httpx.AsyncClient``, so assertions never know which host answered. A test that
needs a broker with injected parts (a movable clock, a fast retry policy, a counting HTTP client)
passes it in: ``serve`` runs that broker; ``functions`` imports function_app fresh (which builds
its own broker from the environment, as in Azure) and then installs the test's broker on the
module's process (:meth:`broker.startup.Process.install`). With no broker given, both build
one from the environment exactly as in production: that is what the cold-start tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

import azure.functions as func
import httpx

from broker.app import create_app
from broker.config import load_settings
from broker.runtime import Broker
from broker.serving import BrokerServer, ServerLimits, server_config
from broker.startup import QUIET_LOGGERS

HOSTS = ("serve", "functions")
FUNCTIONS_BASE_URL = "https://func-broker.azurewebsites.net"


class FunctionsTransport(httpx.AsyncBaseTransport):
    """httpx request → ``func.HttpRequest`` → the indexed HTTP function → ``func.HttpResponse`` → httpx response."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.invocations = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers: dict[str, str] = {}
        for key, value in request.headers.multi_items():
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        query = request.url.query.decode("ascii")
        invocation = func.HttpRequest(
            method=request.method,
            url=str(request.url),
            headers=headers,
            params=dict(parse_qsl(query, keep_blank_values=True)),
            body=body,
        )
        self.invocations += 1
        response = await self.handler(invocation, None)
        return httpx.Response(
            status_code=response.status_code,
            # The worker sends header values as (UTF-8) strings; httpx would encode them as ASCII.
            headers=[(k, v.encode("utf-8")) for k, v in response.headers.items()],
            content=response.get_body(),
            request=request,
        )


def index(module: ModuleType) -> dict[str, Any]:
    """``app.get_functions()`` as the worker calls it (once per app), by function name."""
    return {f.get_function_name(): f for f in module.app.get_functions()}


@contextlib.contextmanager
def fresh_function_app() -> Iterator[ModuleType]:
    """Import function_app anew from the current environment, as a new worker process does."""
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    sys.modules.pop("function_app", None)
    module = importlib.import_module("function_app")
    try:
        yield module
    finally:
        # AsgiFunctionApp.__del__ calls asyncio.run() for the ASGI shutdown, which cannot work from a
        # garbage collection inside a running loop (azure-functions 1.26); the real host never deletes it.
        module.app.startup_task_done = False
        sys.modules.pop("function_app", None)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.asynccontextmanager
async def functions_host(broker: Broker | None = None) -> AsyncIterator[httpx.AsyncClient]:
    with fresh_function_app() as module:
        functions = index(module)
        if broker is not None:
            module.process.install(broker)
        transport = FunctionsTransport(functions["http_app_func"].get_user_function())
        async with httpx.AsyncClient(transport=transport, base_url=FUNCTIONS_BASE_URL) as client:
            client.functions = functions  # type: ignore[attr-defined]
            client.function_app = module  # type: ignore[attr-defined]
            client.broker = module.process.broker  # type: ignore[attr-defined]
            yield client


class _TestServer(BrokerServer):
    def install_signal_handlers(self) -> None:
        """pytest owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_host(
    broker: Broker | None = None, *, limits: ServerLimits | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    if broker is None:
        broker = Broker(load_settings(os.environ))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it; without it, a response's head and body (two writes) meet the
    # client's delayed ACK and every answer takes ~40 ms here (uvicorn binding its own socket sets it).
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = _TestServer(server_config(create_app(broker), host="127.0.0.1", port=port, limits=limits), broker)
    task = asyncio.create_task(server.run_until_stopped(sockets=[listener]))
    try:
        for _ in range(2000):
            if server.started or task.done():
                break
            await asyncio.sleep(0.005)
        if not server.started:
            if task.done():
                task.result()
            raise RuntimeError("the serve host did not start")
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30.0) as client:
            client.broker = broker  # type: ignore[attr-defined]
            yield client
    finally:
        server.should_exit = True
        server.force_exit = True
        await task
        listener.close()


def open_host(kind: str, broker: Broker | None = None) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
    """The broker on host ``kind`` ("serve" or "functions"), as an HTTP client."""
    if kind == "serve":
        return serve_host(broker)
    if kind == "functions":
        return functions_host(broker)
    raise ValueError(f"unknown host {kind!r}")
