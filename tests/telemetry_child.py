"""Child process of the telemetry tests: one Functions worker process, its exports counted.

Run as ``python tests/telemetry_child.py deployed|unnamed|context|default`` from the repository root. It starts the
stand-ins and an Application Insights ingestion stand-in, then runs Microsoft's worker
(``azure_functions_runtime``, the version requirements.txt pins) through its own handlers
(:mod:`tests.worker.driver`): worker init, metadata, load, then invocations with the host's trace context.
The process environment is the app settings:

- ``deployed``: every literal setting of infra/app/broker.bicep's app-settings block, exactly (so
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY and PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME as deployed),
  the connection string pointing at the ingestion stand-in, and the Bicep's authentication string with the
  stand-in identity's client id: the worker configures the Azure Monitor distro itself, at worker init;
- ``unnamed``: the deployed settings without PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME (the worker then
  exports the root logger);
- ``context``: the deployed settings with PYTHON_ENABLE_OPENTELEMETRY in place of the Azure Monitor switch: the worker
  only attaches each invocation's trace context and the app configures the distro;
- ``default``: neither switch; the app exports on its own, as before OpenTelemetry mode.

It invokes the HTTP function twice (a cold and a warm token request) and the Event Grid function once,
flushes the OpenTelemetry providers and prints what the worker did and, per request, the broker's log
records and what reached ingestion. OpenTelemetry's configuration is process-global, hence a child process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import azure.monitor.opentelemetry as distro  # noqa: E402
from azure_functions_runtime.otel import otel_manager  # noqa: E402
from azure_functions_runtime.utils import constants  # noqa: E402

from bench.stack import environment, standins  # noqa: E402
from broker.standin.appinsights import Ingestion  # noqa: E402
from broker.standin.serve import run_server  # noqa: E402
from tests.infra.bicep_settings import app_settings  # noqa: E402
from tests.worker.driver import Worker, deployed_settings  # noqa: E402

# What the host passes in InvocationRequest.trace_context for one request (W3C traceparent).
TRACE_IDS = ("4bf92f3577b34da6a3ce929d0e0e4736", "5cf92f3577b34da6a3ce929d0e0e4737")
PARENT_ID = "00f067aa0ba902b7"
URL = "https://func-broker.azurewebsites.net/api/token/ilevel"
# The process-start warm-up has the token before the first invocation: the first request forces a fetch (its
# access line, its spans), the second is a cached token (a hit: no access line, metrics only).
QUERIES = ("?force_refresh=true", "")
NEAR_EXPIRY = {
    "id": "1",
    "topic": "/vaults/kv",
    "subject": "ilevel-client-secret",
    "eventType": "Microsoft.KeyVault.SecretNearExpiry",
    "eventTime": None,
    "data": {"ObjectName": "ilevel-client-secret"},
    "dataVersion": "1",
}


class Records(logging.Handler):
    """The broker's log records (INFO and up), as the worker's logging would see them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class CountedConfiguration:
    """azure-monitor-opentelemetry's configure_azure_monitor, called through and counted (by whoever calls it)."""

    def __init__(self) -> None:
        self.real = distro.configure_azure_monitor
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **options: Any) -> None:
        self.calls.append({"logger_name": options.get("logger_name")})
        self.real(**options)


def providers() -> list[Any]:
    from opentelemetry import _logs, metrics, trace

    return [trace.get_tracer_provider(), _logs.get_logger_provider(), metrics.get_meter_provider()]


def flush() -> None:
    for provider in providers():
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is not None:
            force_flush()


def shutdown() -> None:
    """Flush and stop the exporters while the ingestion stand-in still listens."""
    for provider in providers():
        stop = getattr(provider, "shutdown", None)
        if stop is not None:
            stop()


