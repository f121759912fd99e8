"""Proxy mode under hostile upstreams and greedy callers, on both hosts: nothing reflected, nothing
misdirected, bounded decoding, raw header bytes, request hygiene, and a fair share of the slots."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import tracemalloc

import pytest

from broker.proxy.stream import REDACTED
from broker.standin.dataapi import DataApi
from tests.conftest import Stack
from tests.hosts import functions_host
from tests.proxy.conftest import ProxyApi, Rig
from tests.proxy.test_http import broker_error
from tests.test_telemetry import Metrics

MIB = 1024 * 1024


# --- nothing reflected ------------------------------------------------------------------------------


async def test_a_reflected_token_is_redacted_in_body_links_and_headers_and_logged_with_the_request_id(
    proxy: ProxyApi, stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """An echoing upstream puts the broker's token in its body (encoded every way), next link, Location and
    Link: all redacted."""
    response = await proxy.get(
        "/api/proxy/ilevel/reflect", token=stack.caller(), headers={"X-Request-Id": "req-reflect-0001"}
    )
    assert response.status_code == 200
    token = stack.tokens.issued_tokens[-1]
    everything = response.text + " ".join(f"{k}: {v}" for k, v in response.headers.multi_items())
    assert token not in everything
    body = response.json()
    assert body["echo"]["authorization"] == "Bearer " + REDACTED.decode()
    # Every encoding an echoing server may use: lower-case %xx, JSON \uXXXX, HTML references, base64.
    assert [body["percent"], body["json"], body["html"], body["basic"]] == [REDACTED.decode()] * 4
    assert REDACTED.decode() in body["links"]["next"] or "%5Bredacted-by-broker%5D" in body["links"]["next"]
    assert "/api/proxy/ilevel/" in body["links"]["next"]
    assert REDACTED.decode() in response.headers["location"]
    assert "/api/proxy/ilevel/" in response.headers["link"]
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "reflected" in r.getMessage()
    ]
    assert len(warnings) == 1 and "req-reflect-0001" in warnings[0]


# --- nothing misdirected --------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["location", "link"])
async def test_a_link_on_the_apis_origin_outside_the_base_is_a_502(proxy: ProxyApi, stack: Stack, header: str) -> None:
    """A Location (on a 201, not only a 3xx) or Link under the API's origin but outside /v1/ is refused."""
    response = await proxy.get(f"/api/proxy/ilevel/outside?header={header}", token=stack.caller())
    broker_error(response, 502, "invalid_response")
    assert "outside" in response.json()["error_description"]


async def test_links_with_dot_segments_never_land_on_another_broker_route(proxy: ProxyApi, stack: Stack) -> None:
    """<base>../../api/token/ilevel stays as the API wrote it in a body (never <proxy root>../../...), and
    a Link target on another host is removed while the one inside is rewritten."""
    response = await proxy.get("/api/proxy/ilevel/dots", token=stack.caller())
    assert response.status_code == 200
    links = response.json()["links"]
    assert "/api/proxy/" not in links["next"] and links["next"].endswith("/v1/../../api/token/ilevel")
    assert "/api/proxy/" not in links["inner"]
    assert "elsewhere.example" not in response.headers["link"]
    assert "/api/proxy/ilevel/entities/assets?page=2" in response.headers["link"]


async def test_a_link_header_that_leaves_the_base_through_dot_segments_is_a_502(proxy: ProxyApi, stack: Stack) -> None:
    """Link: <base>../../api/token/ilevel resolves outside /v1/ on the API's origin: refused like /v2/."""
    response = await proxy.get("/api/proxy/ilevel/dots?header=link", token=stack.caller())
    broker_error(response, 502, "invalid_response")


@pytest.mark.parametrize(
    "path",
    [
        "oauth/token",
        "OAUTH/Token",
        "TOKEN/../oauth/TOKEN",
        "oauth/token%2F",
        "oauth/%74oken",
        "oauth/t%6fken",
        "oauth/token;x",
        "oauth/token%3Bx",
        "oauth/token.",
        "oauth/token..",
        "oauth/token%2E",
        "oauth/token%20",
        "oauth/token.%20.",
        "oauth/x/../token",
        "oauth/x/%2e%2e/token",
        "oauth;v=1/token",
    ],
)
async def test_a_path_that_resolves_to_the_token_url_is_refused_before_anything_is_sent(
    rig: Rig, stack: Stack, path: str
) -> None:
    """With the API root above the token endpoint, /api/proxy/<p>/oauth/token is 400 invalid_request, however
    it is spelled: case, percent-encoding, ';' parameters, trailing dots and spaces, dot segments."""
    tokens_root = stack.servers.url("tokens") + "/"
    async with rig.open(BROKER_ILEVEL_API_BASE_URL=tokens_root) as api:
        response = await api.get(f"/api/proxy/ilevel/{path}", token=stack.caller(), method="POST", content=b"x=1")
    if response.status_code == 400:
        broker_error(response, 400, "invalid_request")
    assert response.status_code == 400
    assert stack.tokens.request_count == 0


