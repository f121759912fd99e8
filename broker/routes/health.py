"""``/api/health``: anonymous, touches nothing upstream (the availability test and the platform's probe)."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from broker.http import Access, Route
from broker.runtime import Broker


async def health(broker: Broker, request: Request, access: Access, match: re.Match[str]) -> Response:
    """``/api/health``: anonymous, touches nothing upstream."""
    return JSONResponse({"status": "ok"})


HEALTH = Route(kind="health", path=re.compile(r"^/api/health$"), methods=("GET", "HEAD"), handler=health, accepts=None)
