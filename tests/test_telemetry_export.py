"""What reaches Application Insights per token request, counted at an ingestion stand-in.

Each case runs tests/telemetry_child.py in its own process (OpenTelemetry configuration is
process-global): the Functions entry point with the real Azure Monitor distro exporting over TLS to a
local ingestion endpoint, the worker's part played as azure-functions-python-worker 4.34 plays it.
The host's part cannot run here (it is .NET): in OpenTelemetry mode, once the worker reports
WorkerOpenTelemetryEnabled, the host's exporter drops the worker's forwarded log records (categories
Function.*; azure-functions-host, OpenTelemetryConfigurationExtensions.cs); without it, the host's
Application Insights logger sends each of them again. docs/operations.md has the table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "telemetry_child.py"


def run_child(mode: str) -> dict[str, Any]:
    done = subprocess.run(  # noqa: S603 - our own script, fixed arguments
        [sys.executable, str(CHILD), mode], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def opentelemetry_mode() -> dict[str, Any]:
    return run_child("worker")


@pytest.fixture(scope="module")
def default_mode() -> dict[str, Any]:
    return run_child("default")


@pytest.mark.slow
def test_the_worker_configures_azure_monitor_and_the_app_does_not_configure_it_again(
    opentelemetry_mode: dict[str, Any],
) -> None:
    """In OpenTelemetry mode configure_exporter sees the worker's configuration: one log handler, on "broker"."""
    assert opentelemetry_mode["exporter"] == "worker"
    assert opentelemetry_mode["broker_handlers"].count("LoggingHandler") == 1
    assert "LoggingHandler" not in opentelemetry_mode["root_handlers"]


@pytest.mark.slow
def test_every_broker_log_record_is_exported_exactly_once_per_request(opentelemetry_mode: dict[str, Any]) -> None:
    """A cold token request logs 2 records and a warm one 1; exactly those reach ingestion, each once."""
    cold, warm = opentelemetry_mode["requests"]
    assert cold["status"] == warm["status"] == 200
    assert (cold["broker_log_records"], warm["broker_log_records"]) == (2, 1)
    assert cold["exported_messages"] == cold["broker_log_records"]
    assert warm["exported_messages"] == warm["broker_log_records"]
    assert sum(text.startswith("request id=") for text in warm["exported_message_texts"]) == 1


@pytest.mark.slow
def test_the_broker_spans_and_records_share_the_hosts_operation_id(opentelemetry_mode: dict[str, Any]) -> None:
    """Every record and span of a request carries the trace id the host passed in its traceparent."""
    cold, warm = opentelemetry_mode["requests"]
    for request in (cold, warm):
        assert request["message_operation_ids"] == [request["trace_id"]]
    assert cold["dependency_operation_ids"] == [cold["trace_id"]]
    names = cold["dependency_names"]
    assert names.count("broker.secret.read") == 2 and names.count("broker.upstream.fetch") == 1


@pytest.mark.slow
def test_the_broker_metrics_are_exported(opentelemetry_mode: dict[str, Any]) -> None:
    """The instruments the alerts and the workbook read reach customMetrics."""
    cold, _ = opentelemetry_mode["requests"]
    assert {"broker.token.requests", "broker.upstream.fetches", "broker.keyvault.reads"} <= set(
        cold["broker_metric_names"]
    )


@pytest.mark.slow
def test_nothing_exported_carries_a_secret_or_a_token(
    opentelemetry_mode: dict[str, Any], default_mode: dict[str, Any]
) -> None:
    """No client secret, caller token, issued token or identity header in any envelope, in either mode."""
    assert opentelemetry_mode["leaks"] == [] and default_mode["leaks"] == []


@pytest.mark.slow
def test_a_worker_that_leaves_the_distro_to_the_app_still_gets_one_correlated_copy() -> None:
    """If the worker only attaches the trace context, the app configures the distro once: each record
    exported once, under the host's operation id."""
    result = run_child("context")
    assert result["exporter"] == "broker"
    assert result["broker_handlers"].count("LoggingHandler") == 1
    for request in result["requests"]:
        assert request["exported_messages"] == request["broker_log_records"] >= 1
        assert request["message_operation_ids"] == [request["trace_id"]]


@pytest.mark.slow
def test_without_opentelemetry_mode_the_app_exports_uncorrelated(default_mode: dict[str, Any]) -> None:
    """The former set-up: the app exports each record once itself, but not under the host's operation id
    (and the host, not in OpenTelemetry mode, forwards the same records again)."""
    assert default_mode["exporter"] == "broker"
    for request in default_mode["requests"]:
        assert request["exported_messages"] == request["broker_log_records"]
        assert request["trace_id"] not in request["message_operation_ids"]


def test_the_host_runs_in_opentelemetry_mode() -> None:
    """host.json switches the host to OpenTelemetry mode, the first of Microsoft's three steps."""
    assert json.loads((ROOT / "host.json").read_text(encoding="utf-8"))["telemetryMode"] == "OpenTelemetry"


def test_the_function_app_gets_the_worker_settings_of_opentelemetry_mode() -> None:
    """infra/app/broker.bicep gives the worker the app settings docs/operations.md lists (the integrator
    adds them to the app settings block; until then this test names the missing lines)."""
    sys.path.insert(0, str(ROOT / "tests" / "infra"))
    from bicep_settings import app_settings

    given = {setting.name: setting.literal for setting in app_settings()}
    wanted = {
        "PYTHON_ENABLE_OPENTELEMETRY": "true",
        "PYTHON_AZURE_MONITOR_LOGGER_NAME": "broker",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }
    missing = [f"  {name}: '{value}'" for name, value in wanted.items() if given.get(name) != value]
    assert not missing, "infra/app/broker.bicep's app settings need:\n" + "\n".join(missing)
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in given and "APPLICATIONINSIGHTS_AUTHENTICATION_STRING" in given
