"""``python -m broker serve``: the broker's ASGI app under uvicorn, with limits for an exposed port.

Azure's front end shields the Functions host; a VM or container running ``serve`` has
only these. The broker is built before the server starts and closed after it stops:
its lifetime is the process's, never the ASGI lifespan's.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from broker.http import MAX_HEADER_BYTES
from broker.runtime import Broker


@dataclass(frozen=True)
class ServerLimits:
    """What one server process accepts before it refuses; the defaults are the documented ones."""

    # The broker's own 431 check runs on parsed headers; this caps what is buffered before it.
    max_header_bytes: int = MAX_HEADER_BYTES
    # An idle keep-alive connection is closed after this long (uvicorn's default, stated).
    keep_alive_s: int = 5
    # Connections plus in-flight requests; beyond it a request gets 503 at once instead of a slot.
    max_concurrency: int = 512


def server_config(app: ASGIApp, *, host: str, port: int, limits: ServerLimits | None = None) -> uvicorn.Config:
    """The one uvicorn configuration: ``serve``, ``make run`` and the tests' serve host all use it."""
    limits = limits or ServerLimits()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        # h11, not httptools: httptools buffers headers without any cap.
        http="h11",
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_keep_alive=limits.keep_alive_s,
        limit_concurrency=limits.max_concurrency,
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
    )


class BrokerServer(uvicorn.Server):
    """uvicorn's server; ``run`` closes the broker after the server has stopped."""

    def __init__(self, config: uvicorn.Config, broker: Broker) -> None:
        super().__init__(config)
        self.broker = broker

    async def run_until_stopped(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await self.serve(sockets=sockets)
        finally:
            await self.broker.aclose()
