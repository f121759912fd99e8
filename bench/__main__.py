"""``python -m bench`` (``make bench``): run the nine benches, print one table, write bench/results/latest.json.

``--smoke`` runs every bench with tiny parameters (seconds, not minutes); ``--only NAME``
runs some of them. Absolute numbers depend on a shared, noisy machine: read the ratios.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import burst, coldstart, day, fleet, functions, inprocess, proxy, runtime, throughput
from bench.stack import StandIns, environment, standins
from bench.stats import Figure, render

RESULTS = Path(__file__).resolve().parent / "results"
BENCHES = ("functions", "throughput", "inprocess", "burst", "day", "coldstart", "proxy", "fleet", "runtime")


def plans(smoke: bool, log_dir: Path | None) -> dict[str, Callable[[StandIns], dict[str, Any]]]:
    """Each bench's parameters: the full run (under 5 minutes on 2 cores) or the smoke run."""
    if smoke:
        return {
            "functions": lambda s: functions.run(s, rounds=1, requests=50, burst=20),
            "throughput": lambda s: throughput.run(s, rounds=1, duration_s=0.5, connections=4, warmup_s=0.1),
            "inprocess": lambda s: inprocess.run(s, rounds=1, requests=50),
            "burst": lambda s: burst.run(s, rounds=1, size=40),
            "day": lambda s: day.run(s, hours=2, latency_s=0.2),
            "coldstart": lambda s: coldstart.run(s, runs=1, importtime=False, trip_runs=1),
            "proxy": lambda s: proxy.run(
                s, rounds=1, duration_s=0.5, connections=4, warmup_s=0.1, body_bytes=2 * 1024 * 1024, burst=20
            ),
            "fleet": lambda s: fleet.run(s, rounds=1, misses=2),
            "runtime": lambda s: runtime.run(
                s, rounds=1, requests=20, cold_runs=1, body_bytes=2 * 1024 * 1024, calls=200
            ),
        }
    return {
        "functions": lambda s: functions.run(s, log_dir=log_dir),
        "throughput": lambda s: throughput.run(s, log_dir=log_dir),
        "inprocess": lambda s: inprocess.run(s, log_dir=log_dir),
        "burst": lambda s: burst.run(s, log_dir=log_dir),
        "day": lambda s: day.run(s),
        "coldstart": lambda s: coldstart.run(s),
        "proxy": lambda s: proxy.run(s, log_dir=log_dir),
        "fleet": lambda s: fleet.run(s),
        "runtime": lambda s: runtime.run(s),
    }


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run_benches(names: list[str], *, smoke: bool, log_dir: Path | None = None) -> dict[str, Any]:
    """Run the named benches against one set of stand-ins; return the whole JSON record."""
    started = time.monotonic()
    chosen = plans(smoke, log_dir)
    results: dict[str, Any] = {}
    with standins() as servers, environment(servers.identity_env()):
        for name in names:
            began = time.monotonic()
            record = chosen[name](servers)
            record["seconds"] = round(time.monotonic() - began, 1)
            results[name] = record
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "smoke": smoke,
        "seconds": round(time.monotonic() - started, 1),
        "benches": results,
    }


def figures_of(report: dict[str, Any]) -> list[Figure]:
    return [figure for record in report["benches"].values() for figure in record["figures"]]


def to_json(report: dict[str, Any]) -> dict[str, Any]:
    benches = {
        name: {**record, "figures": [f.as_dict() for f in record["figures"]]}
        for name, record in report["benches"].items()
    }
    return {**report, "benches": benches}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny parameters: checks the benches run, measures nothing"
    )
    parser.add_argument("--only", action="append", choices=BENCHES, help="run only this bench (repeatable)")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = run_benches(args.only or list(BENCHES), smoke=args.smoke, log_dir=args.output.parent)
    info = report["machine"]
    print(f"{report['date']}  {info['cpu']}, nproc={info['nproc']}  Python {info['python']}")
    print(render(figures_of(report)))
    print(
        f"\ntotal {report['seconds']:.0f} s; per bench: "
        + ", ".join(f"{name} {record['seconds']:.0f} s" for name, record in report["benches"].items())
    )
    args.output.write_text(json.dumps(to_json(report), indent=2) + "\n", encoding="utf-8")
    print(f"results: {args.output}")
    missed = [f.name for f in figures_of(report) if f.met is False]
    if missed:
        print("targets missed: " + "; ".join(missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
