"""Bench 4: a simulated day of steady traffic with 1-hour tokens, through the real broker stack.

The broker runs in this process with an injected clock (``Overrides.clock``); everything
else is real: caller-token validation against the Entra stand-in, Key Vault reads over TLS
with the managed-identity stand-in, and the token endpoint, which answers after
``latency_s`` of real time and issues ``expires_in=3600`` tokens. One request every 10-30
simulated seconds (seeded); a pipeline's caller token is renewed every simulated hour.
Between requests the simulation lets any background refresh finish (a real fetch takes
milliseconds, the gap between requests is seconds).

A request "waited" on the token endpoint if the broker served it as ``fetched`` or
``refreshed`` (the ``broker.token.requests`` counter, read with the OpenTelemetry SDK's
in-memory reader), cross-checked by its real latency reaching the endpoint's latency.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import MutableMapping
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from bench.asgi import StatusRecorder, http_scope
from bench.stack import StandIns
from bench.stats import Figure
from broker.app import create_app
from broker.cache import REFRESH_LEAD_S, REFRESH_MAX_S
from broker.routes.token import DEFAULT_MIN_VALIDITY_S
from broker.telemetry import Telemetry

TOKEN_LIFETIME_S = 3600
TARGET_TOKEN_REQUESTS = 25
TARGET_READS_PER_FETCH = 2
CALLER_RENEWAL_S = 3600.0
WAITING_OUTCOMES = ("fetched", "refreshed")


class SimulatedClock:
    """Wall-clock seconds that move only when told to."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _outcomes(reader: InMemoryMetricReader) -> dict[str, int]:
    counts: dict[str, int] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != "broker.token.requests":
                    continue
                for point in metric.data.data_points:
                    outcome = str(point.attributes.get("outcome")) if point.attributes else "?"
                    if isinstance(point, NumberDataPoint):
                        counts[outcome] = counts.get(outcome, 0) + int(point.value)
    return counts


async def _simulate(
    servers: StandIns, *, hours: float, step_s: tuple[float, float], latency_s: float, seed: int
) -> dict[str, Any]:
    clock = SimulatedClock(time.time())
    start = clock.now
    reader = InMemoryMetricReader()
    broker = servers.broker(clock=clock, telemetry=Telemetry(meter_provider=MeterProvider(metric_readers=[reader])))
    app = create_app(broker)
    cache = broker.provider("ilevel").cache
    rng = random.Random(seed)
    send = StatusRecorder()
    slow: list[float] = []  # simulated times of requests whose real latency reached the endpoint's
    fetch_times: list[float] = []
    requests = 0
    caller_minted = -math.inf
    scope: MutableMapping[str, Any] = {}
    end = start + hours * 3600
    try:
        while clock.now < end:
            if clock.now - caller_minted >= CALLER_RENEWAL_S:
                caller_minted = clock.now
                # Minted at real time: PyJWT checks ``iat`` against the real clock (bench/README.md).
                lifetime = int(end - time.time()) + 7200
                auth = f"Bearer {servers.caller(lifetime_s=lifetime)}".encode()
                scope = http_scope("/api/token/ilevel", [(b"authorization", auth)])
            before = servers.token_requests
            began = time.perf_counter()

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            await app(dict(scope), receive, send)
            if time.perf_counter() - began >= latency_s * 0.9:
                slow.append(clock.now - start)
            requests += 1
            while cache.fetching:  # a background refresh: let it land before time moves on
                await asyncio.sleep(0.001)
            if servers.token_requests > before:
                fetch_times.append(clock.now - start)
            clock.advance(rng.uniform(*step_s))
        outcomes = _outcomes(reader)
    finally:
        await broker.aclose()
    return {
        "requests": requests,
        "statuses": {str(k): v for k, v in send.statuses.items()},
        "outcomes": outcomes,
        "slow_request_times_s": [round(t, 1) for t in slow],
        "fetch_times_s": [round(t, 1) for t in fetch_times],
    }


