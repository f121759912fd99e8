"""Azurite (the Blob Storage emulator, from npm, pinned by the Makefile) and helpers for the fleet tests.

Azurite runs with ``--inMemoryPersistence --skipApiVersionCheck`` on a port it picks (``--blobPort 0``),
read back from its start-up line. Its development account key is public by design; it is still
registered as sensitive, so the suite proves no connection string reaches a log.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from broker.config import DEFAULT_FLEET_KEY_SECRET
from broker.runtime import Broker
from tests.conftest import Stack, sensitive

ROOT = Path(__file__).resolve().parents[2]
AZURITE_BIN = ROOT / ".venv" / "tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public by design, loopback only).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = sensitive("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
_LISTENING = re.compile(r"listens on http://127\.0\.0\.1:(\d+)")


class Azurite:
    """One Azurite blob service process on loopback; can be killed and restarted on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def start(self) -> Azurite:
        if not AZURITE_BIN.exists():
            raise RuntimeError(f"Azurite is not installed at {AZURITE_BIN}: run `make test` (it installs it) first")
        command = [
            str(AZURITE_BIN),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_node_env()
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            found = _LISTENING.search(line)
            if found:
                self.port = int(found.group(1))
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        self.stop()
        raise RuntimeError("Azurite did not start: " + "".join(self.output[-20:]))

    def _drain(self) -> None:
        process = self.process
        if process is not None and process.stdout is not None:
            for _ in process.stdout:
                pass

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};"
        )


def _node_env() -> dict[str, str]:
    env = dict(os.environ)
    node = shutil.which("node")
    if node:
        env["PATH"] = str(Path(node).parent) + os.pathsep + env.get("PATH", "")
    return env


def fleet_env(stack: Stack, server: Azurite) -> dict[str, str]:
    """Switch the stack's settings to the fleet cache on ``server``, with a fresh cache key in the vault."""
    key = sensitive(secrets.token_urlsafe(48))
    stack.kv.delete(DEFAULT_FLEET_KEY_SECRET)
    stack.kv.set_secret(DEFAULT_FLEET_KEY_SECRET, key)
    stack.kv.reset_counts()
    stack.env["BROKER_FLEET_CACHE_CONNECTION_STRING"] = server.connection_string
    return stack.env


def events(broker: Broker) -> dict[str, int]:
    """The fleet events this broker counted, by event (read from its telemetry's SDK reader)."""
    reader: Any = getattr(broker.telemetry, "reader", None)
    assert reader is not None, "build the broker with tests.fleet.conftest.counted_telemetry()"
    counts: dict[str, int] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "broker.fleet.events":
                    for point in metric.data.data_points:
                        event = str(point.attributes["event"])
                        counts[event] = counts.get(event, 0) + int(point.value)
    return counts


def counted_telemetry() -> Any:
    """A Telemetry whose metrics an in-memory reader collects (``events(broker)`` reads them)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from broker.telemetry import Telemetry

    reader = InMemoryMetricReader()
    telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
    telemetry.reader = reader  # type: ignore[attr-defined]
    return telemetry