# --- bounded decoding, raw headers ------------------------------------------------------------------


async def test_the_upstream_is_asked_for_identity_and_a_small_gzip_answer_is_decoded(
    proxy: ProxyApi, stack: Stack, data_api: DataApi
) -> None:
    """Accept-Encoding: identity upstream; a compressed answer anyway is decoded and passed on plain."""
    response = await proxy.get("/api/proxy/ilevel/gzip?bytes=5000", token=stack.caller())
    assert response.status_code == 200
    assert response.content == bytes(5000)
    assert "content-encoding" not in response.headers
    assert data_api.requests[-1].headers["accept-encoding"] == "identity"


@pytest.mark.slow
async def test_a_gzip_bomb_is_a_502_and_costs_a_few_mib_at_most(rig: Rig, stack: Stack) -> None:
    """64 MiB of zeros in ~64 KB of gzip against a 1 MiB cap: 502 invalid_response, < 8 MiB allocated."""
    async with rig.open(BROKER_PROXY_MAX_RESPONSE_MB="1") as api:
        caller = stack.caller()
        await api.get("/api/proxy/ilevel/gzip?bytes=1000", token=caller)  # warm: token, connections
        tracemalloc.start()
        try:
            response = await api.get(f"/api/proxy/ilevel/gzip?bytes={64 * MIB}", token=caller)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    broker_error(response, 502, "invalid_response")
    assert "BROKER_PROXY_MAX_RESPONSE_MB" in response.json()["error_description"]
    assert peak < 8 * MIB, f"peak {peak / MIB:.1f} MiB"


async def test_a_utf8_header_passes_byte_for_byte_and_is_never_a_500(proxy: ProxyApi, stack: Stack) -> None:
    """Content-Disposition with '€' in raw UTF-8 bytes: 200, the same bytes."""
    response = await proxy.get("/api/proxy/ilevel/disposition", token=stack.caller())
    assert response.status_code == 200
    raw = dict(response.headers.raw)
    assert raw[b"content-disposition"] == 'attachment; filename="€-report.csv"'.encode()


# --- request hygiene --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_no_body_is_forwarded_on_get_or_head(
    proxy: ProxyApi, stack: Stack, data_api: DataApi, method: str
) -> None:
    """A GET or HEAD with a body reaches the API without it."""
    response = await proxy.get("/api/proxy/ilevel/echo", token=stack.caller(), method=method, content=b"x" * 100)
    assert response.status_code == 200
    assert data_api.requests[-1].body == b""
    if method == "GET":
        assert response.json()["body_bytes"] == 0


@pytest.mark.parametrize("key", ["code", "Code", "CODE"])
async def test_code_is_dropped_in_any_case_and_the_token_route_accepts_it(
    rig: Rig, stack: Stack, data_api: DataApi, key: str
) -> None:
    """The Functions key never reaches the API, however it is cased; the token route ignores it too."""
    async with rig.open(BROKER_ILEVEL_MODE="both") as api:
        caller = stack.caller()
        response = await api.get(f"/api/proxy/ilevel/echo?{key}=functions-key&x=1", token=caller)
        assert response.status_code == 200
        assert data_api.requests[-1].query == "x=1"
        token_route = await api.client.get(f"/api/token/ilevel?{key}=k", headers={"Authorization": f"Bearer {caller}"})
        assert token_route.status_code == 200


# --- streaming ----------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_large_json_page_comes_back_valid_with_every_link_rewritten(proxy: ProxyApi, stack: Stack) -> None:
    """A 3 MiB JSON:API page, streamed in chunks: valid JSON, every absolute link through the broker."""
    response = await proxy.get("/api/proxy/ilevel/bigjson?bytes=3145728", token=stack.caller())
    assert response.status_code == 200
    document = json.loads(response.content)
    selves = [item["links"]["self"] for item in document["data"]]
    assert len(selves) > 5000
    assert all("/api/proxy/ilevel/entities/assets/" in link for link in selves)
    assert "/api/proxy/ilevel/entities/assets" in document["links"]["next"]
    assert b"/v1/" not in response.content


# --- a fair share -----------------------------------------------------------------------------------


