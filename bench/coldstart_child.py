"""One cold start, in a fresh interpreter: import an app module and serve its first requests.

``python -m bench.coldstart_child broker [N]`` imports ``function_app`` and fires N (default 10)
concurrent first invocations of GET /api/token/ilevel (caller token from ``BENCH_AUTHORIZATION``),
as the host hands over the requests queued during a cold start; ``... bare [N]`` imports
``bench.bare_function_app`` and fires N of GET /api/health. Both go through ``func.HttpRequest``
to the function's user function, as the Functions Python worker does. Prints JSON: seconds from
the first line of this module to the last response, and the statuses.
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
    module = importlib.import_module(module_name)
    imported = time.perf_counter()
    import azure.functions as func

    handler = next(f for f in module.app.get_functions() if f.get_function_name() == function_name)
    user_function = handler.get_user_function()
    headers = {"Authorization": os.environ["BENCH_AUTHORIZATION"]} if with_caller else {}
    request = func.HttpRequest(method="GET", url=url, headers=headers, body=b"")
    # AsgiFunctionApp's function takes (req, context); the bare route takes (req).
    arguments = (request, None) if with_caller else (request,)

    async def first_calls() -> list[int]:
        responses = await asyncio.gather(*(user_function(*arguments) for _ in range(calls)))
        return [response.status_code for response in responses]

    statuses = asyncio.run(first_calls())
    done = time.perf_counter()
    return {
        "kind": kind,
        "calls": calls,
        "seconds": done - STARTED,
        "import_seconds": imported - STARTED,
        "status": 200 if set(statuses) == {200} else max(statuses),
        "statuses": sorted(set(statuses)),
    }


if __name__ == "__main__":
    print(json.dumps(serve_first_requests(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10)))
