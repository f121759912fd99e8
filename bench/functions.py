"""Bench 7: the host that matters. Figures through the Azure Functions entry point, as the worker runs it.

The Python worker imports function_app.py, indexes it with ``app.get_functions()`` and awaits the
indexed ``http_app_func`` with ``azure.functions.HttpRequest`` objects on the default asyncio loop
(not uvloop, no uvicorn). This bench does exactly that, in this process:

- **cached-token invocation vs health invocation**: µs per sequential invocation of each through the
  same path (request object → ASGI bridge → broker → ``func.HttpResponse``), after one token request
  filled the caches. Rounds alternate health / token; each figure is the median of the rounds.
- **cold burst**: a fresh import, then N concurrent first invocations of the token route. Baseline: N,
  what a broker without single-flight could send upstream. Token requests and Key Vault reads per
  secret are counted at the stand-ins.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import azure.functions as func

from bench.server import ROOT
from bench.stack import StandIns, environment
from bench.stats import Figure, median

URL = "https://func-broker.azurewebsites.net"


@contextlib.contextmanager
def fresh_function_app() -> Iterator[ModuleType]:
    sys.modules.pop("function_app", None)
    module = importlib.import_module("function_app")
    try:
        yield module
    finally:
        module.app.startup_task_done = False  # no asyncio.run() from AsgiFunctionApp.__del__ at exit
        sys.modules.pop("function_app", None)


def invocation(path: str, caller: str | None = None) -> func.HttpRequest:
    headers = {"Authorization": f"Bearer {caller}"} if caller else {}
    return func.HttpRequest(method="GET", url=URL + path, headers=headers, body=b"")


async def _invoke_many(handler: Any, request: func.HttpRequest, count: int) -> tuple[float, set[int]]:
    statuses = set()
    started = time.perf_counter()
    for _ in range(count):
        statuses.add((await handler(request, None)).status_code)
    return (time.perf_counter() - started) / count, statuses


async def _per_invocation(handler: Any, caller: str, *, rounds: int, requests: int) -> dict[str, Any]:
    token, health = invocation("/api/token/ilevel", caller), invocation("/api/health")
    warm = await handler(token, None)
    if warm.status_code != 200:
        raise RuntimeError(f"the warm-up token invocation answered {warm.status_code}")
    samples: dict[str, list[float]] = {"health": [], "token": []}
    for _ in range(rounds):
        for name, request in (("health", health), ("token", token)):
            seconds, statuses = await _invoke_many(handler, request, requests)
            if statuses != {200}:
                raise RuntimeError(f"{name}: unexpected statuses {statuses}")
            samples[name].append(seconds * 1e6)
    return {
        "us": {name: round(median(values), 2) for name, values in samples.items()},
        "rounds_us": {name: [round(v, 2) for v in values] for name, values in samples.items()},
        "invocations_per_round": requests,
    }


async def _cold_burst(handler: Any, caller: str, size: int) -> dict[str, Any]:
    request = invocation("/api/token/ilevel", caller)

    async def one() -> tuple[int, float]:
        started = time.perf_counter()
        response = await handler(request, None)
        return response.status_code, time.perf_counter() - started

    results = await asyncio.gather(*(one() for _ in range(size)))
    latencies = sorted(seconds for _, seconds in results)
    return {
        "statuses": sorted({status for status, _ in results}),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
    }


@contextlib.contextmanager
def worker_logging(log_dir: Path | None) -> Iterator[None]:
    """The root logger at INFO with one handler, as the worker has it: the access line is written per request."""
    handler: logging.Handler = (
        logging.FileHandler(log_dir / "functions-access.log") if log_dir else logging.StreamHandler(io.StringIO())
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


# Issue 24: through the Functions entry point, a cached token costs at most this many health invocations,
# with the telemetry the Bicep deploys (the worker's Azure Monitor exporter on the broker logger).
TARGET_RATIO = 1.5


def with_exporter(servers: StandIns, caller: str, *, rounds: int, requests: int) -> dict[str, Any]:
    """The per-invocation figures with the Azure Monitor exporter configured, in a child process."""
    env = {**servers.broker_env(), "BENCH_AUTHORIZATION": f"Bearer {caller}"}
    command = [sys.executable, "-m", "bench.functions_telemetry_child", str(rounds), str(requests)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the exporter run failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(
    servers: StandIns,
    *,
    rounds: int = 5,
    requests: int = 2000,
    burst: int = 100,
    log_dir: Path | None = None,
    exporter: bool = True,
) -> dict[str, Any]:
    """Measure; return the bench's JSON record (``figures`` and ``details``)."""
    caller = servers.caller()
    with environment(servers.broker_env()), worker_logging(log_dir):
        servers.reset()
        with fresh_function_app() as module:
            handler = {f.get_function_name(): f for f in module.app.get_functions()}["http_app_func"]
            cold = asyncio.run(_cold_burst(handler.get_user_function(), caller, burst))
        token_requests, reads = servers.token_requests, servers.secret_reads()
        with fresh_function_app() as module:
            handler = {f.get_function_name(): f for f in module.app.get_functions()}["http_app_func"]
            hot = asyncio.run(_per_invocation(handler.get_user_function(), caller, rounds=rounds, requests=requests))
    if cold["statuses"] != [200]:
        raise RuntimeError(f"cold burst answered {cold['statuses']}")
    most_reads = max(reads.values(), default=0)
    us = hot["us"]
    figures = [
        Figure(
            "functions",
            "Functions entry point: cached-token invocation",
            us["token"],
            us["health"],
            "µs",
            "health invocation, same path",
        ),
        Figure(
            "functions",
            f"Functions entry point: {burst}-invocation cold burst, token requests",
            token_requests,
            burst,
            "requests",
            "invocations",
            target="exactly 1",
            met=token_requests == 1,
        ),
        Figure(
            "functions",
            f"Functions entry point: {burst}-invocation cold burst, Key Vault reads per secret",
            most_reads,
            burst,
            "reads",
            "invocations",
            target="exactly 1",
            met=most_reads == 1,
        ),
    ]
    exported = with_exporter(servers, caller, rounds=rounds, requests=requests) if exporter else None
    if exported is not None:
        ratio = exported["us"]["token"] / exported["us"]["health"]
        figures.insert(
            1,
            Figure(
                "functions",
                "Functions entry point: cached-token invocation, Azure Monitor exporter on the broker logger",
                exported["us"]["token"],
                exported["us"]["health"],
                "µs",
                "health invocation, same path and exporter",
                target=f"<= {TARGET_RATIO}x",
                met=ratio <= TARGET_RATIO,
            ),
        )
    details = {
        **hot,
        "with_exporter": exported,
        "cold_burst": {**cold, "size": burst, "token_requests": token_requests, "reads": reads},
    }
    return {"figures": figures, "details": details}
