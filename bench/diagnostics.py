"""The diagnostics route's latency: warm (the last report, within the minute) and when it runs (Key Vault
reads and a real token request), against the stand-ins, with ``/api/health`` as the same-run baseline.

    .venv/bin/python -m bench.diagnostics [--warm 300] [--runs 20]

The ASGI app is called in process through httpx's ASGI transport (no HTTP server in between); Key Vault
(TLS), the managed-identity endpoint and the token endpoint are the stand-ins on loopback, in threads of
this process. A run is forced by moving the broker's clock past the 60 s window before each call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import httpx

from bench.stack import AUDIENCE, StandIns, environment, standins
from broker.app import create_app
from broker.diagnostics import RUN_INTERVAL_S


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def measure(stand: StandIns, *, warm: int, runs: int) -> dict[str, Any]:
    clock = Clock()
    broker = stand.broker(clock=clock)
    token = stand.entra.mint(stand.entra.tenant_id, aud=AUDIENCE, roles=["Broker.Operator"], expires_in=3600)
    headers = {"Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app=create_app(broker))
    async with httpx.AsyncClient(transport=transport, base_url="https://bench.invalid") as client:

        async def timed(path: str, auth: bool = True) -> float:
            started = time.perf_counter()
            response = await client.get(path, headers=headers if auth else {})
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
            return elapsed

        cold: list[float] = []
        requests_before = stand.token_requests
        for _ in range(runs):
            clock.now += RUN_INTERVAL_S + 1
            cold.append(await timed("/api/diagnostics/ilevel"))
        token_requests = stand.token_requests - requests_before
        warm_ms = [await timed("/api/diagnostics/ilevel") for _ in range(warm)]
        health_ms = [await timed("/api/health", auth=False) for _ in range(warm)]
    await broker.aclose()
    return {
        "warm_p50_ms": statistics.median(warm_ms),
        "warm_p95_ms": percentile(warm_ms, 0.95),
        "run_p50_ms": statistics.median(cold),
        "run_p95_ms": percentile(cold, 0.95),
        "health_p50_ms": statistics.median(health_ms),
        "warm_to_health": statistics.median(warm_ms) / statistics.median(health_ms),
        "run_to_warm": statistics.median(cold) / statistics.median(warm_ms),
        "token_requests_per_run": token_requests / runs,
        "warm_calls": warm,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.diagnostics")
    parser.add_argument("--warm", type=int, default=300)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    with standins() as stand, environment(stand.identity_env()):
        result = asyncio.run(measure(stand, warm=args.warm, runs=args.runs))
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
