"""Runs of tests/telemetry_child.py (one worker process per app-settings mode), once per test session."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHILD = ROOT / "tests" / "telemetry_child.py"


@functools.cache
def run_child(mode: str) -> dict[str, Any]:
    """What the worker process of ``mode`` (deployed, context, default) did and exported."""
    done = subprocess.run(  # noqa: S603 - our own script, fixed arguments
        [sys.executable, str(CHILD), mode], capture_output=True, text=True, cwd=ROOT, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result
