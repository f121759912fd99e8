"""bench/workbook/, the tool that draws docs/workbook.png: it records a local log and draws the workbook's panels."""

from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path

import pytest

from bench.workbook import night, panels
from broker.standin.azurite import AZURITE_BIN

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "infra"))
from monitoring_queries import WORKBOOK_JSON, workbook_queries  # noqa: E402
from test_kql_queries import Query  # noqa: E402


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two simulated hours of the night (the misconfigured pipeline and the first rotation included)."""
    path = tmp_path_factory.mktemp("workbook") / "night.jsonl"
    assert night.record(path, hours=2.1) > 100
    return path


def test_every_workbook_panel_is_drawn_and_nothing_else() -> None:
    """The drawing's panels are the deployed workbook's query items, by name."""
    assert set(panels.PANELS) == set(workbook_queries())


@pytest.mark.parametrize(("name", "query"), sorted(workbook_queries().items()))
def test_each_panel_reads_the_fields_and_metrics_its_query_reads(name: str, query: str) -> None:
    """Every field a panel's query extracts and every metric and logger it names appear in its Python logic."""
    source = inspect.getsource(panels.PANELS[name]) + inspect.getsource(panels._access)
    parsed = Query(name, query)
    for key in parsed.fields:
        assert f'"{key}"' in source, f"{name}: the drawing does not read {key}="
    for metric in parsed.metrics:
        assert f'"{metric}"' in source, f"{name}: the drawing does not read {metric}"
    for logger in parsed.loggers:
        assert f'"{logger}"' in source, f"{name}: the drawing does not read logger {logger}"
    for _, text in parsed.messages:
        assert f'"{text}"' in source, f"{name}: the drawing does not filter on {text!r}"


@pytest.mark.slow
def test_the_recorded_log_has_rows_for_the_panels(recorded: Path) -> None:
    """The night's rows give the token, latency, proxy, rejection, caller and fetch panels something to show."""
    rows = panels.load(recorded)
    grain = 900.0
    assert {"hit", "fetched"} <= set(panels.tokens_by_outcome(rows, grain))
    assert {"token p50", "token p95", "proxy p50", "proxy p95", "token hit mean"} <= set(
        panels.latency_by_route(rows, grain)
    )
    assert {status for _, status, _, _ in panels.proxy_by_provider(rows)} >= {"2xx", "4xx"}
    assert {reason for reason, _ in panels.rejections_by_reason(rows)} >= {"missing", "audience"}
    assert len(panels.top_callers(rows)) >= 5
    fetches = panels.fetches_and_reads(rows, grain)
    assert {"broker.upstream.fetches", "broker.keyvault.reads", "rotation verified"} <= set(fetches)


@pytest.mark.slow
@pytest.mark.skipif(not AZURITE_BIN.exists(), reason="Azurite not installed: the night runs without the fleet cache")
def test_with_azurite_the_night_runs_on_a_fleet_whose_panel_has_hits_and_misses(recorded: Path) -> None:
    """Two instances share the fleet cache: one misses and leads the fetch, the other hits its token."""
    rows = panels.load(recorded)
    assert {"hit", "miss"} <= set(panels.fleet_cache(rows, 900.0))
    leases = [r for r in rows if r["table"] == "customMetrics" and r["customDimensions"].get("event") == "lease_won"]
    assert leases


@pytest.mark.slow
def test_hits_are_drawn_from_the_metrics_and_no_hit_writes_a_line(recorded: Path) -> None:
    """A cached token writes no access line: the panels count and time hits from broker.token.requests and
    broker.token.duration, with the caller's ids, so hits still lead the outcomes and the top callers."""
    rows = panels.load(recorded)
    assert not [r for r in panels._access(rows, "request ") if "outcome=hit " in r["message"]]
    counted = sum(r["valueSum"] for r in panels._hits(rows, "broker.token.requests"))
    assert counted == sum(panels.tokens_by_outcome(rows, 900.0)["hit"].values()) > 0
    assert all(r["customDimensions"]["caller_appid"] != "-" for r in panels._hits(rows, "broker.token.requests"))
    assert sum(requests for _, _, requests, _ in panels.top_callers(rows)) >= counted


@pytest.mark.slow
def test_the_recorded_rows_look_like_application_insights_rows(recorded: Path) -> None:
    """traces rows carry the broker's logger names; customMetrics rows are per-interval aggregates."""
    rows = panels.load(recorded)
    loggers = {r["customDimensions"]["logger_name"] for r in rows if r["table"] == "traces"}
    assert "broker.access" in loggers and all(name.startswith("broker.") for name in loggers)
    metrics = [r for r in rows if r["table"] == "customMetrics"]
    assert metrics and all(r["valueCount"] >= 1 and "name" in r for r in metrics)
    assert not any(re.search(r"Bearer |eyJ[A-Za-z0-9_-]{10,}\.", json.dumps(r)) for r in rows), "no token in the log"


@pytest.mark.slow
def test_the_panels_render_to_a_png(recorded: Path, tmp_path: Path) -> None:
    """The drawing writes a PNG with every panel, titled as in the workbook."""
    png = tmp_path / "workbook.png"
    panels.render(recorded, png, WORKBOOK_JSON)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000
