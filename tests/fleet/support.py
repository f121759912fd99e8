"""Helpers for the fleet tests: the stack switched to the fleet cache on Azurite
(:mod:`broker.standin.azurite`), and the fleet events a broker counted."""

from __future__ import annotations

import secrets
from typing import Any

from broker.config import DEFAULT_FLEET_KEY_SECRET
from broker.runtime import Broker
from broker.standin.azurite import ACCOUNT_KEY, Azurite
from tests.conftest import Stack, sensitive

# Public by design, but a connection string must never reach a log: the leak check looks for the key too.
sensitive(ACCOUNT_KEY)


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
