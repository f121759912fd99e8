"""The operators' workbook, drawn from a local run: record a log, then plot the workbook's panels from it.

``python -m bench.workbook record docs/workbook-sample.jsonl`` runs the real broker (in this process,
with a simulated clock) against the stand-ins for six simulated hours: two pipelines on the token
route, two copy activities through the proxy route, a misconfigured pipeline and a prober, a good
rotation, a bad one and its fix, an iLevel outage and a lost Key Vault role. With Azurite installed
(``make test`` installs it into .venv/tools/azurite) the night runs on a fleet of two broker
instances sharing the fleet token cache (broker/fleet/), each request going to either instance, and
the storage is down for a quarter of an hour (Azurite killed, restarted, its container recreated); without Azurite
the recorder says so and records one instance without the fleet cache. Every log record of the
``broker`` loggers becomes a ``traces`` row, and every five simulated minutes the OpenTelemetry
instruments' deltas become ``customMetrics`` rows: the rows Application Insights would hold.

``python -m bench.workbook render docs/workbook-sample.jsonl docs/workbook.png`` runs each panel's
query logic (infra/app/workbook.json, by item name) over those rows and plots the panels to a PNG.
The logic is the query's, written in Python (there is no KQL engine here): the same rows, fields,
filters and groupings; percentiles are numpy's, not Kusto's estimate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import re
import secrets
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import Counter as SdkCounter
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, HistogramDataPoint, InMemoryMetricReader

from bench.asgi import StatusRecorder, http_scope
from bench.day import SimulatedClock
from bench.stack import AUDIENCE, ROLE, StandIns, environment, standins
from broker.app import create_app
from broker.config import DEFAULT_FLEET_KEY_SECRET, FLEET_CONTAINER, load_settings
from broker.rotation import NEW_VERSION_EVENT, check_rotation_event
from broker.runtime import Broker, Overrides
from broker.standin.azurite import ACCOUNT_KEY, Azurite
from broker.standin.dataapi import DataApi
from broker.standin.faults import Reply
from broker.standin.serve import run_server
from broker.telemetry import Telemetry

Row = dict[str, Any]
BIN_S = 300.0
HOURS = 6.0
DAY_S = 86400.0
SERVED = ("hit", "fetched", "refreshed", "stale")
# Broker instances sharing the fleet cache when Azurite is there (one without it).
FLEET_INSTANCES = 2


# --- recording -----------------------------------------------------------------------------------


class TraceRows(logging.Handler):
    """Each broker log record as the ``traces`` row the Azure Monitor exporter writes, at simulated time."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(logging.INFO)
        self.clock = clock
        self.rows: list[Row] = []

    def emit(self, record: logging.LogRecord) -> None:
        level = {logging.INFO: 1, logging.WARNING: 2, logging.ERROR: 3, logging.CRITICAL: 4}.get(record.levelno, 0)
        self.rows.append(
            {
                "table": "traces",
                "timestamp": self.clock(),
                "message": record.getMessage(),
                "severityLevel": level,
                "customDimensions": {"logger_name": record.name},
            }
        )


def metric_rows(reader: InMemoryMetricReader, timestamp: float) -> list[Row]:
    """The instruments' deltas since the last call, as ``customMetrics`` rows (one per attribute set)."""
    rows: list[Row] = []
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    if isinstance(point, HistogramDataPoint):
                        total, count = point.sum, point.count
                    else:
                        total, count = float(point.value), 1
                    if count:
                        rows.append(
                            {
                                "table": "customMetrics",
                                "timestamp": timestamp,
                                "name": metric.name,
                                "valueSum": total,
                                "valueCount": count,
                                "customDimensions": dict(point.attributes or {}),
                            }
                        )
    return rows


def night_start(now: float) -> float:
    """The midnight UTC the recorded night starts at: the last one before ``now``, so no date is fixed."""
    return now - now % DAY_S


