"""Bench 7's exporter figure, in a fresh interpreter: the Azure Monitor exporter is process-global.

``python -m bench.functions_telemetry_child ROUNDS REQUESTS`` (caller token in ``BENCH_AUTHORIZATION``,
the stand-ins' app settings in the environment) plays the worker with the telemetry the Bicep deploys:
before importing function_app.py it calls ``configure_azure_monitor(connection_string=...,
logger_name="broker")`` as azure_functions_runtime's ``initialize_azure_monitor`` does, with the
connection string pointing at an Application Insights ingestion stand-in in this process (live metrics
off). Then it times cached-token and health invocations through the indexed ``http_app_func``, as
bench 7 does, and prints JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

from bench.functions import _per_invocation, fresh_function_app, worker_logging
from broker.standin.appinsights import Ingestion
from broker.standin.serve import run_server
from broker.telemetry import LOGGER_NAME


def main(rounds: int, requests: int) -> dict[str, object]:
    ingestion = Ingestion()
    server = run_server(ingestion)
    try:
        connection = ingestion.connection_string(server.url)
        os.environ["APPLICATIONINSIGHTS_CONNECTION_STRING"] = connection
        from azure.monitor.opentelemetry import configure_azure_monitor

        configure_azure_monitor(connection_string=connection, logger_name=LOGGER_NAME, enable_live_metrics=False)
        with worker_logging(None), fresh_function_app() as module:
            handler = {f.get_function_name(): f for f in module.app.get_functions()}["http_app_func"]
            caller = os.environ["BENCH_AUTHORIZATION"].removeprefix("Bearer ")
            hot = asyncio.run(_per_invocation(handler.get_user_function(), caller, rounds=rounds, requests=requests))
        logging.shutdown()
        return {**hot, "exporter": "azure-monitor-opentelemetry, logger 'broker'"}
    finally:
        server.stop()


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]))))
