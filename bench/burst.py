"""Bench 3: a cold burst. 500 concurrent token requests reach a broker whose cache is empty.

Each round starts a fresh ``python -m broker serve`` (empty token cache, no Key Vault
client yet, signing keys not loaded; its process-start warm-up begins as uvicorn starts, so
the burst joins that work in flight or finds it done), opens one connection per request,
then writes all requests at once. Counted at the stand-ins: token requests and Key Vault reads per secret.
Baseline: the same burst on /api/health of a fresh server, and for the counts the number
of requests (what a broker without single-flight could make).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from bench.server import broker_process, cpu_pinning, load
from bench.stack import SECRET_NAMES, StandIns
from bench.stats import Figure, median


def run(servers: StandIns, *, rounds: int = 2, size: int = 500, log_dir: Path | None = None) -> dict[str, Any]:
    """Measure; return the bench's JSON record (``figures`` and ``details``)."""
    pinning = cpu_pinning()
    server_cpu, load_cpu = pinning if pinning else (None, None)
    caller = servers.caller()
    log: IO[Any] | None = open(log_dir / "burst-server.log", "w") if log_dir else None  # noqa: SIM115
    runs: list[dict[str, Any]] = []
    try:
        for _ in range(rounds):
            with broker_process(servers, log=log, cpu=server_cpu) as base:
                health = load(f"{base}/api/health", duration_s=0, connections=0, burst=size, cpu=load_cpu)
            with broker_process(servers, log=log, cpu=server_cpu) as base:
                servers.reset()
                token = load(
                    f"{base}/api/token/ilevel", duration_s=0, connections=0, burst=size, caller=caller, cpu=load_cpu
                )
                counts = {"token_requests": servers.token_requests, "secret_reads": servers.secret_reads()}
            runs.append({"health": health, "token": token, **counts})
    finally:
        if log is not None:
            log.close()
    for entry in runs:
        for name in ("health", "token"):
            if entry[name]["errors"] or entry[name]["requests"] != size:
                raise RuntimeError(f"cold burst {name}: {entry[name]['statuses']} for {size} requests")
    token_requests = max(entry["token_requests"] for entry in runs)
    reads = {name: max(entry["secret_reads"][name] for entry in runs) for name in SECRET_NAMES}
    p50 = median([entry["token"]["p50_ms"] for entry in runs])
    p99 = median([entry["token"]["p99_ms"] for entry in runs])
    health_p50 = median([entry["health"]["p50_ms"] for entry in runs])
    health_p99 = median([entry["health"]["p99_ms"] for entry in runs])
    single = all(entry["token_requests"] == 1 for entry in runs)
    one_read = all(set(entry["secret_reads"].values()) == {1} for entry in runs)
    figures = [
        Figure(
            "burst",
            f"cold burst: token requests (worst of {rounds})",
            token_requests,
            size,
            "count",
            "requests in the burst",
            target="= 1",
            met=single,
        ),
        Figure(
            "burst",
            f"cold burst: Key Vault reads per secret (worst of {rounds})",
            max(reads.values()),
            size,
            "count",
            "requests in the burst",
            target="= 1",
            met=one_read,
        ),
        Figure("burst", "cold burst: p50 latency", p50, health_p50, "ms", "same burst on /api/health"),
        Figure("burst", "cold burst: p99 latency", p99, health_p99, "ms", "same burst on /api/health"),
    ]
    return {"figures": figures, "details": {"size": size, "rounds": runs}}
