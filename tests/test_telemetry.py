"""Telemetry: OpenTelemetry instruments fire with provider/outcome attributes; one structured log line per request."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.http import REQUEST_ID_HEADER
from broker.telemetry import Telemetry, configure_exporter
from broker.tokens import fingerprint
from tests.conftest import Stack, leaks
from tests.hosts import open_host


class Metrics:
    """Reads what the real OpenTelemetry SDK collected, by instrument name."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[self.reader]))

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def counts(self, name: str, *keys: str) -> Counter[tuple[str, ...]]:
        return Counter({tuple(p.attributes[k] for k in keys): p.value for p in self.points(name)})


@pytest.fixture
async def measured(stack: Stack, host: str) -> AsyncIterator[tuple[httpx.AsyncClient, Metrics]]:
    """The broker on ``host`` (both, as every contract test), its instruments read from the real SDK."""
    metrics = Metrics()
    broker = stack.broker(telemetry=metrics.telemetry)
    async with open_host(host, broker) as client:
        yield client, metrics
    await broker.aclose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_served_requests_are_counted_by_provider_and_outcome(
    measured: tuple[httpx.AsyncClient, Metrics], stack: Stack
) -> None:
    """A cold request counts as fetched, the next as a cache hit; remaining lifetime is recorded for both."""
    client, metrics = measured
    caller = stack.caller()
    await client.get("/api/token/ilevel", headers=bearer(caller))
    await client.get("/api/token/ilevel", headers=bearer(caller))
    assert metrics.counts("broker.token.requests", "provider", "outcome") == {
        ("ilevel", "fetched"): 1,
        ("ilevel", "hit"): 1,
    }
    lifetimes = metrics.points("broker.token.remaining_lifetime")
    assert sum(p.count for p in lifetimes) == 2
    assert all(3500 < p.max <= 3600 for p in lifetimes)


async def test_upstream_fetches_and_key_vault_reads_are_counted_and_timed(
    measured: tuple[httpx.AsyncClient, Metrics], stack: Stack
) -> None:
    """One fetch: one success with a latency sample, and one successful read per secret."""
    client, metrics = measured
    await client.get("/api/token/ilevel", headers=bearer(stack.caller()))
    assert metrics.counts("broker.upstream.fetches", "provider", "outcome") == {("ilevel", "success"): 1}
    (latency,) = metrics.points("broker.upstream.fetch.duration")
    assert latency.count == 1 and latency.attributes["outcome"] == "success"
    assert metrics.counts("broker.keyvault.reads", "provider", "secret", "outcome") == {
        ("ilevel", "ilevel-client-id", "success"): 1,
        ("ilevel", "ilevel-client-secret", "success"): 1,
    }


async def test_failures_are_counted_with_their_error_code(
    measured: tuple[httpx.AsyncClient, Metrics], stack: Stack
) -> None:
    """A rejected fetch counts as invalid_client on both the upstream and the served counters."""
    client, metrics = measured
    stack.tokens.revoke(stack.client_id, stack.client_secret)
    response = await client.get("/api/token/ilevel", headers=bearer(stack.caller()))
    assert response.status_code == 502
    assert metrics.counts("broker.upstream.fetches", "outcome")[("invalid_client",)] >= 1
    assert metrics.counts("broker.token.requests", "provider", "outcome") == {("ilevel", "invalid_client"): 1}


async def test_caller_authentication_failures_are_counted_by_reason(
    measured: tuple[httpx.AsyncClient, Metrics], stack: Stack
) -> None:
    """Missing and expired caller tokens are counted under their reasons."""
    client, metrics = measured
    await client.get("/api/token/ilevel")
    expired = stack.entra.mint(stack.entra.tenant_id, aud="api://ilevel-token-broker", expires_in=-3600)
    await client.get("/api/token/ilevel", headers=bearer(expired))
    assert metrics.counts("broker.caller_auth.failures", "reason", "outcome") == {
        ("missing", "rejected"): 1,
        ("expired", "rejected"): 1,
    }


async def test_one_log_line_per_request_with_its_id_caller_outcome_and_token_fingerprint(
    measured: tuple[httpx.AsyncClient, Metrics], stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """The access line carries the request id returned to the caller, the caller oid, and only a token fingerprint."""
    client, _ = measured
    oid = "5f0c1c3e-0000-4000-8000-000000000001"
    response = await client.get("/api/token/ilevel", headers=bearer(stack.caller(oid=oid)))
    request_id = response.headers[REQUEST_ID_HEADER]
    lines = [r.getMessage() for r in caplog.records if r.name == "broker.access"]
    assert len(lines) == 1
    line = lines[0]
    assert f"id={request_id}" in line and f"caller_oid={oid}" in line
    assert "provider=ilevel" in line and "outcome=fetched" in line and "latency_ms=" in line
    assert f"token={fingerprint(response.json()['access_token'])}" in line


async def test_a_cached_token_writes_no_line_but_is_counted_with_its_caller_and_timed(
    measured: tuple[httpx.AsyncClient, Metrics], stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """A hit is the metrics' alone (exporting a line costs more than the hit): the fetch before it and a
    failure after it still write one line each, and every answer is counted with the caller who got it."""
    client, metrics = measured
    oid = "5f0c1c3e-0000-4000-8000-000000000002"
    caller = stack.caller(oid=oid)
    for _ in range(3):
        assert (await client.get("/api/token/ilevel", headers=bearer(caller))).status_code == 200
    assert (await client.get("/api/token/nowhere", headers=bearer(caller))).status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "broker.access"]
    assert [line.split("outcome=")[1].split()[0] for line in lines] == ["fetched", "unknown_provider"]
    counted = metrics.counts("broker.token.requests", "outcome", "caller_oid", "caller_appid")
    appid = lines[0].split("caller_appid=")[1].split()[0]
    assert counted[("hit", oid, appid)] == 2 and counted[("fetched", oid, appid)] == 1
    assert counted[("unknown_provider", oid, appid)] == 1
    timed = {p.attributes["outcome"]: p for p in metrics.points("broker.token.duration")}
    assert timed["hit"].count == 2 and timed["fetched"].count == 1 and timed["unknown_provider"].count == 1
    assert 0 < timed["hit"].sum / 2 < timed["fetched"].sum, "a hit is timed, and faster than the fetch"


def test_no_export_without_an_application_insights_connection_string() -> None:
    """Without APPLICATIONINSIGHTS_CONNECTION_STRING telemetry is not exported (the API's no-op instruments remain)."""
    assert configure_exporter({}) == "none"


async def test_a_fetch_is_traced_with_key_vault_reads_and_the_upstream_request(stack: Stack) -> None:
    """A cold request leaves spans for each secret read and the token request, with no secret in any attribute."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    broker = stack.broker(telemetry=Telemetry(tracer_provider=tracer_provider))
    caller = await broker.authenticate(f"Bearer {stack.caller()}")
    await broker.token(caller, "ilevel", min_validity=300, force=False)
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["broker.secret.read", "broker.secret.read", "broker.upstream.fetch"]
    assert {s.attributes["secret"] for s in spans if s.name == "broker.secret.read"} == {  # type: ignore[index]
        "ilevel-client-id",
        "ilevel-client-secret",
    }
    assert not leaks(" ".join(str(dict(s.attributes or {})) for s in spans))
    await broker.aclose()
