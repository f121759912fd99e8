"""STAND-IN for local development and tests; never used in production.

Azurite, Microsoft's Blob Storage emulator (npm, pinned by the Makefile into .venv/tools/azurite),
as a child process on loopback: ``--inMemoryPersistence --skipApiVersionCheck``, on the port it
picks (``--blobPort 0``, read back from its start-up line), restartable on the same port. Its
development account key is public by design (loopback only).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AZURITE_BIN = ROOT / ".venv" / "tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public by design, loopback only).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_LISTENING = re.compile(r"listens on http://127\.0\.0\.1:(\d+)")


# How long a stop waits for SIGTERM before it kills (see Azurite.stop).
_TERM_GRACE_S = 0.5


class Azurite:
    """One Azurite blob service process on loopback; can be killed and restarted on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def start(self) -> Azurite:
        """Start (or restart on the same port) and wait for its listening line."""
        if not AZURITE_BIN.exists():
            raise RuntimeError(f"Azurite is not installed at {AZURITE_BIN}: run `make test` (it installs it) first")
        command = [
            str(AZURITE_BIN),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_node_env()
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            found = _LISTENING.search(line)
            if found:
                self.port = int(found.group(1))
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        self.stop()
        raise RuntimeError("Azurite did not start: " + "".join(self.output[-20:]))

    def _drain(self) -> None:
        process = self.process
        if process is not None and process.stdout is not None:
            for _ in process.stdout:
                pass

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        """Stop at once. Azurite's SIGTERM handler waits for open keep-alive connections (a pooled
        client's) until they time out, about 10 s; its data is in memory, so nothing is lost by a kill."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=_TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};"
        )

    def peak_rss_kib(self) -> int:
        """The emulator process's peak resident set (VmHWM), 0 if not running."""
        if self.process is None:
            return 0
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _node_env() -> dict[str, str]:
    env = dict(os.environ)
    node = shutil.which("node")
    if node:
        env["PATH"] = str(Path(node).parent) + os.pathsep + env.get("PATH", "")
    return env
