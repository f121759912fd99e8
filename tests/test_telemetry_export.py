"""What reaches Application Insights per token request, counted at an ingestion stand-in.

Each mode runs tests/telemetry_child.py in its own process (OpenTelemetry configuration is
process-global): Microsoft's worker, azure_functions_runtime as requirements.txt pins it, driven through
its own handlers with the app settings infra/app/broker.bicep deploys, function_app.py inside it, and the
real Azure Monitor distro exporting over TLS to a local ingestion endpoint.
The host's part cannot run here (it is .NET): in OpenTelemetry mode, once the worker reports
WorkerOpenTelemetryEnabled, the host's exporter drops the worker's forwarded log records (categories
Function.*; azure-functions-host, OpenTelemetryConfigurationExtensions.cs); without it, the host's
Application Insights logger sends each of them again. docs/operations.md has the table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from azure_functions_runtime.utils import constants

from broker.telemetry import LOGGER_NAME
from tests.infra.bicep_settings import app_settings
from tests.worker.children import run_child

ROOT = Path(__file__).resolve().parents[1]

# Every test here reads a child process running the worker (tests/telemetry_child.py).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployed() -> dict[str, Any]:
    return run_child("deployed")


@pytest.fixture(scope="module")
def default_mode() -> dict[str, Any]:
    return run_child("default")


def test_with_the_deployed_settings_the_worker_configures_the_distro_once_for_the_broker_logger(
    deployed: dict[str, Any],
) -> None:
    """Worker init calls configure_azure_monitor once, for "broker"; the app sees it, does not call it again,
    and its guard has nothing to warn about."""
    assert deployed["distro_configurations"] == [{"logger_name": LOGGER_NAME}]
    assert deployed["exporter"] == "worker"
    assert deployed["telemetry_warnings"] == []
    assert deployed["broker_handlers"].count("LoggingHandler") == 1
    assert "LoggingHandler" not in deployed["root_handlers"]


def test_without_the_logger_name_the_worker_exports_the_root_logger_and_the_broker_says_what_to_set() -> None:
    """The worker's default logger name is "" (the root): the broker's start-up warns, naming the setting."""
    result = run_child("unnamed")
    assert result["distro_configurations"] == [
        {"logger_name": constants.PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME_DEFAULT}
    ]
    assert "LoggingHandler" in result["root_handlers"]
    [warning] = result["telemetry_warnings"]
    assert f"set {constants.PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME}={LOGGER_NAME}" in warning


def test_with_the_deployed_settings_the_worker_creates_its_propagator_and_completes_every_invocation(
    deployed: dict[str, Any],
) -> None:
    """The trace-context propagator exists, the host is told WorkerOpenTelemetryEnabled, no invocation fails."""
    assert deployed["propagator"] == "TraceContextTextMapPropagator"
    assert deployed["capabilities"][constants.WORKER_OPEN_TELEMETRY_ENABLED] == constants.TRUE
    assert deployed["failures"] == []
    assert deployed["invocations"] == 3
    assert [r["status"] for r in deployed["requests"]] == [200, 200]


def test_only_the_broker_records_are_exported_each_exactly_once(deployed: dict[str, Any]) -> None:
    """A forced fetch logs its access line and a cached token (hit) none; exactly those reach ingestion, each
    once (none of the worker's own per-invocation lines, which the root logger would add)."""
    cold, warm = deployed["requests"]
    assert (len(cold["broker_messages"]), len(warm["broker_messages"])) == (1, 0)
    for request in (cold, warm):
        assert request["exported_messages"] == request["broker_messages"]
    assert sum(text.startswith("request id=") for text in cold["exported_messages"]) == 1


def test_the_broker_spans_and_records_share_the_hosts_operation_id(deployed: dict[str, Any]) -> None:
    """Every record and span of a request carries the trace id the host passed in its traceparent."""
    cold, warm = deployed["requests"]
    assert cold["message_operation_ids"] == [cold["trace_id"]]
    assert warm["message_operation_ids"] == [], "a hit writes no record"
    names = cold["dependency_names"]
    assert names.count("broker.secret.read") == 2 and names.count("broker.upstream.fetch") == 1
    assert set(cold["dependency_operation_ids"]) - {cold["trace_id"]} <= set(cold["exporter_token_operation_ids"])
    assert set(warm["dependency_operation_ids"]) - {warm["trace_id"]} <= set(warm["exporter_token_operation_ids"])


def test_the_broker_metrics_are_exported(deployed: dict[str, Any]) -> None:
    """The instruments the alerts and the workbook read reach customMetrics; a hit is counted and timed there."""
    cold, warm = deployed["requests"]
    assert {"broker.token.requests", "broker.upstream.fetches", "broker.keyvault.reads"} <= set(
        cold["broker_metric_names"]
    )
    assert {"broker.token.requests", "broker.token.duration"} <= set(warm["broker_metric_names"])


def test_nothing_exported_carries_a_secret_or_a_token(deployed: dict[str, Any], default_mode: dict[str, Any]) -> None:
    """No client secret, caller token, issued token or identity header in any envelope, in either mode."""
    assert deployed["leaks"] == [] and default_mode["leaks"] == []


def test_a_worker_that_only_attaches_the_trace_context_leaves_one_correlated_copy_to_the_app() -> None:
    """PYTHON_ENABLE_OPENTELEMETRY without the Azure Monitor switch: the worker attaches the context, the app
    configures the distro once, and each record is exported once under the host's operation id."""
    result = run_child("context")
    assert result["exporter"] == "broker"
    assert result["distro_configurations"] == [{"logger_name": LOGGER_NAME}]
    assert result["broker_handlers"].count("LoggingHandler") == 1
    assert result["failures"] == []
    fetched, hit = result["requests"]
    assert fetched["exported_messages"] == fetched["broker_messages"] != []
    assert fetched["message_operation_ids"] == [fetched["trace_id"]]
    assert hit["exported_messages"] == hit["broker_messages"] == [], "a cached token writes no record"
    assert {"broker.token.requests", "broker.token.duration"} <= set(hit["broker_metric_names"])


def test_without_opentelemetry_mode_the_app_exports_uncorrelated(default_mode: dict[str, Any]) -> None:
    """The former set-up: the app exports each record once itself, but not under the host's operation id
    (and the host, not in OpenTelemetry mode, forwards the same records again)."""
    assert default_mode["exporter"] == "broker"
    for request in default_mode["requests"]:
        assert request["exported_messages"] == request["broker_messages"]
        assert request["trace_id"] not in request["message_operation_ids"]


def test_the_host_runs_in_opentelemetry_mode_without_the_ignored_sampling_block() -> None:
    """host.json switches the host to OpenTelemetry mode, where logging.applicationInsights (sampling) does
    not apply ("Use OpenTelemetry with Azure Functions"), so it is not there to mislead."""
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    assert host["telemetryMode"] == "OpenTelemetry"
    assert "applicationInsights" not in host.get("logging", {})


def test_the_function_app_gets_the_worker_settings_of_opentelemetry_mode() -> None:
    """infra/app/broker.bicep switches the worker's Azure Monitor configuration on for the broker's logger,
    by the names the pinned worker reads, and never PYTHON_ENABLE_OPENTELEMETRY alone."""
    given = {setting.name: setting.literal for setting in app_settings()}
    assert given.get(constants.PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY) == constants.TRUE
    assert given.get(constants.PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME) == LOGGER_NAME
    assert given.get("OTEL_TRACES_SAMPLER") == "parentbased_always_on"
    assert constants.PYTHON_ENABLE_OPENTELEMETRY not in given
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in given and "APPLICATIONINSIGHTS_AUTHENTICATION_STRING" in given
