"""The workbook's panels, drawn from a recorded night: the tool that draws docs/workbook.png.

``python -m bench.workbook render docs/workbook-sample.jsonl docs/workbook.png`` runs each panel's
query logic (infra/app/workbook.json, by item name) over the rows :mod:`bench.workbook.night` recorded
and plots the panels to a PNG. The logic is the query's, written in Python (there is no KQL engine
here): the same rows, fields, filters and groupings; percentiles are numpy's, not Kusto's estimate.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.workbook.night import Row

# The access line outcomes of a token served (anything else is a failed request).
SERVED = ("hit", "fetched", "refreshed", "stale")
# A cached token writes no access line: broker.token.requests counts it and broker.token.duration times it.
HIT = "hit"

# --- the panels' query logic ----------------------------------------------------------------------


def load(path: Path) -> list[Row]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _field(key: str, message: str, pattern: str = r"\S+") -> str | None:
    match = re.search(rf"{key}=({pattern})", message)
    return match.group(1) if match else None


def _access(rows: list[Row], *prefixes: str) -> Iterator[Row]:
    for row in rows:
        access = row["table"] == "traces" and row["customDimensions"].get("logger_name") == "broker.access"
        if access and row["message"].startswith(prefixes):
            yield row


def _hits(rows: list[Row], metric: str) -> Iterator[Row]:
    for row in rows:
        if row["table"] == "customMetrics" and row["name"] == metric and row["customDimensions"].get("outcome") == HIT:
            yield row


def _bin(timestamp: float, grain: float) -> float:
    return timestamp - timestamp % grain


Series = dict[str, dict[float, float]]


def tokens_by_outcome(rows: list[Row], grain: float) -> Series:
    series: Series = defaultdict(lambda: defaultdict(float))
    for row in _access(rows, "request "):
        outcome = _field("outcome", row["message"]) or ""
        if outcome != HIT:
            series[outcome][_bin(row["timestamp"], grain)] += 1
    for row in _hits(rows, "broker.token.requests"):
        series[HIT][_bin(row["timestamp"], grain)] += row["valueSum"]
    return series


def latency_by_route(rows: list[Row], grain: float) -> Series:
    import numpy

    samples: dict[tuple[str, float], list[float]] = defaultdict(list)
    for row in _access(rows, "request ", "proxy "):
        route = "proxy" if row["message"].startswith("proxy ") else "token"
        latency = _field("latency_ms", row["message"], r"[0-9.]+")
        if latency is not None and _field("outcome", row["message"]) != HIT:
            samples[(route, _bin(row["timestamp"], grain))].append(float(latency))
    series: Series = defaultdict(dict)
    for (route, at), values in samples.items():
        series[f"{route} p50"][at] = float(numpy.percentile(values, 50))
        series[f"{route} p95"][at] = float(numpy.percentile(values, 95))
    sums: dict[float, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in _hits(rows, "broker.token.duration"):
        cell = sums[_bin(row["timestamp"], grain)]
        cell[0] += row["valueSum"]
        cell[1] += row["valueCount"]
    for at, (total, count) in sums.items():
        series["token hit mean"][at] = 1000.0 * total / count
    return series


def proxy_by_provider(rows: list[Row]) -> list[tuple[str, str, int, float]]:
    table: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    for row in _access(rows, "proxy "):
        provider = _field("provider", row["message"]) or ""
        status = int(_field("status", row["message"], "[0-9]+") or 0)
        cell = table[(provider, f"{status // 100}xx")]
        cell[0] += 1
        cell[1] += int(_field("bytes", row["message"], "[0-9]+") or 0)
    return [(p, s, int(c[0]), round(c[1] / 1048576.0, 2)) for (p, s), c in sorted(table.items())]


def rejections_by_reason(rows: list[Row]) -> list[tuple[str, float]]:
    totals: Counter[str] = Counter()
    for row in rows:
        if row["table"] == "customMetrics" and row["name"] == "broker.caller_auth.failures":
            totals[str(row["customDimensions"].get("reason", ""))] += row["valueSum"]
    return totals.most_common()


def top_callers(rows: list[Row]) -> list[tuple[str, str, int, int]]:
    requests: Counter[tuple[str, str]] = Counter()
    failed: Counter[tuple[str, str]] = Counter()
    for row in _access(rows, "request ", "proxy "):
        message = row["message"]
        if _field("outcome", message) == HIT:
            continue
        key = (_field("caller_appid", message) or "", _field("caller_oid", message) or "")
        requests[key] += 1
        if message.startswith("proxy "):
            failed[key] += int(_field("status", message, "[0-9]+") or 0) >= 400
        else:
            failed[key] += _field("outcome", message) not in SERVED
    for row in _hits(rows, "broker.token.requests"):
        caller = row["customDimensions"]
        requests[(str(caller.get("caller_appid", "")), str(caller.get("caller_oid", "")))] += int(row["valueSum"])
    return [(appid, oid, n, failed[(appid, oid)]) for (appid, oid), n in requests.most_common(10)]


def fetches_and_reads(rows: list[Row], grain: float) -> Series:
    series: Series = defaultdict(lambda: defaultdict(float))
    for row in rows:
        if row["table"] == "customMetrics" and row["name"] in ("broker.upstream.fetches", "broker.keyvault.reads"):
            series[row["name"]][_bin(row["timestamp"], grain)] += row["valueSum"]
        elif row["table"] == "traces" and row["customDimensions"].get("logger_name") in (
            "broker.rotation",
            "broker.source",
        ):
            for kind in ("rotation verified", "rotation FAILED"):
                if row["message"].startswith(kind):
                    series[kind][_bin(row["timestamp"], grain)] += 1
    return series


def fleet_cache(rows: list[Row], grain: float) -> Series:
    series: Series = defaultdict(lambda: defaultdict(float))
    for row in rows:
        if row["table"] == "customMetrics" and row["name"] == "broker.fleet.events":
            event = str(row["customDimensions"].get("event", ""))
            if event in ("hit", "miss", "fallback"):
                series[event][_bin(row["timestamp"], grain)] += row["valueSum"]
    return series


# The workbook's query items (infra/app/workbook.json), by name, and the function that runs each one's logic.
PANELS: dict[str, Callable[..., Any]] = {
    "tokens-by-outcome": tokens_by_outcome,
    "latency-by-route": latency_by_route,
    "proxy-by-provider": proxy_by_provider,
    "rejections-by-reason": rejections_by_reason,
    "top-callers": top_callers,
    "fetches-and-reads": fetches_and_reads,
    "fleet-cache": fleet_cache,
}


# --- drawing -------------------------------------------------------------------------------------


def render(log: Path, png: Path, workbook: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    rows = load(log)
    titles = {
        item["name"]: item["content"]["title"]
        for item in json.loads(workbook.read_text(encoding="utf-8"))["items"]
        if item.get("type") == 3
    }
    if set(titles) != set(PANELS):
        raise SystemExit(f"the workbook's panels {sorted(titles)} are not the ones drawn here {sorted(PANELS)}")
    grain = 900.0
    figure, axes = plt.subplots(4, 2, figsize=(15, 17))
    flat = list(axes.flat)

    def when(at: float) -> datetime:
        return datetime.fromtimestamp(at, UTC)

    def timechart(axis: Any, series: Series, ylabel: str) -> None:
        if not series:
            axis.text(0.5, 0.5, "no rows in this log", ha="center", va="center", transform=axis.transAxes)
            axis.set_xticks([])
            axis.set_yticks([])
        for name in sorted(series):
            points = sorted(series[name].items())
            axis.plot([when(t) for t, _ in points], [v for _, v in points], marker=".", label=name)
        axis.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))
        axis.set_ylabel(ylabel)
        if series:
            axis.legend(fontsize=7, ncol=2)

    def table(axis: Any, header: list[str], cells: list[list[str]]) -> None:
        axis.axis("off")
        if not cells:
            axis.text(0.5, 0.5, "no rows in this log", ha="center", va="center", transform=axis.transAxes)
            return
        drawn = axis.table(cellText=cells, colLabels=header, loc="upper center", cellLoc="left")
        drawn.auto_set_font_size(False)
        drawn.set_fontsize(7)
        drawn.scale(1, 1.3)

    timechart(flat[0], tokens_by_outcome(rows, grain), "requests / 15 min")
    timechart(flat[1], latency_by_route(rows, grain), "ms")
    flat[1].set_yscale("log")
    table(
        flat[2],
        ["provider", "status", "requests", "MiB"],
        [[p, s, str(n), f"{m:.2f}"] for p, s, n, m in proxy_by_provider(rows)],
    )
    reasons = rejections_by_reason(rows)
    flat[3].barh([r for r, _ in reasons][::-1], [v for _, v in reasons][::-1])
    flat[3].set_xlabel("rejected caller tokens")
    table(
        flat[4],
        ["caller_appid", "caller_oid", "requests", "failed"],
        [
            [a[:13] + "…" if len(a) > 14 else a, o[:13] + "…" if len(o) > 14 else o, str(n), str(f)]
            for a, o, n, f in top_callers(rows)
        ],
    )
    fetches = fetches_and_reads(rows, grain)
    marks = {k: fetches.pop(k) for k in ("rotation verified", "rotation FAILED") if k in fetches}
    timechart(flat[5], fetches, "per 15 min")
    for kind, colour in (("rotation verified", "green"), ("rotation FAILED", "red")):
        for at in marks.get(kind, {}):
            flat[5].axvline(when(at), color=colour, linestyle="--", linewidth=1)
            flat[5].text(when(at), flat[5].get_ylim()[1] * 0.95, kind, rotation=90, fontsize=7, color=colour, va="top")
    timechart(flat[6], fleet_cache(rows, grain), "events / 15 min")
    flat[7].axis("off")
    started, ended = when(rows[0]["timestamp"]), when(rows[-1]["timestamp"])
    flat[7].text(
        0,
        0.9,
        f"Recorded locally: the broker against the stand-ins,\n{started:%Y-%m-%d %H:%M}–{ended:%H:%M} UTC (simulated), "
        f"{len(rows)} rows.\nPanels: infra/app/workbook.json, same queries' logic.\n"
        "Drawn by: python -m bench.workbook render",
        fontsize=9,
        va="top",
    )
    for axis, name in zip(flat, PANELS, strict=False):
        axis.set_title(titles[name], fontsize=10)
    figure.suptitle("iLevel token broker: the workbook's panels over a recorded local night", fontsize=13)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(png, dpi=80)