def settings(mode: str, client_id: str) -> dict[str, str]:
    """The app settings of ``mode``: the Bicep's literals, changed as the mode says."""
    given = deployed_settings()
    # The Bicep builds this one from the identity's client id: render it with the stand-in identity's.
    template = next(s.expression for s in app_settings() if s.name == "APPLICATIONINSIGHTS_AUTHENTICATION_STRING")
    given["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] = template.strip("'").replace("${identityClientId}", client_id)
    if mode in ("context", "default"):
        given.pop(constants.PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY)
    if mode == "unnamed":
        given.pop(constants.PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME)
    if mode == "context":
        given[constants.PYTHON_ENABLE_OPENTELEMETRY] = "true"
    return given


async def run(mode: str, servers: Any, ingestion: Ingestion, records: Records) -> dict[str, Any]:
    worker = Worker()
    await worker.start()
    module = worker.module
    # The distro's default sampler lets through 5 spans per second, a budget that fills from the moment it is
    # configured; on Azure the first invocation comes seconds after worker init.
    await asyncio.sleep(1.0)
    caller = servers.caller()
    flush()
    ingestion.clear()
    results, everything = [], ""
    for trace_id, query in zip(TRACE_IDS, QUERIES, strict=True):
        before = len(records.messages)
        status, _, _ = await worker.http(
            "GET", URL + query, {"authorization": f"Bearer {caller}"}, b"", traceparent=f"00-{trace_id}-{PARENT_ID}-01"
        )
        flush()
        await asyncio.sleep(0.2)
        messages = ingestion.of_type("MessageData")
        dependencies = ingestion.of_type("RemoteDependencyData")
        metrics = ingestion.of_type("MetricData")
        results.append(
            {
                "status": status,
                "trace_id": trace_id,
                "broker_messages": sorted(records.messages[before:]),
                "exported_messages": sorted(m["data"]["baseData"]["message"] for m in messages),
                "message_operation_ids": sorted({m["tags"].get("ai.operation.id", "") for m in messages}),
                "dependency_names": sorted(d["data"]["baseData"]["name"] for d in dependencies),
                "dependency_operation_ids": sorted({d["tags"].get("ai.operation.id", "") for d in dependencies}),
                # The exporter's own managed-identity token request is traced too, on the exporter's thread.
                "exporter_token_operation_ids": sorted(
                    {
                        d["tags"].get("ai.operation.id", "")
                        for d in dependencies
                        if d["data"]["baseData"]["name"] == "GET /msi/token"
                        and d["tags"].get("ai.operation.id") != trace_id
                    }
                ),
                "broker_metric_names": sorted(
                    {
                        point["name"]
                        for m in metrics
                        for point in m["data"]["baseData"]["metrics"]
                        if point["name"].startswith("broker.")
                    }
                ),
            }
        )
        everything += json.dumps(ingestion.envelopes)
        ingestion.clear()
    await worker.event_grid(NEAR_EXPIRY)
    flush()
    everything += json.dumps(ingestion.envelopes)
    sensitive = [
        servers.client_secret,
        caller,
        servers.identity.identity_header,
        *servers.tokens.issued_tokens,
        *servers.identity.issued_tokens,
    ]
    return {
        "mode": mode,
        "capabilities": worker.capabilities,
        "functions": sorted(worker.functions),
        "invocations": worker.invocations,
        "failures": worker.failures,
        "exporter": module.process.exporter,
        "propagator": type(otel_manager.get_trace_context_propagator()).__name__,
        "requests": results,
        "leaks": sorted({value[:4] + "..." for value in sensitive if value and value in everything}),
        "broker_handlers": [type(h).__name__ for h in logging.getLogger("broker").handlers],
        "root_handlers": [type(h).__name__ for h in logging.getLogger().handlers],
    }


def main(mode: str) -> dict[str, Any]:
    ingestion = Ingestion()
    counted = CountedConfiguration()
    distro.configure_azure_monitor = counted  # both the worker and the broker import it from the module when called
    with standins() as servers:
        # Over TLS with the stand-ins' CA (REQUESTS_CA_BUNDLE): the exporter sends a bearer token only over https.
        sink = run_server(ingestion, certfile=servers.pki.cert, keyfile=servers.pki.key)
        env = {
            **servers.broker_env(),
            **settings(mode, servers.settings_env()["AZURE_CLIENT_ID"]),
            "APPLICATIONINSIGHTS_CONNECTION_STRING": ingestion.connection_string(sink.url),
            # As on Azure Functions; and nothing leaves loopback: no statsbeat, no VM metadata probe.
            "FUNCTIONS_WORKER_RUNTIME": "python",
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
        }
        with environment(env):
            # The proxy worker sets the root logger to INFO once its channel to the host is up.
            logging.getLogger().setLevel(logging.INFO)
            records = Records()
            logging.getLogger("broker").addHandler(records)
            warnings = Records()
            warnings.setLevel(logging.WARNING)
            logging.getLogger("broker.telemetry").addHandler(warnings)
            result = asyncio.run(run(mode, servers, ingestion, records))
            result["telemetry_warnings"] = warnings.messages
            shutdown()
        sink.stop()
    result["distro_configurations"] = counted.calls
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
