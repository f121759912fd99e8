"""``python -m broker serve``: the broker's ASGI app under uvicorn, with limits for an exposed port.

Azure's front end shields the Functions host; a VM or container running ``serve`` has
only these. The broker is built before the server starts and closed after it stops:
its lifetime is the process's, never the ASGI lifespan's.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from broker.http import MAX_HEADER_BYTES
from broker.runtime import Broker
from broker.warmup import start_warm_up


@dataclass(frozen=True)
class ServerLimits:
    """What one server process accepts before it refuses; the defaults are the documented ones."""

    # The broker's own 431 (JSON) answers parsed headers over 16 KiB; past twice that, h11 stops
    # buffering and uvicorn answers a plain 400 and closes: a header stream costs at most this.
    max_header_bytes: int = 2 * MAX_HEADER_BYTES
    # A request's headers must be complete this long after the connection opened or the previous
    # response ended; uvicorn itself never times out a connection that is still sending headers.
    header_timeout_s: float = 10.0
    # An idle keep-alive connection is closed after this long (uvicorn's default, stated).
    keep_alive_s: int = 5
    # Connections plus in-flight requests; beyond it a request gets 503 at once instead of a slot.
    max_concurrency: int = 512


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with the one limit it lacks: slow or never-finished headers close the connection.

    Passed to uvicorn as its ``http`` protocol class (a documented option); everything else is uvicorn's.
    """

    header_timeout_s = ServerLimits.header_timeout_s
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # a whole request arrived: the app's time is not the client's

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()


def server_config(app: ASGIApp, *, host: str, port: int, limits: ServerLimits | None = None) -> uvicorn.Config:
    """The one uvicorn configuration: ``serve``, ``make run`` and the tests' serve host all use it."""
    limits = limits or ServerLimits()
    protocol = type("BrokerH11Protocol", (HeaderDeadlineProtocol,), {"header_timeout_s": limits.header_timeout_s})
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        # h11, not httptools: httptools buffers headers without any cap.
        http=protocol,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_keep_alive=limits.keep_alive_s,
        limit_concurrency=limits.max_concurrency,
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
    )


class BrokerServer(uvicorn.Server):
    """uvicorn's server; ``run`` closes the broker after the server has stopped.

    With ``warm_up`` (``python -m broker serve``), the process-start warm-up (:mod:`broker.warmup`)
    begins as the server starts, beside uvicorn's own start-up.
    """

    def __init__(self, config: uvicorn.Config, broker: Broker, *, warm_up: bool = False) -> None:
        super().__init__(config)
        self.broker = broker
        self.warm_up = warm_up
        self.warming: asyncio.Task[dict[str, str]] | None = None

    async def run_until_stopped(self, sockets: list[socket.socket] | None = None) -> None:
        if self.warm_up:
            self.warming = start_warm_up(self.broker)
        try:
            await self.serve(sockets=sockets)
        finally:
            if self.warming is not None:
                self.warming.cancel()
            await self.broker.aclose()
