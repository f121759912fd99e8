"""Bench 2: the in-process cost of one cached-token request, caller-token validation included.

The broker's ASGI app (``create_app``) is called directly in a loop, no network, after one
request has filled the token cache and the verified-caller cache. Baseline: an empty ASGI
handler driven by the same loop. The health route is measured too, for the record.
Rounds alternate empty / health / token; each figure is the median of the rounds.
The access log is on, at INFO, into a file, as ``python -m broker serve`` has it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from bench.asgi import empty_app, http_scope, time_requests
from bench.stack import StandIns
from bench.stats import Figure, median
from broker.app import create_app

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


async def _measure(servers: StandIns, *, rounds: int, requests: int) -> dict[str, Any]:
    broker = servers.broker()
    app = create_app(broker)
    caller = servers.caller()
    token_scope = http_scope("/api/token/ilevel", [(b"authorization", f"Bearer {caller}".encode())])
    health_scope = http_scope("/api/health")
    try:
        _, warm = await time_requests(app, token_scope, 1)
        if warm.statuses != {200: 1}:
            raise RuntimeError(f"the warm-up token request failed: {warm.statuses}")
        samples: dict[str, list[float]] = {"empty": [], "health": [], "token": []}
        for _ in range(rounds):
            for name, target, scope in (
                ("empty", empty_app, health_scope),
                ("health", app, health_scope),
                ("token", app, token_scope),
            ):
                seconds, sent = await time_requests(target, scope, requests)
                if set(sent.statuses) != {200}:
                    raise RuntimeError(f"{name}: unexpected statuses {sent.statuses}")
                samples[name].append(seconds * 1e6)
        token_requests = servers.token_requests
    finally:
        await broker.aclose()
    return {
        "us": {name: round(median(values), 2) for name, values in samples.items()},
        "rounds_us": {name: [round(v, 2) for v in values] for name, values in samples.items()},
        "requests_per_round": requests,
        "upstream_token_requests": token_requests,
    }


def run(servers: StandIns, *, rounds: int = 5, requests: int = 3000, log_dir: Path | None = None) -> dict[str, Any]:
    """Measure; return the bench's JSON record (``figures`` and ``details``)."""
    servers.reset()
    handler: logging.Handler = (
        logging.FileHandler(log_dir / "inprocess-access.log") if log_dir else logging.NullHandler()
    )
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    broker_log = logging.getLogger("broker")
    previous = broker_log.level
    broker_log.addHandler(handler)
    broker_log.setLevel(logging.INFO)
    try:
        details = asyncio.run(_measure(servers, rounds=rounds, requests=requests))
    finally:
        broker_log.removeHandler(handler)
        broker_log.setLevel(previous)
        handler.close()
    us = details["us"]
    figures = [
        Figure(
            "inprocess",
            "in-process: cached-token request",
            us["token"],
            us["empty"],
            "µs",
            "empty ASGI handler",
        ),
        Figure(
            "inprocess",
            "in-process: health request",
            us["health"],
            us["empty"],
            "µs",
            "empty ASGI handler",
        ),
    ]
    return {"figures": figures, "details": details}
