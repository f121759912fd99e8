"""STAND-IN for local development and tests; never used in production.

Canned replies shared by the stand-ins: a FIFO script of one-shot faults, a sticky
default fault, and a "slow body" reply that trickles its body for read-timeout tests.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from starlette.responses import Response, StreamingResponse


class Omit:
    """Sentinel type: leave the field out entirely (not even ``null``)."""

    _instance: Omit | None = None

    def __new__(cls) -> Omit:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "OMIT"


OMIT: Final = Omit()


@dataclass(frozen=True)
class Reply:
    """A canned HTTP reply.

    ``json`` (any JSON value) wins over ``body``. ``delay_s`` waits before the headers are sent;
    ``chunk_delay_s`` > 0 sends the headers at once and then trickles the body in ``chunk_size``
    pieces with that pause between them.
    """

    status: int = 200
    json: object = OMIT
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    content_type: str | None = None
    chunk_delay_s: float = 0.0
    chunk_size: int = 4

    @classmethod
    def slow_body(cls, json: object, *, status: int = 200, chunk_delay_s: float = 0.5, chunk_size: int = 4) -> Reply:
        """A reply whose headers arrive at once but whose JSON body trickles in slowly.

        httpx's read timeout bounds each read, not the whole body: a ``chunk_delay_s`` above the
        client's read timeout trips it, one below it tests an overall deadline instead.
        """
        return cls(status=status, json=json, chunk_delay_s=chunk_delay_s, chunk_size=chunk_size)

    def payload(self) -> tuple[bytes, str | None]:
        """Return the body bytes and the content type to send with them."""
        if not isinstance(self.json, Omit):
            return jsonlib.dumps(self.json).encode(), self.content_type or "application/json"
        return self.body, self.content_type

    async def respond(self) -> Response:
        """Wait ``delay_s`` and build the Starlette response."""
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        body, content_type = self.payload()
        headers = dict(self.headers)
        if self.chunk_delay_s > 0:
            return StreamingResponse(
                _trickle(body, self.chunk_size, self.chunk_delay_s),
                status_code=self.status,
                headers=headers,
                media_type=content_type,
            )
        return Response(body, status_code=self.status, headers=headers, media_type=content_type)


async def _trickle(body: bytes, chunk_size: int, delay_s: float) -> AsyncIterator[bytes]:
    for start in range(0, len(body), max(chunk_size, 1)):
        if start:
            await asyncio.sleep(delay_s)
        yield body[start : start + chunk_size]


class FaultScript:
    """One-shot scripted replies (FIFO) in front of an optional sticky ``default_reply``.

    Tests mutate it from their own thread while the server reads it on its loop, hence the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Reply] = deque()
        self.default_reply: Reply | None = None

    def script(self, *replies: Reply) -> None:
        """Queue replies, each answering exactly one future request."""
        with self._lock:
            self._queue.extend(replies)

    def next_reply(self) -> Reply | None:
        """Pop the next scripted reply, else the default fault, else ``None`` (behave normally)."""
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return self.default_reply

    @property
    def pending(self) -> int:
        """How many scripted replies have not been used yet."""
        with self._lock:
            return len(self._queue)

    def clear(self) -> None:
        """Drop queued replies and the default fault."""
        with self._lock:
            self._queue.clear()
        self.default_reply = None


class Scriptable:
    """Mixin for stand-ins that answer with scripted faults; subclasses set ``self.faults``."""

    faults: FaultScript

    def script(self, *replies: Reply) -> None:
        """Answer the next (authenticated) requests with these replies, one each."""
        self.faults.script(*replies)

    @property
    def default_reply(self) -> Reply | None:
        """A fault that answers every (authenticated) request until set back to ``None``."""
        return self.faults.default_reply

    @default_reply.setter
    def default_reply(self, reply: Reply | None) -> None:
        self.faults.default_reply = reply
