"""``serve`` on an exposed port: hostile clients cost a bounded amount and get closed (broker.serving).

Runs the serve host (uvicorn with ``python -m broker serve``'s configuration) with short limits so the
tests take seconds; the defaults are in :class:`broker.serving.ServerLimits` and the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from broker.serving import ServerLimits
from tests.conftest import Stack
from tests.faults_support import report
from tests.hosts import serve_host

SHORT = ServerLimits(header_timeout_s=1.0, keep_alive_s=1, max_concurrency=20)
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def limits_summary(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    if FIGURES:
        report(request.config, tmp_path_factory.getbasetemp(), "serve-limits", {"summary": FIGURES})


def address(client: httpx.AsyncClient) -> tuple[str, int]:
    return client.base_url.host, int(client.base_url.port or 80)


async def closed_after(reader: asyncio.StreamReader, limit_s: float) -> float:
    """Seconds until the server closes the connection (EOF or reset); fails past ``limit_s``."""
    started = time.monotonic()
    try:
        while await asyncio.wait_for(reader.read(65536), timeout=limit_s):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    return time.monotonic() - started


@pytest.mark.slow
async def test_a_connection_that_never_finishes_its_headers_is_closed(stack: Stack) -> None:
    """Slowloris: one header byte every 0.2 s is closed at the header deadline, not kept forever."""
    async with serve_host(stack.broker(), limits=SHORT) as client:
        reader, writer = await asyncio.open_connection(*address(client))
        writer.write(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()

        async def trickle() -> None:
            while True:
                await asyncio.sleep(0.2)
                writer.write(b"a")

        dripping = asyncio.create_task(trickle())
        try:
            waited = await closed_after(reader, limit_s=5)
        finally:
            dripping.cancel()
            writer.close()
        FIGURES["slowloris_closed_after_s"] = round(time.monotonic() - started, 2)
        assert waited < SHORT.header_timeout_s + 1.5
        assert (await client.get("/api/health")).status_code == 200


@pytest.mark.slow
async def test_an_idle_connection_is_closed(stack: Stack) -> None:
    """A connection that sends nothing at all is closed at the header deadline."""
    async with serve_host(stack.broker(), limits=SHORT) as client:
        reader, writer = await asyncio.open_connection(*address(client))
        waited = await closed_after(reader, limit_s=5)
        writer.close()
    FIGURES["idle_closed_after_s"] = round(waited, 2)
    assert waited < SHORT.header_timeout_s + 1.5


async def test_a_header_stream_is_cut_off_before_it_costs_memory(stack: Stack) -> None:
    """Headers streamed without end: the server stops reading at the cap and closes; nothing near 1 MiB is taken."""
    async with serve_host(stack.broker(), limits=SHORT) as client:
        with socket.create_connection(address(client), timeout=5) as raw:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            raw.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
            sent, answer = 0, b""
            try:
                while sent < 8 << 20:
                    await asyncio.to_thread(raw.sendall, b"X-Pad: " + b"a" * 4089 + b"\r\n")
                    sent += 4098
            except OSError:
                pass
            raw.settimeout(2)
            with contextlib.suppress(OSError):
                answer = raw.recv(4096)
        assert (await client.get("/api/health")).status_code == 200
    FIGURES["header_stream_bytes_sent_before_close"] = sent
    assert sent < 1 << 20, f"the server kept reading {sent} bytes of headers"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400")


@pytest.mark.serial
async def test_requests_beyond_the_concurrency_limit_get_503_at_once(stack: Stack) -> None:
    """With every slot held by slow connections, a new request is answered 503 quickly, not queued forever."""
    async with serve_host(stack.broker(), limits=SHORT) as client:
        held = [await asyncio.open_connection(*address(client)) for _ in range(SHORT.max_concurrency)]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=str(client.base_url)) as fresh:
            busy = await fresh.get("/api/health")
        FIGURES["over_limit_answer_s"] = round(time.monotonic() - started, 3)
        for _, writer in held:
            writer.close()
    assert busy.status_code == 503
