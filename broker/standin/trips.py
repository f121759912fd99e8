"""STAND-IN for local development and tests; never used in production.

An injected network round trip: :class:`RoundTrips` wraps stand-in apps so that every HTTP
request waits ``latency_s`` before its app sees it, as a real hop to Entra, the managed-identity
endpoint, Key Vault or a token endpoint would, and records when each one started and ended.
:func:`critical_path` then counts how many of those trips ran one after another.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True)
class Trip:
    """One request to a stand-in: which one, the path, and when it arrived and was answered (monotonic)."""

    server: str
    path: str
    started: float
    ended: float


class RoundTrips:
    """Shared by the wrapped stand-ins: one latency knob, one log of trips."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self._trips: list[Trip] = []
        self._lock = threading.Lock()

    def wrap(self, server: str, app: ASGIApp) -> ASGIApp:
        trips = self

        async def delayed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.monotonic()
            if trips.latency_s > 0:
                await asyncio.sleep(trips.latency_s)

            async def send_and_record(message: Message) -> None:
                # Logged before the last body message goes out, so a client never sees an answer not yet logged.
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    trips.record(Trip(server, scope.get("path", ""), started, time.monotonic()))
                await send(message)

            await app(scope, receive, send_and_record)

        return delayed

    def record(self, trip: Trip) -> None:
        with self._lock:
            self._trips.append(trip)

    @property
    def trips(self) -> list[Trip]:
        with self._lock:
            return list(self._trips)

    def reset(self) -> None:
        with self._lock:
            self._trips.clear()


def critical_path(trips: Sequence[Trip]) -> list[Trip]:
    """The longest chain of trips each of which started after the previous one ended: the ones waited for in turn."""
    ordered = sorted(trips, key=lambda t: t.ended)
    best: list[list[Trip]] = []
    for i, trip in enumerate(ordered):
        chain = [trip]
        for j in range(i):
            if ordered[j].ended <= trip.started and len(best[j]) + 1 > len(chain):
                chain = [*best[j], trip]
        best.append(chain)
    return max(best, key=len, default=[])
