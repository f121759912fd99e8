"""Bench 5: cold start. Import ``function_app`` and serve concurrent first token requests, in fresh interpreters.

The host hands a cold instance the requests queued while it started, all at once: each run fires
``calls`` concurrent first invocations (10 by default) and times the last answer; the stand-ins count
the token requests they caused (single-flight: 1).

Baseline: a bare one-route ``azure-functions`` app serving a trivial response the same way
(``bench/bare_function_app.py``). Runs alternate broker / bare; each figure is the median.
The broker's first request is the whole cold path: Entra metadata and signing keys, the
caller's RS256 signature, the managed-identity token, Key Vault's challenge and two reads
over TLS, and the token endpoint. With ``importtime`` one more broker run under
``python -X importtime`` lists the heaviest imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from bench.server import ROOT
from bench.stack import StandIns
from bench.stats import Figure, median

TARGET_RATIO = 1.5


def _child(
    servers: StandIns,
    kind: str,
    *,
    caller: str,
    calls: int = 1,
    importtime: bool = False,
    outside_loop: bool = False,
) -> dict[str, Any]:
    env = servers.broker_env()
    env["BENCH_IMPORT_OUTSIDE_LOOP"] = "1" if outside_loop else "0"
    env["BENCH_AUTHORIZATION"] = f"Bearer {caller}"
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    command = [
        sys.executable,
        *(["-X", "importtime"] if importtime else []),
        "-m",
        "bench.coldstart_child",
        kind,
        str(calls),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"cold start of {kind} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["status"] != 200:
        raise RuntimeError(f"cold start of {kind} answered {result['status']}")
    result["process_seconds"] = wall
    if importtime:
        result["heaviest_imports"] = heaviest_imports(done.stderr)
    return result


def heaviest_imports(report: str, *, top: int = 15) -> list[dict[str, Any]]:
    """The slowest imports at nesting level 0 or 1, by cumulative time, from ``-X importtime`` output.

    ``importlib.import_module`` itself is not timed, so level 0 holds ``function_app``'s own
    imports and what the first request imports lazily; level 1 is what those import.
    """
    found: list[tuple[int, int, str]] = []
    for line in report.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        _, cumulative, name = line.split(":", 1)[1].split("|", 2)
        level = (len(name) - len(name.lstrip(" ")) - 1) // 2
        if level <= 1:
            found.append((int(cumulative), level, name.strip()))
    found.sort(reverse=True)
    return [{"module": name, "level": level, "cumulative_ms": round(us / 1000, 1)} for us, level, name in found[:top]]


def run(servers: StandIns, *, runs: int = 5, calls: int = 10, importtime: bool = True) -> dict[str, Any]:
    """Measure; return the bench's JSON record (``figures`` and ``details``)."""
    caller = servers.caller()
    samples: dict[str, list[dict[str, Any]]] = {"broker": [], "bare": []}
    for _ in range(runs):
        servers.reset()
        broker_run = _child(servers, "broker", caller=caller, calls=calls)
        broker_run["token_requests"] = servers.token_requests
        samples["broker"].append(broker_run)
        samples["bare"].append(_child(servers, "bare", caller=caller, calls=calls))
    summary = {
        kind: {
            key: round(median([r[key] for r in results]), 4) for key in ("seconds", "import_seconds", "process_seconds")
        }
        for kind, results in samples.items()
    }
    ratio = summary["broker"]["seconds"] / summary["bare"]["seconds"]
    figures = [
        Figure(
            "coldstart",
            f"cold start: import + {calls} concurrent first token requests (median of {runs})",
            summary["broker"]["seconds"] * 1000,
            summary["bare"]["seconds"] * 1000,
            "ms",
            "bare one-route Functions app",
            target=f"<= {TARGET_RATIO}x",
            met=ratio <= TARGET_RATIO,
        ),
        Figure(
            "coldstart",
            "cold start: import only",
            summary["broker"]["import_seconds"] * 1000,
            summary["bare"]["import_seconds"] * 1000,
            "ms",
            "bare one-route Functions app",
        ),
    ]
    details: dict[str, Any] = {"summary": summary, "runs": samples}
    if importtime:
        details["importtime"] = _child(servers, "broker", caller=caller, importtime=True)["heaviest_imports"]
    return {"figures": figures, "details": details}
