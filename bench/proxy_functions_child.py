"""Child process of bench/proxy.py: the Functions entry point passes one large proxied body; prints peak RSS growth.

Run as ``python -m bench.proxy_functions_child <path>`` with the broker's environment and the caller
token in ``BENCH_CALLER``. A fresh process, so ``VmHWM`` (peak RSS) is this measurement's alone: the
worker's way in (import, ``app.get_functions()``, an ``azure.functions.HttpRequest`` invocation of
``http_app_func``), a warm-up, then the body. Prints ``<growth bytes> <body bytes>``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from pathlib import Path

from bench.functions import fresh_function_app, invocation


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> int:
    path, caller = sys.argv[1], os.environ["BENCH_CALLER"]
    with fresh_function_app() as module:
        function = {f.get_function_name(): f for f in module.app.get_functions()}["http_app_func"].get_user_function()

        async def measure() -> tuple[int, int]:
            warm = await function(invocation("/api/proxy/ilevel/entities/assets", caller), None)
            if warm.status_code != 200:
                raise RuntimeError(f"the warm-up proxied invocation answered {warm.status_code}")
            gc.collect()
            before = peak_rss_bytes()
            answer = await function(invocation(path, caller), None)
            grown = peak_rss_bytes() - before
            if answer.status_code != 200:
                raise RuntimeError(f"the large body came back as {answer.status_code}")
            return grown, len(answer.get_body())

        grown, size = asyncio.run(measure())
    print(grown, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
