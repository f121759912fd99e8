"""The broker as operators run it: ``python -m broker serve``, one uvicorn worker, in its own process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from bench.stack import StandIns
from broker.standin.serve import wait_until_healthy

START_TIMEOUT_S = 30.0
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_pinning() -> tuple[int, int] | None:
    """(server CPU, load CPU) when this process may use two CPUs, else None (no pinning)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


@contextmanager
def broker_process(servers: StandIns, *, log: IO[Any] | None = None, cpu: int | None = None) -> Iterator[str]:
    """Start ``python -m broker serve`` wired to the stand-ins; yield its base URL once /api/health answers."""
    port = free_port()
    command = [sys.executable, "-m", "broker", "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        command,
        env=servers.broker_env(),
        cwd=ROOT,
        stdout=log or subprocess.DEVNULL,
        stderr=log or subprocess.DEVNULL,
    )
    try:
        if cpu is not None:
            os.sched_setaffinity(process.pid, {cpu})
        base = f"http://127.0.0.1:{port}"
        if not wait_until_healthy(base, process, timeout_s=START_TIMEOUT_S):
            raise RuntimeError(f"python -m broker serve did not start (exit code {process.poll()})")
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def load(
    url: str,
    *,
    duration_s: float,
    connections: int,
    caller: str | None = None,
    cpu: int | None = None,
    burst: int = 0,
    client: str = "raw",
    warmup_s: float = 0.5,
) -> dict[str, Any]:
    """Run ``python -m bench.loadgen`` in its own process; return its JSON result."""
    env = dict(os.environ)
    command = [sys.executable, "-m", "bench.loadgen", url, "--client", client]
    if burst:
        command += ["--burst", str(burst)]
    else:
        command += ["--duration", str(duration_s), "--connections", str(connections), "--warmup", str(warmup_s)]
    if caller is not None:
        # The caller token goes through the environment, not argv (argv is visible to ps).
        env["BENCH_AUTHORIZATION"] = f"Bearer {caller}"
        command += ["--header-env", "Authorization=BENCH_AUTHORIZATION"]
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    timeout = 60 + duration_s + warmup_s
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench.loadgen failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result
