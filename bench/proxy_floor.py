"""The proxy's floor, for comparison only: the same stack as ``serve`` in proxy mode, with nothing else.

``python -m bench.proxy_floor UPSTREAM_BASE`` (the upstream token in ``BENCH_UPSTREAM_TOKEN``) serves
``/api/proxy/ilevel/<path>`` under uvicorn with ``serve``'s own configuration
(:func:`broker.serving.server_config`: h11, the same limits) and forwards it with one pooled
``httpx.AsyncClient``, streamed (``send(stream=True)`` and ``aiter_raw``), answering the upstream's
status, content type, length and body. No caller check, no path or header checks, no link rewriting, no
access line: the broker's added latency over this one is what its own work costs. Never a server
for anything but bench 6.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import httpx
import uvicorn
from starlette.types import Receive, Scope, Send

from broker.serving import server_config
from broker.startup import quiet_libraries

PREFIX = "/api/proxy/ilevel/"


class Floor:
    def __init__(self, upstream: str, token: str) -> None:
        self.upstream = upstream.rstrip("/") + "/"
        self.authorization = f"Bearer {token}"
        self.client = httpx.AsyncClient(timeout=30.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if not path.startswith(PREFIX):
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        query = scope["query_string"].decode("latin-1")
        url = self.upstream + path[len(PREFIX) :] + ("?" + query if query else "")
        request = self.client.build_request("GET", url, headers={"Authorization": self.authorization})
        response = await self.client.send(request, stream=True)
        try:
            headers = [(b"content-type", response.headers.get("content-type", "application/json").encode())]
            if "content-length" in response.headers:  # raw bytes pass unchanged, so the length holds
                headers.append((b"content-length", response.headers["content-length"].encode()))
            await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


def main(upstream: str) -> None:
    logging.basicConfig(level=logging.INFO)  # uvicorn's "running on" line, which the bench reads
    quiet_libraries()  # as serve does: no httpx line per request
    config = server_config(Floor(upstream, os.environ["BENCH_UPSTREAM_TOKEN"]), host="127.0.0.1", port=0)
    config.log_config = None
    config.log_level = logging.INFO
    asyncio.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main(sys.argv[1])
