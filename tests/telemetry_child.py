"""Child process of tests/test_telemetry_export.py: one Functions process, its exports counted.

Run as ``python tests/telemetry_child.py worker|context|default`` from the repository root. It starts the
stand-ins and an Application Insights ingestion stand-in, then plays the Python worker's part as
azure-functions-python-worker 4.34 does (``azure_functions_worker/dispatcher.py``):

- ``worker`` (OpenTelemetry mode, PYTHON_ENABLE_OPENTELEMETRY=true): before importing function_app.py
  the worker calls ``configure_azure_monitor(connection_string=..., logger_name=<PYTHON_AZURE_MONITOR_LOGGER_NAME>)``
  (``initialize_azure_monitor``), and before each invocation it attaches the invocation's trace context
  (``configure_opentelemetry``: ``TraceContextTextMapPropagator().extract({traceparent, tracestate})``);
- ``context``: the same settings, but a worker that only attaches the trace context and leaves the
  distro to the app (not worker 4.34's behaviour: the case the app's process-state check is for);
- ``default``: neither; the app configures its own exporter, as before.

Then it invokes the indexed ``http_app_func`` twice (a cold and a warm token request), flushes the
OpenTelemetry providers and prints, per request, the broker's log records and what reached ingestion.
The configuration is process-global, hence a child process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.functions import fresh_function_app, invocation  # noqa: E402
from bench.stack import environment, standins  # noqa: E402
from broker.standin.appinsights import Ingestion  # noqa: E402
from broker.standin.serve import run_server  # noqa: E402

# What the host passes in InvocationRequest.trace_context for one request (W3C traceparent).
TRACE_IDS = ("4bf92f3577b34da6a3ce929d0e0e4736", "5cf92f3577b34da6a3ce929d0e0e4737")
PARENT_ID = "00f067aa0ba902b7"


class Records(logging.Handler):
    """Counts the broker's log records as the worker's root handler would forward them (RpcLog)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def flush() -> None:
    from opentelemetry import _logs, metrics, trace

    for provider in (trace.get_tracer_provider(), _logs.get_logger_provider(), metrics.get_meter_provider()):
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is not None:
            force_flush()


def shutdown() -> None:
    """Flush and stop the exporters while the ingestion stand-in still listens."""
    from opentelemetry import _logs, metrics, trace

    for provider in (trace.get_tracer_provider(), _logs.get_logger_provider(), metrics.get_meter_provider()):
        stop = getattr(provider, "shutdown", None)
        if stop is not None:
            stop()


def main(mode: str) -> dict[str, Any]:
    ingestion = Ingestion()
    with standins() as servers:
        # Over TLS with the stand-ins' CA (REQUESTS_CA_BUNDLE): the exporter sends a bearer token only over https.
        sink = run_server(ingestion, certfile=servers.pki.cert, keyfile=servers.pki.key)
        env = {
            **servers.broker_env(),
            "APPLICATIONINSIGHTS_CONNECTION_STRING": ingestion.connection_string(sink.url),
            # As on Azure Functions; and nothing leaves loopback: no statsbeat, no VM metadata probe.
            "FUNCTIONS_WORKER_RUNTIME": "python",
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
            "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "azure_functions",
        }
        if mode in ("worker", "context"):
            # The app settings docs/operations.md lists for OpenTelemetry mode.
            env.update(
                {
                    "PYTHON_ENABLE_OPENTELEMETRY": "true",
                    "PYTHON_AZURE_MONITOR_LOGGER_NAME": "broker",
                    "OTEL_TRACES_SAMPLER": "parentbased_always_on",
                }
            )
        with environment(env):
            propagator = None
            if mode in ("worker", "context"):
                from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

                propagator = TraceContextTextMapPropagator()
            if mode == "worker":
                from azure.monitor.opentelemetry import configure_azure_monitor

                configure_azure_monitor(
                    connection_string=os.environ["APPLICATIONINSIGHTS_CONNECTION_STRING"],
                    logger_name=os.environ["PYTHON_AZURE_MONITOR_LOGGER_NAME"],
                )
            # The worker switches the root logger to INFO once its gRPC channel is up (dispatcher.py, 4.34).
            logging.getLogger().setLevel(logging.INFO)
            records = Records()
            logging.getLogger("broker").addHandler(records)
            with fresh_function_app() as module:
                exporter = module.process.exporter
                # azure-monitor-opentelemetry's default sampler lets through 5 spans per second, a budget that
                # fills from the moment it is configured; the worker's first invocation comes seconds after.
                time.sleep(1.0)
                handler = {f.get_function_name(): f for f in module.app.get_functions()}["http_app_func"]
                function = handler.get_user_function()
                caller = servers.caller()
                flush()
                ingestion.clear()
                results = []
                everything = ""
                for trace_id in TRACE_IDS:
                    before = records.count

                    async def invoke(trace_id: str = trace_id) -> int:
                        if propagator is not None:
                            from opentelemetry import context

                            carrier = {"traceparent": f"00-{trace_id}-{PARENT_ID}-01", "tracestate": ""}
                            context.attach(propagator.extract(carrier))
                        answer = await function(invocation("/api/token/ilevel", caller), None)
                        return int(answer.status_code)

                    status = asyncio.run(invoke())
                    flush()
                    time.sleep(0.2)
                    messages = ingestion.of_type("MessageData")
                    dependencies = ingestion.of_type("RemoteDependencyData")
                    metrics = ingestion.of_type("MetricData")
                    results.append(
                        {
                            "status": status,
                            "trace_id": trace_id,
                            "broker_log_records": records.count - before,
                            "exported_messages": len(messages),
                            "exported_message_texts": [m["data"]["baseData"]["message"] for m in messages],
                            "message_operation_ids": sorted({m["tags"].get("ai.operation.id", "") for m in messages}),
                            "dependency_names": sorted(d["data"]["baseData"]["name"] for d in dependencies),
                            "dependency_operation_ids": sorted(
                                {d["tags"].get("ai.operation.id", "") for d in dependencies}
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
                sensitive = [
                    servers.client_secret,
                    caller,
                    servers.identity.identity_header,
                    *servers.tokens.issued_tokens,
                    *servers.identity.issued_tokens,
                ]
                leaks = sorted({value[:4] + "..." for value in sensitive if value and value in everything})
                handlers = [type(h).__name__ for h in logging.getLogger("broker").handlers]
                root_handlers = [type(h).__name__ for h in logging.getLogger().handlers]
                shutdown()
        sink.stop()
        return {"mode": mode, "exporter": exporter, "requests": results, "broker_handlers": handlers,
                "root_handlers": root_handlers, "leaks": leaks}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
