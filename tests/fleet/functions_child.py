"""One broker instance as Microsoft's worker runs it, in its own process, for the fleet tests.

Imports ``function_app`` (which builds the broker from the environment), indexes it with
``app.get_functions()``, prints ``ready``, then for each line ``N PROVIDER`` on stdin fires N concurrent
invocations of the indexed HTTP function with ``azure.functions.HttpRequest`` objects on one default
asyncio loop (as the worker does), and prints one JSON line: each answer's status, Retry-After and
the SHA-256 fingerprint of the token served (never the token).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sys
import time
from typing import Any

import azure.functions as func

URL = "https://func-broker.azurewebsites.net/api/token/"


def main() -> None:
    # The worker forwards every log record to the host; here they go to stderr, which the test scans for leaks.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    import function_app

    functions = {f.get_function_name(): f for f in function_app.app.get_functions()}
    handler = functions["http_app_func"].get_user_function()
    headers = {"Authorization": os.environ["FLEET_TEST_AUTHORIZATION"]}
    loop = asyncio.new_event_loop()
    print("ready", flush=True)

    async def one(provider: str) -> dict[str, Any]:
        started = time.perf_counter()
        request = func.HttpRequest(method="GET", url=URL + provider, headers=headers, body=b"")
        response = await handler(request, None)
        body = json.loads(response.get_body() or b"{}")
        token = body.get("access_token", "")
        return {
            "status": response.status_code,
            "retry_after": response.headers.get("Retry-After"),
            "token": hashlib.sha256(token.encode()).hexdigest()[:12] if token else None,
            "seconds": time.perf_counter() - started,
        }

    async def burst(n: int, provider: str) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(one(provider) for _ in range(n))))

    for line in sys.stdin:
        if not line.strip():
            break
        count, provider = line.split()
        print(json.dumps(loop.run_until_complete(burst(int(count), provider))), flush=True)


if __name__ == "__main__":
    main()
