"""``python -m bench.workbook record|render``: record the workbook's night, then draw docs/workbook.png from it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.workbook.night import HOURS, record
from bench.workbook.panels import render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.workbook", description=__doc__.splitlines()[0] if __doc__ else None
    )
    commands = parser.add_subparsers(dest="command", required=True)
    recorder = commands.add_parser("record", help="run the broker against the stand-ins; write JSON lines")
    recorder.add_argument("log", type=Path)
    recorder.add_argument("--hours", type=float, default=HOURS)
    drawer = commands.add_parser("render", help="plot the workbook's panels from a recorded log")
    drawer.add_argument("log", type=Path)
    drawer.add_argument("png", type=Path)
    drawer.add_argument("--workbook", type=Path, default=Path("infra/app/workbook.json"))
    args = parser.parse_args(argv)
    if args.command == "record":
        started = time.perf_counter()
        count = record(args.log, hours=args.hours)
        print(f"{count} rows in {args.log} ({time.perf_counter() - started:.0f} s)")
    else:
        render(args.log, args.png, args.workbook)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
