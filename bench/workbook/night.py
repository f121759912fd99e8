"""The workbook's night: the real broker against the stand-ins, recorded as the rows Application Insights holds.

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
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import sys
import time
import uuid
from collections.abc import Callable
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
