"""STAND-IN for local development and tests; never used in production.

Runs an ASGI app with uvicorn on loopback in a daemon thread, plus two sockets
for network-failure tests: one whose connects hang, one that refuses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import httpx
import uvicorn

_START_TIMEOUT_S = 10.0
AppT = TypeVar("AppT")


class RunningServer:
    """A uvicorn server running in its own thread and event loop."""

    def __init__(self, server: _ThreadedServer, thread: threading.Thread, *, host: str, port: int, tls: bool) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port = port
        self.scheme = "https" if tls else "http"

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``https://127.0.0.1:54321``."""
        return f"{self.scheme}://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop at once and wait for the thread.

        Forced, not graceful: open connections are aborted. An idle TLS keep-alive connection would
        otherwise hold shutdown until the peer answers close_notify, which a pooled client never does:
        ``asyncio.Server.wait_closed``, which uvicorn awaits, waits for every connection since Python
        3.12 (the asyncio docs' note, python/cpython#120866, read 2026-12-06), so each stop cost the
        whole join timeout.
        """
        self._server.force_exit = True
        self._server.should_exit = True
        loop = self._server.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: nothing left to abort
                loop.call_soon_threadsafe(self._server.abort_connections)
        self._thread.join(timeout=_START_TIMEOUT_S)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RunningServer(url={self.url!r})"


@dataclass(frozen=True)
class Served[AppT]:
    """A stand-in app together with the server running it (handy as a fixture value)."""

    app: AppT
    server: RunningServer

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self.server.url


class _ThreadedServer(uvicorn.Server):
    loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def abort_connections(self) -> None:
        """Drop every open connection (on the server's loop): ``asyncio.Server.abort_clients``, new in 3.13."""
        for server in self.servers:
            server.abort_clients()

    def install_signal_handlers(self) -> None:
        # Signal handlers can only be installed from the main thread.
        pass

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def run_server(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> RunningServer:
    """Start ``app`` on ``host:port`` (0 picks a free port) and return once it accepts connections."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )
    server = _ThreadedServer(config)
    failure: list[BaseException] = []

    def _run() -> None:
        try:
            asyncio.run(server.serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            failure.append(exc)

    thread = threading.Thread(target=_run, name=f"standin-{host}:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not server.started:
        if failure or not thread.is_alive():
            raise RuntimeError("stand-in server failed to start") from (failure[0] if failure else None)
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError("stand-in server did not start in time")
        time.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    return RunningServer(server, thread, host=host, port=int(bound_port), tls=certfile is not None)


@contextlib.contextmanager
def blackhole_listener() -> Iterator[tuple[str, int]]:
    """Yield ``(host, port)`` of a loopback listener whose accept queue is full, so new connects hang.

    Linux keeps SYNs for a full accept queue unanswered, which makes the client's connect time out.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        # With backlog 0 Linux still queues one connection; fill the queue until a connect stalls.
        for _ in range(8):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            if filler.connect_ex(address) not in (0, errno.EINPROGRESS):
                break
            _, writable, _ = select.select([], [filler], [], 0.2)
            if not writable:
                break
        yield "127.0.0.1", int(address[1])
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def closed_port() -> int:
    """Return a loopback port with nothing listening on it, so connects are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_healthy(base_url: str, process: subprocess.Popen[Any], *, timeout_s: float) -> bool:
    """Poll ``{base_url}/api/health`` until it answers 200; False if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{base_url}/api/health", timeout=1.0).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return False
