"""Bench 9: the figures inside Microsoft's worker, the code that runs in Azure for Python 3.13.

``azure_functions_runtime`` (pinned in requirements.txt) in a fresh child process per measurement
(bench/runtime_child.py), driven through its own handlers as the host's proxy worker drives it
(tests/worker/driver.py: worker init, metadata, load, ``InvocationRequest`` messages), with the app
settings infra/app/broker.bicep deploys except the Azure Monitor switch (no ingestion endpoint here; the
per-invocation trace-context path runs, through PYTHON_ENABLE_OPENTELEMETRY). Not measured: the .NET host
and its gRPC hop, the proxy worker, real protobuf serialization.

- **token vs health**: per-invocation p50 of the cached-token route against the health route, same worker;
- **50 MiB proxied page**: peak RSS growth while one invocation answers a 50 MiB octet-stream page in proxy
  mode, against the body size and against a bare ``AsgiFunctionApp`` answering 50 MiB in the same worker;
- **cold start**: from the process's first line to the last of 10 concurrent first token invocations
  (worker init, which imports function_app.py, included), against a bare ``AsgiFunctionApp``'s constant;
- **memory per call**: RSS after 10,000 token invocations against RSS after the first 1,000 (flat = 1.00×).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.stack import StandIns
from bench.stats import Figure
from broker.standin.dataapi import DataApi
from broker.standin.serve import run_server

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
BODY_BYTES = 50 * MIB
COLD_CALLS = 10


def _child(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "bench.runtime_child", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.runtime_child {' '.join(args)} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _environment(servers: StandIns) -> dict[str, str]:
    from tests.worker.driver import worker_settings

    return {**servers.broker_env(), **worker_settings(), "BENCH_AUTHORIZATION": f"Bearer {servers.caller()}"}


def run(
    servers: StandIns,
    *,
    rounds: int = 5,
    requests: int = 500,
    cold_runs: int = 5,
    body_bytes: int = BODY_BYTES,
    calls: int = 10_000,
) -> dict[str, Any]:
    """Measure; return the bench's JSON record (``figures`` and ``details``)."""
    servers.reset()
    env = _environment(servers)
    latency = _child(env, "latency", "broker", f"{rounds}:{requests}")["p50_us"]
    bare_latency = _child(env, "latency", "bare", f"{rounds}:{requests}")["p50_us"]
    cold: dict[str, list[float]] = {"broker": [], "bare": []}
    for _ in range(cold_runs):  # alternating, so the machine's load falls on both alike
        for app in cold:
            servers.reset()
            cold[app].append(_child(env, "coldstart", app, str(COLD_CALLS))["seconds"])
    api = DataApi(servers.tokens)
    with run_server(api) as api_server:
        api.public_url = api_server.url
        proxy_env = {
            **env,
            "BROKER_ILEVEL_MODE": "proxy",
            "BROKER_ILEVEL_API_BASE_URL": api.base_url,
            "BROKER_PROXY_MAX_RESPONSE_MB": str(body_bytes // MIB + 16),
        }
        rss = _child(proxy_env, "rss", "broker", f"/api/proxy/ilevel/large?bytes={body_bytes}")
    bare_rss = _child(env, "rss", "bare", f"/api/large?bytes={body_bytes}")
    if rss["body"] != body_bytes or bare_rss["body"] != body_bytes:
        raise RuntimeError(f"a large body came back short: {rss['body']}, {bare_rss['body']} of {body_bytes}")
    servers.reset()
    percall = _child(env, "percall", "broker", str(calls))
    bare_percall = _child(env, "percall", "bare", str(calls))
    if percall["failures"]:
        raise RuntimeError(f"the worker refused invocations: {percall['failures'][:3]}")
    cold_broker, cold_bare = statistics.median(cold["broker"]), statistics.median(cold["bare"])
    first, last = percall["rss"][0], percall["rss"][-1]
    figures = [
        Figure(
            "runtime",
            "Inside the worker: cached-token invocation p50",
            latency["token"],
            latency["health"],
            "µs",
            "health invocation, same worker",
        ),
        Figure(
            "runtime",
            f"Inside the worker: peak RSS growth, one {body_bytes // MIB} MiB proxied page",
            rss["growth"] / MIB,
            body_bytes / MIB,
            "MiB",
            "the body",
        ),
        Figure(
            "runtime",
            f"Inside the worker: peak RSS growth, one {body_bytes // MIB} MiB page vs a bare AsgiFunctionApp",
            rss["growth"] / MIB,
            bare_rss["growth"] / MIB,
            "MiB",
            "bare AsgiFunctionApp, same body, same worker",
        ),
        Figure(
            "runtime",
            f"Inside the worker: cold start to {COLD_CALLS} first tokens",
            cold_broker * 1000,
            cold_bare * 1000,
            "ms",
            f"bare AsgiFunctionApp, {COLD_CALLS} first calls",
        ),
        Figure(
            "runtime",
            f"Inside the worker: RSS after {calls:,} token invocations",
            last / MIB,
            first / MIB,
            "MiB",
            f"after the first {calls // 10:,}",
            target="flat (<= 1.01x)",
            met=last <= first * 1.01,
        ),
    ]
    details = {
        "p50_us": latency,
        "bare_p50_us": bare_latency,
        "cold_start_s": cold,
        "rss_50mib": rss,
        "bare_rss_50mib": bare_rss,
        "rss_per_checkpoint": percall["rss"],
        "bare_rss_per_checkpoint": bare_percall["rss"],
        "bytes_per_call": (last - first) / (calls - calls // 10),
        "bare_bytes_per_call": (bare_percall["rss"][-1] - bare_percall["rss"][0]) / (calls - calls // 10),
        "settings": "infra/app/broker.bicep's literal app settings, PYTHON_ENABLE_OPENTELEMETRY in place of "
        "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY (no ingestion endpoint)",
    }
    return {"figures": figures, "details": details}
