"""The two hosts a contract test runs on: one HTTP contract, whichever host serves it.

- ``serve``: the ASGI app under uvicorn with ``python -m broker serve``'s own configuration
  (:func:`broker.serving.server_config`, :class:`broker.serving.BrokerServer`), over real HTTP
  on a loopback socket bound to port 0 (no free-port race), in the test's event loop.
- ``functions``: the Azure Functions entry point inside Microsoft's worker, ``azure_functions_runtime``
  (the version requirements.txt pins), driven through its own event handlers as the host's proxy worker
  drives them (:mod:`tests.worker.driver`): worker init with the deployed app settings (which imports
  and indexes function_app.py anew), metadata, load, then an ``InvocationRequest`` per HTTP request,
  all on the test's (default asyncio) loop.

Both come as an ``httpx.AsyncClient``, so assertions never know which host answered. A test that
needs a broker with injected parts (a movable clock, a fast retry policy, a counting HTTP client)
passes it in: ``serve`` runs that broker; ``functions`` has the runtime import function_app fresh (which builds
its own broker from the environment, as in Azure) and then installs the test's broker on the
module's process (:meth:`broker.startup.Process.install`). With no broker given, both build
one from the environment exactly as in production: that is what the cold-start tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator

import httpx

from bench.stack import environment
from broker.app import create_app
from broker.config import load_settings
from broker.runtime import Broker
from broker.serving import BrokerServer, ServerLimits, server_config
from broker.startup import QUIET_LOGGERS
from tests.worker.driver import FunctionsTransport, Worker, WorkerRefused, worker_settings

HOSTS = ("serve", "functions")
FUNCTIONS_BASE_URL = "https://func-broker.azurewebsites.net"


@contextlib.asynccontextmanager
async def functions_worker(settings: dict[str, str] | None = None) -> AsyncIterator[Worker]:
    """A fresh worker: function_app imported anew by the runtime's worker init, indexed, loaded."""
    if settings is None:
        settings = worker_settings()
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    sys.modules.pop("function_app", None)  # a new worker process has not imported it yet
    worker = Worker()
    try:
        with environment(settings):
            await worker.start()
            yield worker
    finally:
        module = sys.modules.pop("function_app", None)
        if module is not None:
            # AsgiFunctionApp.__del__ calls asyncio.run() for the ASGI shutdown, which cannot work from a
            # garbage collection inside a running loop; the real host never deletes it.
            module.app.startup_task_done = False
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.asynccontextmanager
async def functions_host(broker: Broker | None = None) -> AsyncIterator[httpx.AsyncClient]:
    async with functions_worker() as worker:
        if broker is not None:
            worker.module.process.install(broker)
        transport = FunctionsTransport(worker)
        async with httpx.AsyncClient(transport=transport, base_url=FUNCTIONS_BASE_URL) as client:
            client.worker = worker  # type: ignore[attr-defined]
            client.functions = worker.functions  # type: ignore[attr-defined]
            client.function_app = worker.module  # type: ignore[attr-defined]
            client.broker = worker.module.process.broker  # type: ignore[attr-defined]
            yield client
        # The host would have answered these with a bare 500: name the runtime's reason instead.
        if worker.failures:
            raise WorkerRefused(f"the worker refused {len(worker.failures)} invocation(s): {worker.failures[:3]}")


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