def run(
    servers: StandIns,
    *,
    hours: float = 24.0,
    step_s: tuple[float, float] = (10.0, 30.0),
    latency_s: float = 0.05,
    seed: int = 5,
) -> dict[str, Any]:
    """Simulate; return the bench's JSON record (``figures`` and ``details``)."""
    servers.reset()
    servers.tokens.expires_in = TOKEN_LIFETIME_S
    servers.tokens.latency_s = latency_s
    try:
        sim = asyncio.run(_simulate(servers, hours=hours, step_s=step_s, latency_s=latency_s, seed=seed))
        token_requests = servers.token_requests
        reads = sum(servers.secret_reads().values())
    finally:
        servers.reset()
    if set(sim["statuses"]) != {"200"}:
        raise RuntimeError(f"simulated day: unexpected statuses {sim['statuses']}")
    waited = sum(sim["outcomes"].get(name, 0) for name in WAITING_OUTCOMES)
    waited_after_first = max(0, waited - 1)
    slow_after_first = max(0, len(sim["slow_request_times_s"]) - 1)
    intervals = [b - a for a, b in zip(sim["fetch_times_s"], sim["fetch_times_s"][1:], strict=False)]
    # The core issue's rule: refresh when remaining <= max(window, min_validity + lead), window <= 300 s.
    threshold = max(REFRESH_MAX_S, DEFAULT_MIN_VALIDITY_S + REFRESH_LEAD_S)
    period = TOKEN_LIFETIME_S - threshold
    expected = 1 + math.floor(hours * 3600 / period)
    ideal = math.ceil(hours * 3600 / TOKEN_LIFETIME_S)
    reads_per_fetch = reads / token_requests if token_requests else 0.0
    figures = [
        Figure(
            "day",
            f"day ({hours:g} h): token requests",
            token_requests,
            ideal,
            "count",
            "one per 1-h token lifetime",
            target=f"<= {TARGET_TOKEN_REQUESTS}" if hours == 24 else "",
            met=token_requests <= TARGET_TOKEN_REQUESTS if hours == 24 else None,
        ),
        Figure(
            "day",
            "day: Key Vault reads per token request",
            reads_per_fetch,
            2,
            "",
            "secrets per credential pair",
            target=f"<= {TARGET_READS_PER_FETCH}",
            met=0 < reads_per_fetch <= TARGET_READS_PER_FETCH,
        ),
        Figure(
            "day",
            "day: requests that waited after the first",
            waited_after_first,
            sim["requests"],
            "count",
            "requests served",
            target="= 0",
            met=waited_after_first == 0 and slow_after_first == 0,
        ),
    ]
    details = {
        **sim,
        "hours": hours,
        "step_s": list(step_s),
        "token_latency_s": latency_s,
        "token_requests": token_requests,
        "key_vault_reads": reads,
        "waited_after_first": waited_after_first,
        "slow_after_first": slow_after_first,
        "refresh_interval_s": {"min": min(intervals, default=0.0), "max": max(intervals, default=0.0)},
        "arithmetic": (
            f"refresh starts at remaining <= max({REFRESH_MAX_S:g} s window, {DEFAULT_MIN_VALIDITY_S} s min_validity "
            f"+ {REFRESH_LEAD_S:g} s lead) = {threshold:g} s, i.e. every ~{period:g} s plus up to one request gap; "
            f"1 + floor({hours * 3600:g} / {period:g}) = {expected} token requests in {hours:g} h; "
            f"<= {TARGET_TOKEN_REQUESTS} in 24 h would need a refresh interval > {86400 / TARGET_TOKEN_REQUESTS:g} s, "
            f"i.e. refreshing < {TOKEN_LIFETIME_S - 86400 / TARGET_TOKEN_REQUESTS:g} s before expiry"
        ),
        "expected_token_requests": expected,
    }
    return {"figures": figures, "details": details}
