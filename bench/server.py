"""The broker as operators run it: ``python -m broker serve``, one uvicorn worker, in its own process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from bench.stack import StandIns

START_TIMEOUT_S = 30.0
ROOT = Path(__file__).resolve().parent.parent


LISTENING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


def listening_url(log_path: Path, offset: int, process: subprocess.Popen[bytes], timeout_s: float) -> str | None:
    """The URL ``serve`` logs (past ``offset`` of its log) once it listens on the port it bound itself:
    port 0, so no free-port race."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        with log_path.open("rb") as written:
            written.seek(offset)
            match = LISTENING.search(written.read().decode("utf-8", errors="replace"))
        if match:
            return match.group(1)
        time.sleep(0.02)
    return None


def cpu_pinning() -> tuple[int, int] | None:
    """(server CPU, load CPU) when this process may use two CPUs, else None (no pinning)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


@contextmanager
def listening_process(
    command: list[str],
    env: dict[str, str],
    *,
    name: str,
    log: IO[Any] | None = None,
    cpu: int | None = None,
    started: list[subprocess.Popen[bytes]] | None = None,
) -> Iterator[str]:
    """Start ``command`` (a server that logs the URL it listens on); yield that URL; stop it on exit.

    ``cpu`` pins it to one CPU; ``started`` receives the process (for its memory)."""
    with contextlib.ExitStack() as exits:
        if log is None:
            log = exits.enter_context(tempfile.NamedTemporaryFile("w+b", prefix=f"bench-{name}-", suffix=".log"))
        log.flush()
        offset = os.path.getsize(log.name)
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=log)
        if started is not None:
            started.append(process)
        try:
            if cpu is not None:
                os.sched_setaffinity(process.pid, {cpu})
            base = listening_url(Path(log.name), offset, process, START_TIMEOUT_S)
            if base is None:
                raise RuntimeError(f"{' '.join(command[1:])} did not start (exit code {process.poll()})")
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def broker_process(
    servers: StandIns,
    *,
    log: IO[Any] | None = None,
    cpu: int | None = None,
    extra_env: dict[str, str] | None = None,
    started: list[subprocess.Popen[bytes]] | None = None,
) -> Iterator[str]:
    """Start ``python -m broker serve`` wired to the stand-ins; yield its base URL once it listens.

    ``extra_env`` adds app settings (e.g. proxy mode); ``started`` receives the process (for its memory).
    """
    command = [sys.executable, "-m", "broker", "serve", "--host", "127.0.0.1", "--port", "0"]
    env = {**servers.broker_env(), **(extra_env or {})}
    with listening_process(command, env, name="serve", log=log, cpu=cpu, started=started) as base:
        yield base


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
