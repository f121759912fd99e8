"""The upstream call's own rules, on both hosts: no retries but the two the contract names, no cookies kept."""

from __future__ import annotations

import http.cookiejar

import httpx

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
