"""The fleet bench runs with tiny parameters on the session's Azurite and reports figures beside baselines."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench import fleet
from bench.stack import StandIns, environment, standins
from broker.standin.azurite import Azurite


@pytest.fixture
def bench_servers() -> Iterator[StandIns]:
    with standins() as running, environment(running.identity_env()):
        yield running


@pytest.mark.slow
def test_fleet_bench_measures_a_warm_fleet_beside_a_fresh_fetch(bench_servers: StandIns, azurite: Azurite) -> None:
    """A fresh instance with a warm fleet makes no token request; every figure has a same-run baseline."""
    record = fleet.run(bench_servers, rounds=1, misses=1, token_latency_s=0.0, azurite=azurite)
    found = {f.name: f for f in record["figures"]}
    assert all(f.baseline > 0 for f in found.values())
    requests = next(f for name, f in found.items() if name.startswith("fleet: token requests by"))
    assert requests.value == 0 and requests.met
    assert record["details"]["azurite_peak_rss_kib"] > 0
