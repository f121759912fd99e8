"""Driving an ASGI app directly: one request is one ``await app(scope, receive, send)``, no network."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def http_scope(path: str, headers: Sequence[tuple[bytes, bytes]] = (), query: bytes = b"") -> Scope:
    """The scope uvicorn builds for a plain ``GET`` on loopback."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:7071"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 7071),
        "state": {},
    }


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class StatusRecorder:
    """An ASGI ``send`` that keeps the statuses it sees."""

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            self.statuses[status] = self.statuses.get(status, 0) + 1


async def empty_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The baseline: an ASGI handler that answers 200 with an empty body and does nothing else."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


async def time_requests(app: ASGIApp | Any, scope: Scope, count: int) -> tuple[float, StatusRecorder]:
    """Seconds per request over ``count`` sequential requests, and the statuses answered."""
    send = StatusRecorder()
    clock = time.perf_counter
    started = clock()
    for _ in range(count):
        await app(dict(scope), _receive, send)
    return (clock() - started) / count, send