class Caller:
    """A pipeline's identity and the ASGI scope of its requests, its token minted on the simulated clock."""

    def __init__(
        self, servers: StandIns, path: str, *, start: float, audience: str = AUDIENCE, token: bool = True
    ) -> None:
        self.oid, self.appid = str(uuid.uuid4()), str(uuid.uuid4())
        self.bearer = ""
        headers: list[tuple[bytes, bytes]] = []
        if token:
            bearer = servers.entra.mint(
                servers.entra.tenant_id,
                aud=audience,
                roles=[ROLE],
                oid=self.oid,
                appid=self.appid,
                expires_in=int(DAY_S),
                now=start,
            )
            self.bearer = bearer
            headers.append((b"authorization", f"Bearer {bearer}".encode()))
        path, _, query = path.partition("?")
        self.scope = http_scope(path, headers, query.encode())


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _night(
    servers: StandIns, api: DataApi, seed: int, stored: list[str], hours: float, storage: Azurite | None = None
) -> list[Row]:
    start = night_start(time.time())
    clock = SimulatedClock(start)
    env = {**servers.settings_env(), "BROKER_ILEVEL_MODE": "both", "BROKER_ILEVEL_API_BASE_URL": api.base_url}
    if storage is not None:
        # As tests/fleet/support.py does it: Azurite's connection string, a fresh cache key in the vault.
        fleet_key = secrets.token_urlsafe(48)
        stored.append(fleet_key)
        servers.key_vault.set_secret(DEFAULT_FLEET_KEY_SECRET, fleet_key)
        env["BROKER_FLEET_CACHE_CONNECTION_STRING"] = storage.connection_string
    options = {"connection_verify": servers.pki.ca, "verify_challenge_resource": False}

    async def no_wait(_seconds: float) -> None:
        # Retries back off in simulated time too: the next request is seconds away anyway.
        await asyncio.sleep(0)

    # Each instance its own metrics (as each exports its own in Azure); the workbook's queries sum them.
    readers: list[InMemoryMetricReader] = []
    brokers: list[Broker] = []
    for index in range(FLEET_INSTANCES if storage is not None else 1):
        reader = InMemoryMetricReader(
            preferred_temporality={SdkCounter: AggregationTemporality.DELTA, SdkHistogram: AggregationTemporality.DELTA}
        )
        telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
        # The writer each instance records in the fleet's blob (broker.fleet.instance_name).
        with environment({"WEBSITE_INSTANCE_ID": f"night-{index}"}):
            broker = Broker(
                load_settings(env),
                Overrides(
                    secret_client_options=options, clock=clock, monotonic=clock, sleep=no_wait, telemetry=telemetry
                ),
            )
        readers.append(reader)
        brokers.append(broker)
    apps = [create_app(broker) for broker in brokers]
    traces = TraceRows(clock)
    rng = random.Random(seed)
    token_a = Caller(servers, "/api/token/ilevel", start=start)
    token_b = Caller(servers, "/api/token/ilevel", start=start)
    forced = Caller(servers, "/api/token/ilevel?force_refresh=true", start=start)
    copy_c = Caller(servers, "/api/proxy/ilevel/entities/assets?page%5Bsize%5D=50", start=start)
    copy_d = Caller(servers, "/api/proxy/ilevel/entities/assets?page%5Bsize%5D=200", start=start)
    missing = Caller(servers, "/api/proxy/ilevel/no-such-thing", start=start)
    wrong_audience = Caller(servers, "/api/token/ilevel", start=start, audience="api://someone-else")
    prober = Caller(servers, "/api/token/ilevel", start=start, token=False)
    send = StatusRecorder()
    rows: list[Row] = []
    events = _script(servers, brokers[0], stored, storage)
    logger = logging.getLogger("broker")
    logger.addHandler(traces)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        end = start + hours * 3600
        next_bin = start + BIN_S
        while clock.now < end:
            hour = (clock.now - start) / 3600
            for at, action in list(events):
                if hour >= at:
                    events.remove((at, action))
                    await action()
            weights = [(token_a, 6), (token_b, 3), (copy_c, 4), (copy_d, 2), (missing, 0.3), (prober, 0.15)]
            if 1.5 <= hour < 1.9:
                weights.append((wrong_audience, 3))
            if 5.1 <= hour < 5.3 or (storage is not None and 2.5 <= hour < 2.7):
                weights.append((forced, 2))
            caller = rng.choices([c for c, _ in weights], [w for _, w in weights])[0]
            # The front end spreads requests over the instances.
            await rng.choice(apps)(dict(caller.scope), _receive, send)
            caches = [broker.provider("ilevel").cache for broker in brokers]
            while any(cache.fetching for cache in caches):
                await asyncio.sleep(0.001)
            clock.advance(rng.uniform(4.0, 16.0))
            if clock.now >= next_bin:
                for reader in readers:
                    rows += metric_rows(reader, next_bin)
                next_bin += BIN_S
    finally:
        logger.removeHandler(traces)
        logger.setLevel(previous_level)
        for broker in brokers:
            await broker.aclose()
    rows += traces.rows
    callers = (token_a, token_b, forced, copy_c, copy_d, missing, wrong_audience)
    secrets_known = [servers.client_secret, ACCOUNT_KEY, *stored, *(c.bearer for c in callers)]
    leaked = [row for row in rows if any(s and s in json.dumps(row) for s in secrets_known)]
    if leaked:
        raise RuntimeError(f"{len(leaked)} recorded rows contain a secret or a token; nothing written")
    return sorted(rows, key=lambda row: row["timestamp"])


