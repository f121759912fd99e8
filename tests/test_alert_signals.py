"""The deployed alerts fire for the token route and the proxy route alike: the failures they watch, produced
for real on both routes and both hosts, leave exactly the log lines and metric points their queries select.

Each predicate below is the ``where`` of one rule in infra/app/alerts.bicep, written over a captured log
record or metric point (tests/infra/test_alert_queries.py ties the names in those queries to broker/).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from broker.standin.dataapi import DataApi
from broker.standin.serve import run_server
from broker.telemetry import Telemetry
from tests.conftest import Servers, Stack
from tests.hosts import functions_host, open_host

ROUTES = {"token": "/api/token/ilevel", "proxy": "/api/proxy/ilevel/entities/assets"}


def caller_errors(record: logging.LogRecord) -> bool:
    """callerErrors: broker.errors "request ...", proxy access lines with status >= 500, broker_misconfigured."""
    message = record.getMessage()
    status = re.search(r"status=([0-9]+)", message)
    outcome = re.search(r"outcome=(\S+)", message)
    proxy_5xx = message.startswith("proxy ") and status is not None and int(status[1]) >= 500
    return (
        (record.name == "broker.errors" and message.startswith("request "))
        or (record.name == "broker.access" and proxy_5xx)
        or (outcome is not None and outcome[1] == "broker_misconfigured")
    )


def metric_total(reader: InMemoryMetricReader, name: str, **attributes: str) -> float:
    total = 0.0
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    if all(point.attributes.get(k) == v for k, v in attributes.items()):
                        total += float(getattr(point, "value", getattr(point, "count", 0)))
    return total


@pytest.fixture(scope="module")
def data_api(servers: Servers) -> Iterator[DataApi]:
    app = DataApi(servers.tokens)
    with run_server(app) as server:
        app.public_url = server.url
        yield app


async def _call(stack: Stack, data_api: DataApi, host: str, route: str, token: str | None) -> tuple[int, Any]:
    reader = InMemoryMetricReader()
    stack.export_environment()
    broker = stack.broker(
        stack.settings(BROKER_ILEVEL_MODE="both", BROKER_ILEVEL_API_BASE_URL=data_api.base_url),
        telemetry=Telemetry(meter_provider=MeterProvider(metric_readers=[reader])),
    )
    try:
        async with open_host(host, broker) as client:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = await client.get(ROUTES[route], headers=headers)
    finally:
        await broker.aclose()
    return response.status_code, reader


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_key_vault_denied_fires_both_alerts_it_should_on_either_route(
    route: str, stack: Stack, data_api: DataApi, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Vault says 403: "Key Vault access denied" (the reads metric) and "Callers are getting errors" both select it."""
    caplog.set_level(logging.INFO, logger="broker")
    stack.kv.forbid()
    try:
        status, reader = await _call(stack, data_api, host, route, stack.caller())
    finally:
        stack.kv.allow()
    assert status == 502
    assert metric_total(reader, "broker.keyvault.reads", outcome="key_vault_forbidden") >= 1
    selected = [r for r in caplog.records if caller_errors(r)]
    assert len(selected) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_a_rejected_caller_is_counted_for_the_rejection_alert_on_either_route(
    route: str, stack: Stack, data_api: DataApi, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No caller token: "Caller rejections spike" counts it, and "Callers are getting errors" does not (a 401)."""
    caplog.set_level(logging.INFO, logger="broker")
    status, reader = await _call(stack, data_api, host, route, None)
    assert status == 401
    assert metric_total(reader, "broker.caller_auth.failures", reason="missing") == 1
    assert not [r for r in caplog.records if caller_errors(r)]


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_a_served_request_fires_nothing(
    route: str, stack: Stack, data_api: DataApi, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 200 on either route is selected by no error alert."""
    caplog.set_level(logging.INFO, logger="broker")
    status, reader = await _call(stack, data_api, host, route, stack.caller())
    assert status == 200
    assert not [r for r in caplog.records if caller_errors(r)]
    assert metric_total(reader, "broker.keyvault.reads", outcome="key_vault_forbidden") == 0


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_a_misconfigured_app_fires_the_caller_errors_alert_on_either_route(
    route: str, stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The Functions app without BROKER_AUDIENCE answers 503 broker_misconfigured, and callerErrors selects it."""
    caplog.set_level(logging.INFO, logger="broker")
    stack.export_environment()
    monkeypatch.delenv("BROKER_AUDIENCE")
    async with functions_host() as client:
        response = await client.get(ROUTES[route], headers={"Authorization": f"Bearer {stack.caller()}"})
    assert response.status_code == 503
    assert len([r for r in caplog.records if caller_errors(r)]) == 1
