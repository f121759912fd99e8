"""Bench 1: cached-token throughput over loopback HTTP, against /api/health on the same server.

One ``python -m broker serve`` process (one uvicorn worker) and one ``bench.loadgen``
process, pinned to different CPUs when there are two. After one token request has filled
the caches, rounds alternate health / token with the same generator settings; each
figure is the median over its rounds. The token route's caller token is valid and
identical for every request, as an ADF pipeline's managed identity sends it. A third
series sends that same Authorization header to /api/health: the difference between the
two health series is what parsing the ~1 KB caller token costs the HTTP server alone.
Beside requests per second, each series reports the server process's CPU time per request (from
``/proc``): on a shared machine, other people's jobs move requests per second far more than they move
the server's own CPU per request.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import IO, Any

import httpx

from bench.server import broker_process, cpu_pinning, load
from bench.stack import StandIns
from bench.stats import Figure, median

# Issue 24: a cached token for about the price of the health route, under wrk -c32-like load.
TARGET_RATIO = 0.90
SUMMARY_KEYS = ("rps", "p50_ms", "p99_ms", "server_cpu_us_per_request")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (``/proc/<pid>/stat``): a figure the neighbours
    on a shared machine disturb far less than requests per second."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(
    servers: StandIns,
    *,
    rounds: int = 3,
    duration_s: float = 5.0,
    connections: int = 32,
    warmup_s: float = 0.5,
    log_dir: Path | None = None,
) -> dict[str, Any]:
    """Measure; return the bench's JSON record (``figures`` and ``details``)."""
    servers.reset()
    pinning = cpu_pinning()
    server_cpu, load_cpu = pinning if pinning else (None, None)
    caller = servers.caller()
    log: IO[Any] | None = open(log_dir / "throughput-server.log", "w") if log_dir else None  # noqa: SIM115
    started: list[subprocess.Popen[bytes]] = []
    try:
        with broker_process(servers, log=log, cpu=server_cpu, started=started) as base:
            first = httpx.get(f"{base}/api/token/ilevel", headers={"Authorization": f"Bearer {caller}"}, timeout=30)
            if first.status_code != 200:
                raise RuntimeError(f"the first token request failed: {first.status_code} {first.text[:200]}")
            runs: dict[str, list[dict[str, Any]]] = {"health": [], "health_with_caller_header": [], "token": []}
            # health+header sends the token route's request bytes: it isolates the HTTP parsing of the caller token.
            series = (
                ("health", "/api/health", None),
                ("health_with_caller_header", "/api/health", caller),
                ("token", "/api/token/ilevel", caller),
            )
            for _ in range(rounds):
                for name, path, header in series:
                    before = cpu_seconds(started[0].pid)
                    result = load(
                        f"{base}{path}",
                        duration_s=duration_s,
                        connections=connections,
                        caller=header,
                        cpu=load_cpu,
                        warmup_s=warmup_s,
                    )
                    # The warm-up's requests used CPU too: counted at the measured rate.
                    served = result["requests"] + result["rps"] * warmup_s
                    result["server_cpu_us_per_request"] = (cpu_seconds(started[0].pid) - before) / served * 1e6
                    runs[name].append(result)
    finally:
        if log is not None:
            log.close()
    for name, results in runs.items():
        failed = sum(r["errors"] for r in results)
        if failed:
            raise RuntimeError(f"{name}: {failed} requests did not answer 200")
    summary = {
        name: {
            key: median([r[key] for r in results]) for key in ("rps", "p50_ms", "p99_ms", "server_cpu_us_per_request")
        }
        for name, results in runs.items()
    }
    ratio = summary["token"]["rps"] / summary["health"]["rps"]
    figures = [
        Figure(
            "throughput",
            "HTTP: token route throughput",
            summary["token"]["rps"],
            summary["health"]["rps"],
            "req/s",
            "/api/health",
            target=f">= {TARGET_RATIO}x",
            met=ratio >= TARGET_RATIO,
        ),
        Figure(
            "throughput",
            "HTTP: token route throughput (same headers)",
            summary["token"]["rps"],
            summary["health_with_caller_header"]["rps"],
            "req/s",
            "/api/health + same Authorization header",
        ),
        Figure(
            "throughput",
            "HTTP: server CPU per request, token route (RPS ratio = baseline / value)",
            summary["token"]["server_cpu_us_per_request"],
            summary["health"]["server_cpu_us_per_request"],
            "µs",
            "/api/health",
        ),
        Figure(
            "throughput",
            "HTTP: server CPU per request, token route (same headers)",
            summary["token"]["server_cpu_us_per_request"],
            summary["health_with_caller_header"]["server_cpu_us_per_request"],
            "µs",
            "/api/health + same Authorization header",
        ),
        Figure(
            "throughput",
            "HTTP: token route p50 latency",
            summary["token"]["p50_ms"],
            summary["health"]["p50_ms"],
            "ms",
            "/api/health",
        ),
        Figure(
            "throughput",
            "HTTP: token route p99 latency",
            summary["token"]["p99_ms"],
            summary["health"]["p99_ms"],
            "ms",
            "/api/health",
        ),
    ]
    details = {
        "summary": summary,
        "rounds": runs,
        "upstream_token_requests": servers.token_requests,
        "settings": {
            "rounds": rounds,
            "duration_s": duration_s,
            "warmup_s": warmup_s,
            "connections": connections,
            "server_cpu": server_cpu,
            "load_cpu": load_cpu,
            "load_generator": "bench.loadgen (raw asyncio HTTP/1.1 keep-alive, closed loop)",
        },
    }
    return {"figures": figures, "details": details}
