"""A fleet of broker processes on the test stack: ``python -m broker serve`` and Functions-worker stand-ins
(tests/fleet/functions_child.py), each a separate instance, sharing Azurite, the vault and the token endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from broker.standin.azurite import ROOT
from broker.standin.serve import closed_port, wait_until_healthy
from tests.conftest import Stack, leaks, sensitive


@dataclass
class Instance:
    kind: str  # "serve" or "functions"
    process: subprocess.Popen[str]
    url: str = ""

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def _log_file(folder: Path, kind: str, index: int) -> Any:
    """Each process's output (its log lines), kept for the leak scan and a failing test's report."""
    return open(folder / f"{kind}-{index}.log", "w")  # noqa: SIM115 - closed when the fleet stops


@dataclass
class Fleet:
    stack: Stack
    caller: str
    instances: list[Instance] = field(default_factory=list)

    async def burst(
        self, per_instance: int, *, only: list[Instance] | None = None, provider: str = "ilevel"
    ) -> list[dict[str, Any]]:
        """``per_instance`` concurrent first requests on every live instance at once; the answers."""
        targets = [i for i in (only or self.instances) if i.process.poll() is None]
        for instance in targets:
            if instance.kind == "functions":
                assert instance.process.stdin is not None
                instance.process.stdin.write(f"{per_instance} {provider}\n")
                instance.process.stdin.flush()
        limits = httpx.Limits(max_connections=per_instance * len(targets))
        async with httpx.AsyncClient(timeout=70.0, limits=limits) as client:

            async def one(url: str) -> dict[str, Any]:
                started = time.perf_counter()
                response = await client.get(
                    url + "/api/token/" + provider, headers={"Authorization": f"Bearer {self.caller}"}
                )
                token = response.json().get("access_token", "") if response.status_code == 200 else ""
                return {
                    "status": response.status_code,
                    "retry_after": response.headers.get("Retry-After"),
                    "token": hashlib.sha256(token.encode()).hexdigest()[:12] if token else None,
                    "seconds": time.perf_counter() - started,
                }

            served = [one(i.url) for i in targets if i.kind == "serve" for _ in range(per_instance)]
            answers = list(await asyncio.gather(*served))
        for instance in targets:
            if instance.kind == "functions":
                assert instance.process.stdout is not None
                line = await asyncio.to_thread(instance.process.stdout.readline)
                answers.extend(json.loads(line))
        return answers


def environment(stack: Stack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "AZURE_", "KEY_VAULT"))}
    env.update(stack.env)
    env.update(stack.servers.identity.environment(stack.servers.url("identity")))
    env["REQUESTS_CA_BUNDLE"] = stack.servers.pki.ca
    env["BROKER_KEY_VAULT_VERIFY_CHALLENGE_RESOURCE"] = "false"
    env["PYTHONPATH"] = str(ROOT)
    env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING", None)
    return env


@contextlib.contextmanager
def fleet_of(stack: Stack, logs: Path, *, serve: int, functions: int) -> Iterator[Fleet]:
    """Start the processes (all at once), wait until each is ready, stop them all on exit; then scan
    every process's log output for secret, key and token values (the suite's leak check, per process)."""
    caller = stack.caller()
    env = environment(stack)
    env["FLEET_TEST_AUTHORIZATION"] = f"Bearer {caller}"
    fleet = Fleet(stack, caller)
    try:
        for index in range(serve):
            port = closed_port()
            process = subprocess.Popen(
                [sys.executable, "-m", "broker", "serve", "--port", str(port)],
                env=env,
                cwd=ROOT,
                stdout=_log_file(logs, "serve", index),
                stderr=subprocess.STDOUT,
                text=True,
            )
            fleet.instances.append(Instance("serve", process, f"http://127.0.0.1:{port}"))
        for index in range(functions):
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.fleet.functions_child"],
                env=env,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=_log_file(logs, "functions", index),
                text=True,
            )
            fleet.instances.append(Instance("functions", process))
        for instance in fleet.instances:
            if instance.kind == "serve":
                assert wait_until_healthy(instance.url, instance.process, timeout_s=60), "a serve process did not start"
            else:
                assert instance.process.stdout is not None
                assert instance.process.stdout.readline().strip() == "ready", "a functions process did not start"
        yield fleet
    finally:
        for instance in fleet.instances:
            if instance.process.poll() is None:
                instance.process.terminate()
        for instance in fleet.instances:
            try:
                instance.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                instance.process.kill()
    for issued in stack.tokens.issued_tokens:
        sensitive(issued)
    for issued in stack.servers.identity.issued_tokens:
        sensitive(issued)
    for log in sorted(logs.glob("*.log")):
        found = leaks(log.read_text(errors="replace"))
        assert not found, f"{log.name} leaks {found}"
