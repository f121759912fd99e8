"""Proxy metrics: broker.proxy.requests and broker.proxy.duration, by provider and status class."""

from __future__ import annotations

from collections import Counter

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from broker.telemetry import Telemetry
from tests.conftest import Stack
from tests.proxy.conftest import Rig


async def test_every_proxied_request_is_counted_and_timed_by_provider_and_status_class(rig: Rig, stack: Stack) -> None:
    """Two 2xx, one 4xx from the API, one broker 400: counted with provider and status_class; durations recorded."""
    reader = InMemoryMetricReader()
    broker = rig.broker(telemetry=Telemetry(meter_provider=MeterProvider(metric_readers=[reader])))
    caller = stack.caller()
    async with rig.open(broker) as api:
        assert (await api.get("/api/proxy/ilevel/entities/assets", token=caller)).status_code == 200
        assert (await api.get("/api/proxy/ilevel/exports/assets.csv", token=caller)).status_code == 200
        assert (await api.get("/api/proxy/ilevel/no-such-thing", token=caller)).status_code == 404
        assert (await api.get("/api/proxy/ilevel/a%2e%2e/%2e%2e", token=caller)).status_code == 400
    counts: Counter[tuple[str, str]] = Counter()
    durations: Counter[tuple[str, str]] = Counter()
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if not metric.name.startswith("broker.proxy."):
                    continue
                for point in metric.data.data_points:
                    key = (point.attributes["provider"], point.attributes["status_class"])
                    if metric.name == "broker.proxy.requests":
                        counts[key] += point.value
                    elif metric.name == "broker.proxy.duration":
                        durations[key] += point.count
    assert counts == Counter({("ilevel", "2xx"): 2, ("ilevel", "4xx"): 2})
    assert durations == counts
