"""One cold start, in a fresh interpreter: import an app module and serve its first requests.

``python -m bench.coldstart_child broker [N]`` imports ``function_app`` and fires N (default 10)
concurrent first invocations of GET /api/token/ilevel (caller token from ``BENCH_AUTHORIZATION``),
as the host hands over the requests queued during a cold start; ``... bare [N]`` imports
``bench.bare_function_app`` and fires N of GET /api/health. Both go through ``func.HttpRequest``
to the function's user function, as the Functions Python worker does. The import happens inside
the running event loop, as azure_functions_runtime's async ``worker_init_request`` imports the app;
``BENCH_IMPORT_OUTSIDE_LOOP=1`` imports it before any loop runs instead (no process-start warm-up:
the cold path as the first request alone drives it). Prints JSON: seconds from the first line of
this module to the last response, from the end of the import to the first and the last response,
and the statuses.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import asyncio  # noqa: E402 - timed from the very first line
import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

APPS = {
    # kind: (module, function name, URL, needs a caller token)
    "broker": ("function_app", "http_app_func", "https://func-broker.azurewebsites.net/api/token/ilevel", True),
    "bare": ("bench.bare_function_app", "health", "https://func-bare.azurewebsites.net/api/health", False),
}


def serve_first_requests(kind: str, calls: int) -> dict[str, Any]:
    module_name, function_name, url, with_caller = APPS[kind]
    outside = os.environ.get("BENCH_IMPORT_OUTSIDE_LOOP") == "1"
    module = importlib.import_module(module_name) if outside else None
    imported = time.perf_counter()
    first: list[float] = []
    # Monotonic time is system-wide: the parent lines it up with the stand-ins' trip log.
    imported_at = [time.monotonic()] if outside else []

    async def first_calls() -> list[int]:
        nonlocal module, imported
        if module is None:
            module = importlib.import_module(module_name)
            imported = time.perf_counter()
            imported_at.append(time.monotonic())
        import azure.functions as func

        handler = next(f for f in module.app.get_functions() if f.get_function_name() == function_name)
        user_function = handler.get_user_function()
        headers = {"Authorization": os.environ["BENCH_AUTHORIZATION"]} if with_caller else {}
        request = func.HttpRequest(method="GET", url=url, headers=headers, body=b"")
        # AsgiFunctionApp's function takes (req, context); the bare route takes (req).
        arguments = (request, None) if with_caller else (request,)

        async def one() -> int:
            response = await user_function(*arguments)
            first.append(time.perf_counter())
            return int(response.status_code)

        return list(await asyncio.gather(*(one() for _ in range(calls))))

    statuses = asyncio.run(first_calls())
    done = time.perf_counter()
    return {
        "kind": kind,
        "calls": calls,
        "seconds": done - STARTED,
        "import_seconds": imported - STARTED,
        "first_after_import_seconds": min(first) - imported,
        "last_after_import_seconds": done - imported,
        "imported_at_monotonic": imported_at[0],
        "status": 200 if set(statuses) == {200} else max(statuses),
        "statuses": sorted(set(statuses)),
    }


if __name__ == "__main__":
    print(json.dumps(serve_first_requests(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10)))
