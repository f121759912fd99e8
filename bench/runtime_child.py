"""Child process of bench/runtime.py: one worker process, Microsoft's worker inside it, one measurement.

``python -m bench.runtime_child MEASUREMENT APP [ARG]`` with the app settings in the environment (the caller
token in ``BENCH_AUTHORIZATION``). APP is ``broker`` (the repository's function_app.py) or ``bare``
(bench/bare_asgi/function_app.py, a bare AsgiFunctionApp). The worker, ``azure_functions_runtime`` as
requirements.txt pins it, is driven through its own handlers as the host's proxy worker drives it
(tests/worker/driver.py): worker init (which imports and indexes the app), metadata, load, invocations.
Prints one JSON line.

- ``coldstart APP N``: seconds from this module's first line to the last of N concurrent first invocations
  (the broker's token route, the bare app's constant);
- ``latency APP ROUNDS:N``: per-invocation p50 of the health route and, for the broker, the cached-token
  route, in alternating rounds of N sequential invocations;
- ``rss APP PATH``: peak RSS growth (VmHWM) while one invocation answers PATH (a large body), after a warm-up;
- ``percall APP N``: VmRSS after every N/10 invocations of the token route (bare: its constant), after a
  warm-up: memory per call must be flat.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import asyncio  # noqa: E402 - timed from the very first line
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIRECTORIES = {"broker": ROOT, "bare": ROOT / "bench" / "bare_asgi"}
BASE = "https://func-broker.azurewebsites.net"


def status_line(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {name} in /proc/self/status")


async def main(measurement: str, app: str, arg: str) -> dict[str, Any]:
    from tests.worker.driver import Worker

    worker = Worker(DIRECTORIES[app])
    await worker.start()
    headers = {"authorization": os.environ["BENCH_AUTHORIZATION"]} if app == "broker" else {}
    first = "/api/token/ilevel" if app == "broker" else "/api/health"

    async def call(path: str) -> tuple[int, int]:
        status, _, body = await worker.http("GET", BASE + path, headers, b"")
        if status != 200:
            raise RuntimeError(f"{path} answered {status}: {body[:200]!r}")
        return status, len(body)

    if measurement == "coldstart":
        await asyncio.gather(*(call(first) for _ in range(int(arg))))
        return {"seconds": time.perf_counter() - STARTED}
    if measurement == "latency":
        rounds, count = (int(part) for part in arg.split(":"))
        routes = {"health": "/api/health", **({"token": "/api/token/ilevel"} if app == "broker" else {})}
        await call(first)
        samples: dict[str, list[float]] = {name: [] for name in routes}
        for _ in range(rounds):
            for name, path in routes.items():
                for _ in range(count):
                    began = time.perf_counter()
                    await call(path)
                    samples[name].append((time.perf_counter() - began) * 1e6)
        return {"p50_us": {name: round(statistics.median(values), 1) for name, values in samples.items()}}
    if measurement == "rss":
        await call("/api/proxy/ilevel/entities/assets" if app == "broker" else first)  # proxy mode: no token route
        gc.collect()
        before = status_line("VmHWM")
        _, size = await call(arg)
        return {"growth": status_line("VmHWM") - before, "body": size}
    if measurement == "percall":
        calls = int(arg)
        for _ in range(max(200, calls // 20)):  # warm-up: caches, pools, the allocator's arenas
            await call(first)
        checkpoints = []
        for _ in range(10):
            for _ in range(calls // 10):
                await call(first)
            gc.collect()
            checkpoints.append(status_line("VmRSS"))
        return {"calls": calls, "rss": checkpoints, "failures": worker.failures}
    raise ValueError(f"unknown measurement {measurement!r}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(asyncio.run(main(*sys.argv[1:4]))))
