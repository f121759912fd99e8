"""Helpers for the fault-matrix, rotation and property tests: a clock the test moves, an upstream
attempt counter that also sees unreachable endpoints, and a summary written for the closing note."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.runtime import Broker
from tests.conftest import Api, Stack
from tests.hosts import open_host


class SimClock:
    """Wall time plus an offset the test moves forward, optionally running many times faster than real time."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._rate = 1.0
        self._since = time.monotonic()

    def __call__(self) -> float:
        return time.time() + self.offset + (self._rate - 1) * (time.monotonic() - self._since)

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def fast_forward(self, rate: float) -> None:
        """From now on run ``rate`` times as fast as real time (1 for normal speed); steady under any load."""
        now = time.monotonic()
        self.offset += (self._rate - 1) * (now - self._since)
        self._rate, self._since = rate, now


class TokenRequests:
    """Counts the broker's token requests as they leave it (an httpx hook), so refused connects count too."""

    def __init__(self, token_url: str) -> None:
        self.token_url = token_url
        self.count = 0

    async def __call__(self, request: httpx.Request) -> None:
        if request.method == "POST" and str(request.url) == self.token_url:
            self.count += 1


class Rig:
    """A broker on the test stack with a movable clock and counted token requests, served by one of the hosts."""

    def __init__(self, stack: Stack, host: str) -> None:
        self.stack = stack
        self.host = host
        self._exits = contextlib.AsyncExitStack()
        self.clock = SimClock()
        self.caller = stack.caller(expires_in=86400 * 30)
        self.attempts = TokenRequests(stack.token_url)
        self.broker: Broker | None = None
        self.api: Api | None = None
        self._client: httpx.AsyncClient | None = None

    async def start(self, *, settings: dict[str, str] | None = None, **overrides: Any) -> Rig:
        changes = dict(settings or {})
        self.attempts = TokenRequests(changes.get("BROKER_ILEVEL_TOKEN_URL", self.stack.token_url))
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, connect=5.0),
            follow_redirects=False,
            event_hooks={"request": [self.attempts]},
        )
        overrides.setdefault("clock", self.clock)
        overrides.setdefault("http", http)
        self.broker = self.stack.broker(self.stack.settings(**changes), **overrides)
        self._client = await self._exits.enter_async_context(open_host(self.host, self.broker))
        self.api = Api(self._client, self.stack)
        return self

    async def get(self, path: str = "/api/token/ilevel", **kwargs: Any) -> tuple[httpx.Response, float]:
        """One caller request; returns the response and how long the caller waited (s)."""
        assert self.api is not None, "call start() first"
        started = time.perf_counter()
        response = await self.api.get(path, token=kwargs.pop("token", self.caller), **kwargs)
        return response, time.perf_counter() - started

    async def close(self) -> None:
        await self._exits.aclose()
        if self.broker is not None:
            await self.broker.aclose()


@contextlib.asynccontextmanager
async def rig_on(stack: Stack, host: str) -> AsyncIterator[Rig]:
    """A not-yet-started rig on ``host``, closed afterwards; the test starts it with the settings it needs."""
    made = Rig(stack, host)
    try:
        yield made
    finally:
        await made.close()


class _Summary:
    """A pytest plugin that prints the recorded numbers in the terminal summary, after capture ends."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for line in self.lines:
            terminalreporter.write_line(line)


def report(config: pytest.Config, base: Path, name: str, data: dict[str, Any]) -> None:
    """Write ``data`` to ``<pytest basetemp>/<name>.json`` and show its summary at the end of the run."""
    path = base / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    plugin = config.pluginmanager.get_plugin("broker-summary")
    if plugin is None:
        plugin = _Summary()
        config.pluginmanager.register(plugin, "broker-summary")
    plugin.lines.append(f"{name}: {json.dumps(data.get('summary', data), sort_keys=True)} (full: {path})")


async def settle() -> None:
    """Let background tasks (refresh-ahead) run."""
    for _ in range(5):
        await asyncio.sleep(0)
