"""bench/proxy.py runs with tiny parameters against real stand-ins and reports figures with same-run baselines."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench import proxy
from bench.stack import StandIns, standins


@pytest.fixture(scope="module")
def bench_standins() -> Iterator[StandIns]:
    with standins() as running:
        yield running


@pytest.mark.slow
def test_the_proxy_bench_compares_against_direct_and_counts_one_token_request(
    bench_standins: StandIns, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Throughput and latency beside direct, memory beside the body size, 1 token request for a cold burst."""
    for name, value in bench_standins.identity_env().items():
        monkeypatch.setenv(name, value)
    record = proxy.run(
        bench_standins, rounds=1, duration_s=0.4, connections=2, warmup_s=0.1, body_bytes=2 * 1024 * 1024, burst=20
    )
    figures = {f.name: f for f in record["figures"]}
    assert all(f.value >= 0 and f.baseline > 0 for f in figures.values())
    burst = figures["proxy: cold burst of 20, token requests"]
    assert (burst.value, burst.met) == (1, True)
    memory = [f for name, f in figures.items() if name.startswith("proxy: peak RSS")]
    assert len(memory) == 4 and all(f.baseline == 2 for f in memory)
    assert any(name.startswith("proxy: health p99") for name in figures)
    assert record["details"]["page_bytes"] > 9000
    assert set(record["details"]["summary"]) == set(proxy.SERIES)
