"""One broker instance as Microsoft's worker runs it, in its own process, for the fleet tests.

Starts ``azure_functions_runtime`` through its own handlers (:mod:`tests.worker.driver`: worker init with the
deployed settings, which imports and indexes ``function_app``, then metadata and load), prints ``ready``,
then for each line ``N PROVIDER`` on stdin fires N concurrent HTTP invocations through the worker on one
default asyncio loop, and prints one JSON line: each answer's status, Retry-After and the SHA-256
fingerprint of the token served (never the token).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.worker.driver import Worker, worker_settings  # noqa: E402

URL = "https://func-broker.azurewebsites.net/api/token/"


def main() -> None:
    # The worker forwards every log record to the host; here they go to stderr, which the test scans for leaks.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    headers = {"authorization": os.environ["FLEET_TEST_AUTHORIZATION"]}
    loop = asyncio.new_event_loop()
    worker = Worker()
    os.environ.update(worker_settings())  # app settings are the worker process's environment
    loop.run_until_complete(worker.start())
    print("ready", flush=True)

    async def one(provider: str) -> dict[str, Any]:
        started = time.perf_counter()
        status, answer_headers, content = await worker.http("GET", URL + provider, headers, b"")
        body = json.loads(content or b"{}")
        token = body.get("access_token", "")
        return {
            "status": status,
            "retry_after": dict((k.lower(), v) for k, v in answer_headers).get("retry-after"),
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
