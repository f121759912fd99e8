"""The upstream call's own rules, on both hosts: no retries but the two the contract names, no cookies kept."""

from __future__ import annotations

import asyncio
import http.cookiejar
import time
from collections.abc import AsyncIterator

import httpx

from broker.errors import InvalidUpstreamResponse
from broker.proxy.upstream import NoCookies, build_client
from broker.standin.dataapi import DataApi
from tests.conftest import Stack
from tests.proxy.conftest import Rig


class RefusedFirst(httpx.AsyncBaseTransport):
    """A real transport whose first ``refusals`` connects fail before any byte is sent (as a refused connect does)."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.attempts = 0
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.refusals > 0:
            self.refusals -= 1
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def client_over(transport: httpx.AsyncBaseTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, cookies=NoCookies(), follow_redirects=False)


async def test_a_get_whose_connection_failed_before_any_byte_is_retried_once(rig: Rig, stack: Stack) -> None:
    """One refused connect, then success: the caller gets 200; two refused connects: 503, and no third try."""
    once = RefusedFirst(1)
    async with rig.open(rig.broker(proxy_http=client_over(once))) as api:
        response = await api.get("/api/proxy/ilevel/entities/assets", token=stack.caller())
    assert response.status_code == 200
    assert once.attempts == 2
    twice = RefusedFirst(5)
    async with rig.open(rig.broker(proxy_http=client_over(twice))) as api:
        response = await api.get("/api/proxy/ilevel/entities/assets", token=stack.caller())
    assert response.status_code == 503
    assert response.headers["X-Broker-Error"] == "upstream_unavailable"
    assert twice.attempts == 2


async def test_a_post_is_never_retried(rig: Rig, stack: Stack, data_api: DataApi) -> None:
    """POST after one refused connect: 503 upstream_unavailable, one attempt, nothing at the API."""
    once = RefusedFirst(1)
    async with rig.open(rig.broker(proxy_http=client_over(once))) as api:
        response = await api.get("/api/proxy/ilevel/echo", token=stack.caller(), method="POST", content=b"{}")
    assert response.status_code == 503
    assert once.attempts == 1
    assert data_api.requests == []


async def test_an_upstream_5xx_is_passed_through_and_not_retried(rig: Rig, stack: Stack, data_api: DataApi) -> None:
    """iLevel's own 502 reaches the caller as it is, without X-Broker-Error, after exactly one request."""
    from broker.standin.dataapi import Reply

    data_api.script(Reply(status=502, body=b"<html>bad gateway</html>", content_type="text/html"))
    async with rig.open() as api:
        response = await api.get("/api/proxy/ilevel/entities/assets", token=stack.caller())
    assert response.status_code == 502
    assert "X-Broker-Error" not in response.headers
    assert response.content == b"<html>bad gateway</html>"
    assert len(data_api.requests) == 1


def test_the_proxy_client_stores_no_cookie_and_follows_no_redirect() -> None:
    """build_client: a jar whose set_cookie does nothing, follow_redirects off."""
    client = build_client(timeout_s=5)
    jar = client.cookies.jar
    assert isinstance(jar, NoCookies)
    jar.set_cookie(
        http.cookiejar.Cookie(
            0, "s", "1", None, False, "example.com", True, False, "/", True, False, None, False, None, None, {}
        )  # fmt: skip
    )
    assert list(jar) == []
    assert client.follow_redirects is False


async def _loop_turns_while_streaming(rig: Rig, body: bytes, *, read_bytes: int) -> tuple[bytes, int]:
    """The body through the proxy's stages, read ``read_bytes`` at a time, and the loop turns it gave others."""
    from broker.proxy.stream import Decoder, JsonLinks, Redactor, token_forms
    from broker.proxy.upstream import Forwarded

    broker = rig.broker()
    try:
        proxy = broker.proxies["ilevel"]

        async def source() -> AsyncIterator[bytes]:
            for start in range(0, len(body), read_bytes):
                yield body[start : start + read_bytes]

        async def nothing() -> None:
            return None

        forwarded = Forwarded(
            status=200, headers=[], upstream_latency_s=0.0, token_fingerprint="-", body=source(), closer=nothing
        )
        stages = proxy._body(
            source(),
            Decoder(None, len(body), InvalidUpstreamResponse("too big")),
            Redactor(token_forms("not-in-the-body")),
            JsonLinks(rig.data_api.base_url, "http://broker.example/api/proxy/ilevel/"),
            forwarded,
            time.monotonic() + 60,
        )
        turns = 0
        stop = asyncio.Event()

        async def count() -> None:
            nonlocal turns
            while not stop.is_set():
                turns += 1
                await asyncio.sleep(0)

        counter = asyncio.create_task(count())
        await asyncio.sleep(0)
        turns = 0
        out = b"".join([chunk async for chunk in stages])
        stop.set()
        await counter
        return out, turns
    finally:
        await broker.aclose()


async def test_a_large_body_gives_the_loop_a_turn_per_slice_and_a_small_one_costs_none(rig: Rig) -> None:
    """Body work leaves the event loop at least every two 16 KiB slices; a page under one slice never waits on it."""
    from broker.proxy.upstream import WORK_SLICE_BYTES

    small = b'{"data":[' + b",".join(b'{"id":%d}' % n for n in range(200)) + b"]}"
    assert len(small) < WORK_SLICE_BYTES
    out, turns = await _loop_turns_while_streaming(rig, small, read_bytes=64 * 1024)
    assert out == small
    assert turns == 0
    large = b'{"data":[' + b",".join(b'{"id":%d}' % n for n in range(40_000)) + b"]}"
    for read_bytes in (64 * 1024, 5000):
        out, turns = await _loop_turns_while_streaming(rig, large, read_bytes=read_bytes)
        assert out == large
        assert turns >= len(large) // (2 * WORK_SLICE_BYTES)
