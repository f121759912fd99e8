"""The baseline app for bench/runtime.py: a bare AsgiFunctionApp around a trivial ASGI app.

``/api/health`` answers a constant; ``/api/large?bytes=N`` streams N bytes in 64 KiB chunks, as a proxied
body arrives. The worker indexes it from this directory as it indexes the broker's function_app.py.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import azure.functions as func

CHUNK = 64 * 1024


async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["path"] == "/api/large":
        size = int(parse_qs(scope["query_string"].decode())["bytes"][0])
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/octet-stream")]}
        )
        sent = 0
        while sent < size:
            chunk = min(CHUNK, size - sent)
            sent += chunk
            await send({"type": "http.response.body", "body": b"x" * chunk, "more_body": sent < size})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"status": "ok"}'})


app = func.AsgiFunctionApp(app=asgi, http_auth_level=func.AuthLevel.ANONYMOUS)
