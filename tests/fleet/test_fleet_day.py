"""A simulated day for a fleet of four instances on the injected clock: the one-instance token budget holds."""

from __future__ import annotations

import asyncio
import random
import time

from broker.cache import Served
from tests.conftest import Stack
from tests.fleet.support import counted_telemetry, events

# The one-instance figure (bench/README.md, bench 4): a 24 h day with 1-h tokens takes at most 27 requests.
ONE_INSTANCE_TOKEN_REQUESTS = 27
INSTANCES = 4


class SimulatedClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


async def test_simulated_day_of_four_instances_stays_within_one_instance_budget(fleet_stack: Stack) -> None:
    """24 simulated hours, each of four instances getting the one-instance day's traffic (a request every
    10-30 s): <= 27 token requests for the whole fleet, and no request waits for a token."""
    clock = SimulatedClock(time.time())
    brokers = [fleet_stack.broker(clock=clock, telemetry=counted_telemetry()) for _ in range(INSTANCES)]
    caches = [b.providers["ilevel"].cache for b in brokers]
    # The cold start of each instance (served by one fetch and three fleet hits).
    await asyncio.gather(*(c.get(min_validity=300) for c in caches))
    cold_waits = sum(events(b).get("wait", 0) for b in brokers)
    rng = random.Random(14)
    end = clock.now + 24 * 3600
    waited: list[Served] = []
    requests = 0
    while clock.now < end:
        for cache in rng.sample(caches, len(caches)):
            served = await cache.get(min_validity=300)
            requests += 1
            if served.outcome in ("fetched", "refreshed"):
                waited.append(served)
            while any(c.fetching for c in caches):  # a background refresh lands before time moves on
                await asyncio.sleep(0.001)
        clock.now += rng.uniform(10, 30)
    assert requests > 4 * 4000
    assert fleet_stack.tokens.request_count <= ONE_INSTANCE_TOKEN_REQUESTS
    assert waited == []
    assert sum(events(b).get("wait", 0) for b in brokers) == cold_waits
    print(f"fleet day: {requests} requests, {fleet_stack.tokens.request_count} token requests, 0 waits")