def _script(
    servers: StandIns, broker: Broker, stored: list[str], storage: Azurite | None = None
) -> list[tuple[float, Callable[[], Any]]]:
    """What happens during the night, by simulated hour (a rotation event reaches one instance)."""
    subject = "ilevel-client-secret"

    async def rotate(accept: bool) -> None:
        value = uuid.uuid4().hex + uuid.uuid4().hex
        version = servers.key_vault.set_secret(subject, value)
        stored.append(value)
        if accept:
            servers.tokens.accept(servers.client_id, value)
        await check_rotation_event(
            broker, {"ObjectName": subject, "Version": version}, subject=subject, event_type=NEW_VERSION_EVENT
        )

    async def good() -> None:
        await rotate(True)

    async def bad() -> None:
        await rotate(False)

    async def outage() -> None:
        servers.tokens.default_reply = Reply(status=503, json={"error": "temporarily_unavailable"})

    async def recovered() -> None:
        servers.tokens.default_reply = None

    async def forbid() -> None:
        servers.key_vault.forbid()

    async def allow() -> None:
        servers.key_vault.allow()

    async def storage_down() -> None:
        if storage is not None:
            storage.kill()

    async def storage_up() -> None:
        # Restarted on the same port but empty (in-memory); a real outage keeps the container the
        # deployment created, so it is created again here (the cached token is gone: one miss).
        if storage is not None:
            from azure.storage.blob import ContainerClient

            storage.start()
            ContainerClient.from_connection_string(storage.connection_string, FLEET_CONTAINER).create_container()

    return [
        (2.0, good),
        (2.5, storage_down),
        (2.75, storage_up),
        (3.5, bad),
        (3.75, good),
        (4.2, outage),
        (4.9, recovered),
        (5.1, forbid),
        (5.3, allow),
    ]


def _start_azurite() -> Azurite | None:
    """Azurite for the fleet cache, or None (said on stderr) when it is not installed or does not start."""
    try:
        return Azurite().start()
    except (RuntimeError, OSError) as error:
        print(
            f"Azurite unavailable, so the night is recorded without the fleet cache (one instance): {error}",
            file=sys.stderr,
        )
        return None


def record(path: Path, *, hours: float = HOURS, seed: int = 17) -> int:
    """Run the night against fresh stand-ins and write its rows as JSON lines; return the row count."""
    storage = _start_azurite()
    try:
        with standins() as servers:
            api = DataApi(servers.tokens, assets=400)
            with run_server(api) as api_server, environment(servers.identity_env()):
                api.public_url = api_server.url
                rows = asyncio.run(_night(servers, api, seed, [], hours, storage))
    finally:
        if storage is not None:
            storage.stop()
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows), encoding="utf-8")
    return len(rows)


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


def _bin(timestamp: float, grain: float) -> float:
    return timestamp - timestamp % grain


Series = dict[str, dict[float, float]]


def tokens_by_outcome(rows: list[Row], grain: float) -> Series:
    series: Series = defaultdict(lambda: defaultdict(float))
    for row in _access(rows, "request "):
        series[_field("outcome", row["message"]) or ""][_bin(row["timestamp"], grain)] += 1
    return series


def latency_by_route(rows: list[Row], grain: float) -> Series:
    import numpy

    samples: dict[tuple[str, float], list[float]] = defaultdict(list)
    for row in _access(rows, "request ", "proxy "):
        route = "proxy" if row["message"].startswith("proxy ") else "token"
        latency = _field("latency_ms", row["message"], r"[0-9.]+")
        if latency is not None:
            samples[(route, _bin(row["timestamp"], grain))].append(float(latency))
    series: Series = defaultdict(dict)
    for (route, at), values in samples.items():
        series[f"{route} p50"][at] = float(numpy.percentile(values, 50))
        series[f"{route} p95"][at] = float(numpy.percentile(values, 95))
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
        key = (_field("caller_appid", message) or "", _field("caller_oid", message) or "")
        requests[key] += 1
        if message.startswith("proxy "):
            failed[key] += int(_field("status", message, "[0-9]+") or 0) >= 400
        else:
            failed[key] += _field("outcome", message) not in SERVED
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    recorder = commands.add_parser("record", help="run the broker against the stand-ins; write JSON lines")
    recorder.add_argument("log", type=Path)
    recorder.add_argument("--hours", type=float, default=HOURS)
    drawer = commands.add_parser("render", help="plot the workbook's panels from a recorded log")
    drawer.add_argument("log", type=Path)
    drawer.add_argument("png", type=Path)
    drawer.add_argument("--workbook", type=Path, default=Path("infra/app/workbook.json"))
    args = parser.parse_args(argv)
    if args.command == "record":
        started = time.perf_counter()
        count = record(args.log, hours=args.hours)
        print(f"{count} rows in {args.log} ({time.perf_counter() - started:.0f} s)")
    else:
        render(args.log, args.png, args.workbook)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