@pytest.mark.serial
async def test_a_caller_holding_its_share_leaves_the_other_slots_to_others(
    rig: Rig, stack: Stack, data_api: DataApi
) -> None:
    """PROXY_CONCURRENCY=4: caller A's 4 slow requests hold 2 slots; caller B's requests run at once."""
    async with rig.open(BROKER_ILEVEL_PROXY_CONCURRENCY="4") as api:
        a, b = stack.caller(), stack.caller()
        await api.get("/api/proxy/ilevel/entities/assets", token=b)  # warm: token and connections
        holders = [
            asyncio.create_task(api.get(f"/api/proxy/ilevel/hold?seconds=1.5&tag=a-{rig.host}", token=a))
            for _ in range(4)
        ]
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        fast = await asyncio.gather(*(api.get("/api/proxy/ilevel/entities/assets", token=b) for _ in range(2)))
        elapsed = time.perf_counter() - started
        held = await asyncio.gather(*holders)
    assert [r.status_code for r in fast] == [200, 200]
    assert elapsed < 0.8, f"caller B waited {elapsed:.2f} s"
    assert [r.status_code for r in held] == [200] * 4
    assert data_api.max_in_flight(f"a-{rig.host}") == 2


@pytest.mark.slow
async def test_past_the_slot_wait_the_answer_is_503_proxy_busy_and_counted(
    rig: Rig, stack: Stack, data_api: DataApi
) -> None:
    """PROXY_CONCURRENCY=1, SLOT_WAIT=1: a second request waits 1 s, then 503 proxy_busy with Retry-After."""
    metrics = Metrics()
    broker = rig.broker(
        settings={"BROKER_ILEVEL_PROXY_CONCURRENCY": "1", "BROKER_PROXY_SLOT_WAIT_SECONDS": "1"},
        telemetry=metrics.telemetry,
    )
    async with rig.open(broker) as api:
        caller = stack.caller()
        holder = asyncio.create_task(api.get("/api/proxy/ilevel/hold?seconds=2.5", token=caller))
        await asyncio.sleep(0.5)
        started = time.perf_counter()
        busy = await api.get("/api/proxy/ilevel/entities/assets", token=stack.caller())
        waited = time.perf_counter() - started
        assert (await holder).status_code == 200
    broker_error(busy, 503, "proxy_busy")
    assert int(busy.headers["retry-after"]) >= 1
    assert "BROKER_PROXY_SLOT_WAIT_SECONDS" in busy.json()["error_description"]
    assert 0.9 <= waited < 2.0
    assert metrics.counts("broker.proxy.busy", "provider") == {("ilevel",): 1}
    assert metrics.counts("broker.proxy.slot_waits", "provider", "outcome")[("ilevel", "busy")] == 1


# --- the memory budget at start ---------------------------------------------------------------------


async def test_a_proxy_that_cannot_fit_the_instance_answers_503_broker_misconfigured_naming_the_setting(
    stack: Stack, data_api: DataApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Functions entry point, 8 x 32 MiB x 2 + 256 MB > 512 MB: every request, health included, is 503."""
    stack.export_environment()
    for name, value in {
        "BROKER_ILEVEL_MODE": "proxy",
        "BROKER_ILEVEL_API_BASE_URL": data_api.base_url,
        "BROKER_INSTANCE_MEMORY_MB": "512",
    }.items():
        monkeypatch.setenv(name, value)
    async with functions_host() as client:
        for path in ("/api/health", "/api/proxy/ilevel/entities/assets"):
            response = await client.get(path, headers={"Authorization": f"Bearer {stack.caller()}"})
            assert (response.status_code, response.json()["error"]) == (503, "broker_misconfigured")
            assert "BROKER_INSTANCE_MEMORY_MB" in response.json()["error_description"]
    assert data_api.requests == []


@pytest.mark.parametrize("host", ["serve"])
async def test_a_caller_that_goes_away_mid_body_frees_its_slot_at_once(rig: Rig, stack: Stack) -> None:
    """serve streams: when the caller disconnects, the broker stops reading upstream and frees the slot."""
    async with rig.open(BROKER_ILEVEL_PROXY_CONCURRENCY="1", BROKER_PROXY_SLOT_WAIT_SECONDS="5") as api:
        caller = {"Authorization": f"Bearer {stack.caller()}"}
        url = f"/api/proxy/ilevel/large?bytes={2 * 1024 * MIB}&length=0"
        async with api.client.stream("GET", url, headers=caller) as response:
            assert response.status_code == 200
            async for _ in response.aiter_raw():
                break
        started = time.perf_counter()
        after = await api.client.get("/api/proxy/ilevel/entities/assets", headers=caller)
        # Reading the rest of 2 GiB for nobody would hold the one slot far past the 5 s wait: 503.
        assert after.status_code == 200
        assert time.perf_counter() - started < 5
