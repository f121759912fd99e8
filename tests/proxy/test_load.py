"""No stalls: while large JSON pages are proxied, health and cached tokens answer promptly, on both hosts."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import httpx
import pytest

from broker.standin.dataapi import DataApi, big_json
from tests.conftest import Stack
from tests.proxy.conftest import Rig

PAGES = 4
PAGE_BYTES = 50 * 1024 * 1024
P99_LIMIT_S = 0.050


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


# A caller in another process: streams the page and prints its size.
DOWNLOAD = """
import os, sys, httpx
size = 0
headers = {"Authorization": os.environ["CALLER_AUTHORIZATION"]}
with httpx.Client(timeout=120) as client, client.stream("GET", sys.argv[1], headers=headers) as response:
    for chunk in response.iter_raw(1024 * 1024):
        size += len(chunk)
print(size)
"""


@pytest.mark.serial
async def test_health_and_cached_tokens_stay_under_50_ms_p99_while_four_50_mib_pages_are_proxied(
    rig: Rig, stack: Stack, data_api: DataApi
) -> None:
    """The rewrite, redaction and decoding run a chunk at a time, so the event loop keeps serving."""
    big_json(PAGE_BYTES, data_api.public_url + "/v1/")  # the stand-in makes its page before the clock starts
    await _measure(rig, stack)


async def _measure(rig: Rig, stack: Stack) -> None:
    async with rig.open(BROKER_ILEVEL_MODE="both", BROKER_PROXY_MAX_RESPONSE_MB="64") as api:
        caller = {"Authorization": f"Bearer {stack.caller()}"}
        assert (await api.client.get("/api/token/ilevel", headers=caller)).status_code == 200  # cached from now on

        async def page(number: int) -> int:
            url = f"/api/proxy/ilevel/bigjson?bytes={PAGE_BYTES}&n={number}"
            if isinstance(api.client._transport, httpx.AsyncHTTPTransport):
                # serve: callers are other processes; here a child process plays each, so its HTTP
                # parsing competes with neither the broker's event loop nor its GIL.
                child = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    DOWNLOAD,
                    str(api.client.base_url) + url,
                    env={**os.environ, "CALLER_AUTHORIZATION": caller["Authorization"]},
                    stdout=asyncio.subprocess.PIPE,
                )
                out, _ = await child.communicate()
                return int(out)
            return len((await api.client.get(url, headers=caller)).content)

        pages = [asyncio.create_task(page(n)) for n in range(PAGES)]
        health: list[float] = []
        tokens: list[float] = []
        while not all(p.done() for p in pages):
            for path, samples, headers in (("/api/health", health, {}), ("/api/token/ilevel", tokens, caller)):
                started = time.perf_counter()
                answer = await api.client.get(path, headers=headers)
                samples.append(time.perf_counter() - started)
                assert answer.status_code == 200
            await asyncio.sleep(0.01)
        sizes = [p.result() for p in pages]
    assert all(size > PAGE_BYTES for size in sizes)
    assert len(health) >= 20, "the pages finished before enough samples were taken"
    assert p99(health) < P99_LIMIT_S, f"health p99 {p99(health) * 1000:.1f} ms over {len(health)} samples"
    assert p99(tokens) < P99_LIMIT_S, f"token p99 {p99(tokens) * 1000:.1f} ms over {len(tokens)} samples"
