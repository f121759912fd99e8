"""Every bench in bench/ runs with tiny parameters against real stand-ins and reports a well-formed result."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import burst, coldstart, day, functions, inprocess, throughput
from bench.__main__ import main
from bench.stack import StandIns, standins
from bench.stats import Figure


@pytest.fixture(scope="module")
def servers() -> Iterator[StandIns]:
    with standins() as running:
        yield running


@pytest.fixture
def bench_servers(servers: StandIns, monkeypatch: pytest.MonkeyPatch) -> StandIns:
    for name, value in servers.identity_env().items():
        monkeypatch.setenv(name, value)
    return servers


def figures(record: dict[str, Any]) -> dict[str, Figure]:
    found = record["figures"]
    assert found and all(isinstance(f, Figure) for f in found)
    assert all(f.value >= 0 and f.baseline > 0 for f in found), "every figure has a baseline from the same run"
    assert len({f.name for f in found}) == len(found), "figure names are unique"
    return {f.name: f for f in found}


@pytest.mark.slow
def test_throughput_bench_measures_the_token_route_beside_health(bench_servers: StandIns) -> None:
    """Both routes answer only 200s under load, and the ratio is token RPS over health RPS."""
    record = throughput.run(bench_servers, rounds=1, duration_s=0.3, connections=2, warmup_s=0.05)
    found = figures(record)
    rps = found["HTTP: token route throughput"]
    summary = record["details"]["summary"]
    assert rps.ratio == pytest.approx(summary["token"]["rps"] / summary["health"]["rps"])
    assert rps.met is not None and rps.target == ">= 0.9x"
    assert record["details"]["upstream_token_requests"] == 1, "the whole load was served from one cached token"


@pytest.mark.slow
def test_functions_bench_measures_invocations_through_the_entry_point(bench_servers: StandIns) -> None:
    """Through function_app: a cached-token invocation beside a health one, and a cold burst that fetches once."""
    record = functions.run(bench_servers, rounds=1, requests=20, burst=25)
    found = figures(record)
    token = found["Functions entry point: cached-token invocation"]
    assert token.unit == "µs" and token.baseline_name == "health invocation, same path"
    assert found["Functions entry point: 25-invocation cold burst, token requests"].value == 1
    assert found["Functions entry point: 25-invocation cold burst, Key Vault reads per secret"].value == 1
    assert record["details"]["cold_burst"]["statuses"] == [200]


def test_inprocess_bench_reports_microseconds_beside_an_empty_handler(bench_servers: StandIns) -> None:
    """The cached-token request costs more than an empty ASGI handler, and the upstream saw one fetch."""
    record = inprocess.run(bench_servers, rounds=1, requests=20)
    token = figures(record)["in-process: cached-token request"]
    assert token.unit == "µs"
    assert token.ratio is not None and token.ratio > 1
    assert record["details"]["upstream_token_requests"] == 1


@pytest.mark.slow
def test_cold_burst_makes_exactly_one_token_request_and_one_read_per_secret(bench_servers: StandIns) -> None:
    """Concurrent requests on an empty cache share one fetch: one token request, one read of each secret."""
    record = burst.run(bench_servers, rounds=1, size=30)
    found = figures(record)
    assert found["cold burst: token requests (worst of 1)"].value == 1
    assert found["cold burst: Key Vault reads per secret (worst of 1)"].value == 1
    (round_,) = record["details"]["rounds"]
    assert round_["token"]["requests"] == 30 and round_["token"]["errors"] == 0
    assert round_["secret_reads"] == {"ilevel-client-id": 1, "ilevel-client-secret": 1}


def test_simulated_hours_refresh_ahead_so_no_request_waits_after_the_first(bench_servers: StandIns) -> None:
    """Two simulated hours of 1-hour tokens: refreshed in the background, two reads per fetch, nobody waits."""
    # 200 ms: far above what a cached request takes on a loaded machine, so "slow" means "waited upstream".
    record = day.run(bench_servers, hours=2, latency_s=0.2)
    found = figures(record)
    details = record["details"]
    assert details["token_requests"] == details["expected_token_requests"] == 3
    assert found["day: Key Vault reads per token request"].value == 2
    assert found["day: requests that waited after the first"].value == 0
    assert details["outcomes"].get("fetched") == 1 and details["slow_after_first"] == 0


@pytest.mark.slow
def test_cold_start_bench_serves_concurrent_first_tokens_in_a_fresh_interpreter(bench_servers: StandIns) -> None:
    """function_app answers 5 concurrent first token requests with 200 and one upstream fetch, beside a bare app."""
    record = coldstart.run(bench_servers, runs=1, calls=5, importtime=False, trip_runs=1, trip_s=0.05)
    found = figures(record)
    first = found["cold start: import + 5 concurrent first token requests (median of 1)"]
    assert first.unit == "ms" and first.target == "<= 1.5x"
    (broker_run,) = record["details"]["runs"]["broker"]
    assert (broker_run["statuses"], broker_run["calls"], broker_run["token_requests"]) == ([200], 5, 1)
    tripped = found["cold start, 50 ms per round trip: first token after import (median of 1)"]
    assert (round(tripped.baseline), tripped.target) == (150, "<= 300 ms")
    for kind in ("warm", "cold"):
        (run,) = record["details"]["with_round_trips"][kind]["runs"]
        assert (run["statuses"], run["token_requests"]) == ([200], 1), kind


def test_heaviest_imports_are_read_from_an_importtime_report() -> None:
    """-X importtime lines become top-level and first-level imports ranked by cumulative time."""
    report = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:       100 |        100 |   broker.config",
            "import time:       300 |       5000 | broker.http",
            "import time:        50 |         50 |     re._parser",
            "import time:       900 |       2000 | azure.identity",
        ]
    )
    assert coldstart.heaviest_imports(report) == [
        {"module": "broker.http", "level": 0, "cumulative_ms": 5.0},
        {"module": "azure.identity", "level": 0, "cumulative_ms": 2.0},
        {"module": "broker.config", "level": 1, "cumulative_ms": 0.1},
    ]


@pytest.mark.slow
def test_python_m_bench_prints_one_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m bench --smoke --only inprocess` prints the table header and writes the figures as JSON."""
    output = tmp_path / "latest.json"
    assert main(["--smoke", "--only", "inprocess", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "figure" in printed and "baseline" in printed and "ratio" in printed
    report = json.loads(output.read_text())
    assert report["smoke"] is True and report["machine"]["nproc"] >= 1
    (figure, *_) = report["benches"]["inprocess"]["figures"]
    assert {"name", "value", "baseline", "ratio", "target", "met", "unit"} <= set(figure)


@pytest.mark.slow
def test_runtime_bench_measures_inside_microsofts_worker(bench_servers: StandIns) -> None:
    """Inside azure_functions_runtime: token beside health, a large page, a cold start and memory per call,
    each beside its baseline from the same run."""
    from bench import runtime

    record = runtime.run(bench_servers, rounds=1, requests=10, cold_runs=1, body_bytes=1024 * 1024, calls=100)
    found = figures(record)
    assert found["Inside the worker: cached-token invocation p50"].baseline_name == "health invocation, same worker"
    assert record["details"]["rss_50mib"]["body"] == 1024 * 1024
    assert found["Inside the worker: RSS after 100 token invocations"].met is not None
