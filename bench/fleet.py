"""Bench 8: the fleet token cache (issue 14), on Azurite started by this bench.

1. First token on a fresh instance: a new :class:`~broker.runtime.Broker` (its own secret client,
   identity token, TLS connection and blob client) serving its first token with a warm fleet cache,
   beside a fresh broker without the fleet cache (Key Vault's two reads and a token request), rounds
   alternating in the same run. The token endpoint answers after ``token_latency_s`` (iLevel's own
   latency is unknown; the stand-in's is ~0); the figure at 0 latency is the fleet path's own cost.
2. The added cost of a fleet read on an in-process miss: the fleet layer's fetch when the blob holds
   nothing newer (read, lease, re-read, fetch, write, release) beside the source's fetch alone, and the
   layer's fetch when the blob holds a usable token (a fleet hit), in the same loop.
3. Memory: this process's peak RSS growth over the bench and Azurite's peak RSS (VmHWM).
"""

from __future__ import annotations

import asyncio
import resource
import secrets
import time
from typing import Any

from bench.stack import StandIns
from bench.stats import Figure, median
from broker.cache import Want
from broker.config import DEFAULT_FLEET_KEY_SECRET, load_settings
from broker.runtime import Broker, Overrides
from broker.standin.azurite import Azurite


def _broker(servers: StandIns, azurite: Azurite | None) -> Broker:
    env = servers.settings_env()
    if azurite is not None:
        env["BROKER_FLEET_CACHE_CONNECTION_STRING"] = azurite.connection_string
    options = {"connection_verify": servers.pki.ca, "verify_challenge_resource": False}
    return Broker(load_settings(env), Overrides(secret_client_options=options))


async def _first_token_s(servers: StandIns, azurite: Azurite | None) -> float:
    broker = _broker(servers, azurite)
    try:
        started = time.perf_counter()
        await broker.providers["ilevel"].cache.get(min_validity=300)
        return time.perf_counter() - started
    finally:
        await broker.aclose()


async def _measure(servers: StandIns, azurite: Azurite, *, rounds: int, misses: int) -> dict[str, Any]:
    # Warm the fleet cache (and the process's imports) once.
    await _first_token_s(servers, azurite)
    requests_before = servers.token_requests
    fresh: dict[str, list[float]] = {"fleet": [], "none": []}
    for _ in range(rounds):
        fresh["none"].append(await _first_token_s(servers, None))
        fresh["fleet"].append(await _first_token_s(servers, azurite))
    fresh_requests = servers.token_requests - requests_before

    fleet, plain = _broker(servers, azurite), _broker(servers, None)
    try:
        layer_fetch = fleet.providers["ilevel"].cache._fetch
        source_fetch = plain.providers["ilevel"].source.fetch
        current = (await fleet.providers["ilevel"].cache.get(min_validity=300)).token
        await source_fetch()
        miss: dict[str, list[float]] = {"source": [], "fleet_hit": [], "fleet_miss": []}
        for _ in range(misses):
            started = time.perf_counter()
            await source_fetch()
            miss["source"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await layer_fetch(Want(300))
            miss["fleet_hit"].append(time.perf_counter() - started)
            started = time.perf_counter()
            # Nothing newer than ``current`` would do: the layer leads a fetch and writes the blob.
            current = await layer_fetch(Want(300, current))
            miss["fleet_miss"].append(time.perf_counter() - started)
    finally:
        await fleet.aclose()
        await plain.aclose()
    return {"fresh": fresh, "fresh_token_requests": fresh_requests, "miss": miss}


def run(
    servers: StandIns,
    *,
    rounds: int = 10,
    misses: int = 20,
    token_latency_s: float = 0.1,
    azurite: Azurite | None = None,
) -> dict[str, Any]:
    """Measure; return the bench's JSON record (``figures`` and ``details``). Starts its own Azurite
    unless one is given (the smoke test's)."""
    servers.reset()
    servers.tokens.latency_s = token_latency_s
    servers.key_vault.set_secret(DEFAULT_FLEET_KEY_SECRET, secrets.token_urlsafe(48))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    own = azurite is None
    emulator = Azurite().start() if azurite is None else azurite
    try:
        sim = asyncio.run(_measure(servers, emulator, rounds=rounds, misses=misses))
        azurite_rss = emulator.peak_rss_kib()
    finally:
        servers.reset()
        if own:
            emulator.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    first = {kind: median(values) * 1000 for kind, values in sim["fresh"].items()}
    miss = {kind: median(values) * 1000 for kind, values in sim["miss"].items()}
    figures = [
        Figure(
            "fleet",
            f"fleet: first token on a fresh instance, warm fleet cache (median of {rounds})",
            first["fleet"],
            first["none"],
            "ms",
            f"fresh instance without the fleet cache, token endpoint {token_latency_s * 1000:.0f} ms",
        ),
        Figure(
            "fleet",
            f"fleet: token requests by {rounds} fresh instances with a warm fleet cache",
            sim["fresh_token_requests"] - rounds,
            rounds,
            "count",
            "the same instances without it",
            target="= 0",
            met=sim["fresh_token_requests"] == rounds,
        ),
        Figure(
            "fleet",
            f"fleet: in-process miss, fleet has nothing newer (read+lease+fetch+write, median of {misses})",
            miss["fleet_miss"],
            miss["source"],
            "ms",
            "the source's fetch alone (today's miss)",
        ),
        Figure(
            "fleet",
            "fleet: in-process miss served by the fleet (a fleet hit)",
            miss["fleet_hit"],
            miss["source"],
            "ms",
            "the source's fetch alone (today's miss)",
        ),
        Figure(
            "fleet",
            "fleet: Azurite peak RSS (VmHWM)",
            azurite_rss / 1024,
            max(rss_growth, 1) / 1024,
            "MiB",
            "bench process peak RSS growth",
        ),
    ]
    details = {
        **sim,
        "medians_ms": {"first_token": first, "miss": miss},
        "token_latency_s": token_latency_s,
        "azurite_peak_rss_kib": azurite_rss,
        "bench_process_peak_rss_growth_kib": rss_growth,
    }
    return {"figures": figures, "details": details}
