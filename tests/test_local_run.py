"""The local run: `make run PORT=...`, a busy port, the token-server stand-in command, placeholder settings."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from broker.__main__ import main
from broker.config import load_settings
from broker.errors import ConfigError
from tests.conftest import leaks, sensitive

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0


class Lines:
    """A child's stdout, line by line, read on a thread so a hung child fails the test instead of hanging it."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        stream = process.stdout

        def pump() -> None:
            for line in stream:
                self._queue.put(line.rstrip("\n"))
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, predicate: str) -> str:
        """Read lines up to and including the first that contains ``predicate``."""
        while True:
            line = self._queue.get(timeout=START_TIMEOUT_S)
            if line is None:
                raise AssertionError(f"output ended before {predicate!r}: {self.seen[-20:]}")
            self.seen.append(line)
            if predicate in line:
                return line


def stop_group(process: subprocess.Popen[str], sig: int = signal.SIGINT) -> int:
    """Signal the process group this test started (make and its python child), then wait."""
    os.killpg(process.pid, sig)
    return process.wait(timeout=30)


def spawn(*command: str) -> subprocess.Popen[str]:
    """A long-running command in its own process group, its stdout read line by line."""
    return subprocess.Popen(
        list(command), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )


@pytest.fixture
def make_run() -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    # -o: the venv is already installed here; PORT=0 lets the broker bind any free port and say which.
    process = spawn("make", "-s", "-o", ".venv/.installed", "run", "PORT=0")
    try:
        yield process, Lines(process)
    finally:
        if process.poll() is None:
            stop_group(process, signal.SIGKILL)


@pytest.mark.slow
def test_make_run_prints_the_banner_only_once_the_broker_answers(make_run: tuple[subprocess.Popen[str], Lines]) -> None:
    """`make run PORT=0`: the banner names the bound port, its curl lines work at once, it says how to stop."""
    process, lines = make_run
    listening = lines.until("listening on http://127.0.0.1:")
    base = re.search(r"http://127\.0\.0\.1:\d+", listening)
    assert base is not None
    health = lines.until("/api/health")
    # Printed means listening: the very first request succeeds, with no retry loop.
    assert health.strip() == f"curl -s {base.group()}/api/health"
    assert httpx.get(f"{base.group()}/api/health", timeout=5).status_code == 200
    token_line = lines.until("/api/token/ilevel")
    assert shlex.split(token_line.strip())[3] == "Authorization: Bearer $TOKEN"
    caller = sensitive(next(line for line in lines.seen if line.startswith("  TOKEN=")).strip().removeprefix("TOKEN="))
    response = httpx.get(f"{base.group()}/api/token/ilevel", headers={"Authorization": f"Bearer {caller}"}, timeout=10)
    assert response.status_code == 200 and response.json()["token_type"] == "Bearer"
    lines.until("Stop it with Ctrl+C.")
    assert sum(line.count(caller) for line in lines.seen) == 1, "the caller token is printed once, as TOKEN=..."
    assert any("Next: README.md" in line for line in lines.seen)
    assert stop_group(process) in (0, 2, -signal.SIGINT)


@pytest.mark.slow
def test_a_busy_port_is_one_clear_line_and_nothing_else() -> None:
    """`make run` on a port in use: one line naming the port and what to do, make's own line, no banner, no curl;
    exactly the two lines the README shows."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        # As a user's shell runs it: not as a sub-make of `make test`, which would add "Entering directory" lines.
        shell = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")}
        done = subprocess.run(
            ["make", "-o", ".venv/.installed", "run", f"PORT={port}"],
            cwd=REPO,
            env=shell,
            capture_output=True,
            text=True,
            timeout=60,
        )
    output = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2, "make's status for a recipe that failed (the program itself exits 1)"
    assert len(output) == 2, output
    assert f"port {port} on 127.0.0.1 is already in use" in output[0] and "make run PORT=" in output[0]
    assert re.fullmatch(r"make: \*\*\* \[Makefile:\d+: run\] Error 1", output[1]), output[1]
    assert "curl" not in done.stdout + done.stderr
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for line in output:
        documented = line.replace(f"port {port} ", "port 7071 ")
        assert documented in readme, f"the README does not show {documented!r}"


@pytest.mark.slow
def test_the_token_server_stand_in_prints_settings_that_check_accepts() -> None:
    """`python -m broker.standin token-server` prints exports; `python -m broker check` with them is OK."""
    server = spawn(sys.executable, "-m", "broker.standin", "token-server")
    try:
        lines = Lines(server)
        lines.until("listening on http://127.0.0.1:")
        lines.until("Stop it with Ctrl+C.")
        exports = dict(line.strip().removeprefix("export ").split("=", 1) for line in lines.seen if "export " in line)
        exports = {key: shlex.split(value)[0] for key, value in exports.items()}
        sensitive(exports["BROKER_SECRET_ILEVEL_CLIENT_SECRET"])
        child = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), **exports}
        done = subprocess.run(
            [sys.executable, "-m", "broker", "check"], cwd=REPO, env=child, capture_output=True, text=True, timeout=60
        )
    finally:
        assert stop_group(server, signal.SIGTERM) == 0
    assert not leaks(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verdict: OK: provider ilevel gets tokens" in done.stdout


@pytest.mark.parametrize("tenant", ["common", "organizations", "Common"])
def test_a_multi_tenant_alias_is_a_configuration_error_saying_a_single_tenant_is_required(tenant: str) -> None:
    """BROKER_TENANT_ID=common would reject every caller later; it is refused at start, saying why."""
    with pytest.raises(ConfigError) as raised:
        load_settings({"BROKER_TENANT_ID": tenant, "BROKER_AUDIENCE": "api://x"})
    assert raised.value.setting == "BROKER_TENANT_ID"
    assert "a single tenant is required" in raised.value.description


def test_the_zero_tenant_placeholder_is_refused_with_what_to_fill_in() -> None:
    """The all-zero tenant of local.settings.example.json is refused, naming the command that prints the real one."""
    with pytest.raises(ConfigError) as raised:
        load_settings({"BROKER_TENANT_ID": "00000000-0000-0000-0000-000000000000", "BROKER_AUDIENCE": "api://x"})
    assert "placeholder" in raised.value.description and "az account show" in raised.value.description


def test_serve_with_the_example_settings_stops_at_start_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m broker --settings local.settings.example.json serve` exits 2 naming the placeholder."""
    example = REPO / "local.settings.example.json"
    for key in json.loads(example.read_text(encoding="utf-8"))["Values"]:
        monkeypatch.setenv(key, "")  # recorded, so whatever --settings sets is undone after the test
        monkeypatch.delenv(key)
    assert main(["serve", "--settings", str(example), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("configuration error: KEY_VAULT_URL still holds the placeholder")
