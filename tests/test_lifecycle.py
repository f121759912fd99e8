"""The broker's lifetime is the process's: cold starts under concurrent first calls, ASGI lifespan
messages, and closed clients, on both hosts (tests/hosts.py).

The defect this guards: concurrent first invocations made azure-functions start the ASGI lifespan
more than once; Starlette took the second startup as shutdown, the broker closed its HTTP client,
and every token request answered 500 from then on while /api/health stayed 200.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from broker.rotation import check_rotation_event
from tests.conftest import Stack
from tests.hosts import open_host

SECRET = "ilevel-client-secret"


async def burst(client: httpx.AsyncClient, stack: Stack, count: int) -> list[httpx.Response]:
    """``count`` concurrent first calls, alternating /api/health and /api/token/ilevel."""
    caller = {"Authorization": f"Bearer {stack.caller()}"}
    calls = [
        client.get("/api/health") if i % 2 == 0 else client.get("/api/token/ilevel", headers=caller)
        for i in range(count)
    ]
    return list(await asyncio.gather(*calls))


async def rotation_check(client: Any, host: str, stack: Stack) -> None:
    """A SecretNewVersionCreated for the newest version, through the host's own way of running it."""
    version = stack.kv.versions(SECRET)[-1]
    data = {"VaultName": "kv", "ObjectType": "Secret", "ObjectName": SECRET, "Version": version}
    if host == "functions":
        event = {
            "id": "1",
            "topic": "/vaults/kv",
            "subject": SECRET,
            "eventType": "Microsoft.KeyVault.SecretNewVersionCreated",
            "eventTime": None,
            "data": data,
            "dataVersion": "1",
        }
        await client.worker.event_grid(event)
    else:
        await check_rotation_event(client.broker, data, subject=SECRET)


async def test_fifty_concurrent_first_calls_on_a_fresh_start_make_one_token_request(
    stack: Stack, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Fresh start, 50 concurrent mixed first calls: all 200, 1 token request, 1 read per secret; later calls
    and the rotation check still work."""
    stack.tokens.latency_s = 0.05
    async with open_host(host) as client:
        responses = await burst(client, stack, 50)
        assert [r.status_code for r in responses] == [200] * 50, [r.text for r in responses if r.status_code != 200]
        tokens = {r.json()["access_token"] for r in responses[1::2]}
        assert len(tokens) == 1
        assert stack.tokens.request_count == 1
        assert dict(stack.kv.reads) == {"ilevel-client-id": 1, SECRET: 1}

        caller = {"Authorization": f"Bearer {stack.caller()}"}
        later = await client.get("/api/token/ilevel?force_refresh=true", headers=caller)
        again = await client.get("/api/token/ilevel", headers=caller)
        assert (later.status_code, again.status_code) == (200, 200), later.text
        assert stack.tokens.request_count == 2, "the forced refresh reached the token endpoint"

        stack.rotate_secret()
        await rotation_check(client, host, stack)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rotation ")]
    assert len(lines) == 1 and lines[0].startswith("rotation verified"), lines


async def test_the_reported_burst_of_forty_leaves_token_requests_working(stack: Stack, host: str) -> None:
    """The issue's reproduction: 40 concurrent first calls, half health, half token; then a fetch still works."""
    async with open_host(host) as client:
        responses = await burst(client, stack, 40)
        assert {r.status_code for r in responses} == {200}
        after = await client.get(
            "/api/token/ilevel?force_refresh=true", headers={"Authorization": f"Bearer {stack.caller()}"}
        )
    assert after.status_code == 200, after.text
    assert after.json()["access_token"] == stack.tokens.issued_tokens[-1]


async def test_lifespan_messages_never_close_the_broker(stack: Stack) -> None:
    """azure-functions' lifespan started three times at once and then shut down: token requests still fetch."""
    stack.export_environment()
    async with open_host("functions") as client:
        middleware = client.function_app.app.middleware
        await asyncio.gather(*(middleware.notify_startup() for _ in range(3)))
        await middleware.notify_shutdown()
        response = await client.get(
            "/api/token/ilevel?force_refresh=true", headers={"Authorization": f"Bearer {stack.caller()}"}
        )
    assert response.status_code == 200, response.text
    assert not client.broker.http.closed


async def test_a_closed_http_client_is_never_used_again(stack: Stack, host: str) -> None:
    """If anything closes the shared client, the next fetch gets a new one instead of a 500."""
    async with open_host(host) as client:
        caller = {"Authorization": f"Bearer {stack.caller()}"}
        assert (await client.get("/api/token/ilevel", headers=caller)).status_code == 200
        await client.broker.http().aclose()
        response = await client.get("/api/token/ilevel?force_refresh=true", headers=caller)
    assert response.status_code == 200, response.text
    assert stack.tokens.request_count == 2


async def test_a_real_serve_shutdown_closes_the_broker(stack: Stack) -> None:
    """Under uvicorn the owner closes the broker once the server has stopped."""
    stack.export_environment()
    async with open_host("serve") as client:
        assert (await client.get("/api/health")).status_code == 200
        broker = client.broker
        assert not broker.http.closed
    assert broker.http.closed
