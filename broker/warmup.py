"""Process-start warm-up: the cold path's upstream work begins when the process starts, side by side.

A new instance's first token otherwise waits on Entra's metadata and signing keys, then Key
Vault's challenge, the managed-identity token, the two secret reads and the token endpoint,
one after another. Started with the process, these run at once: the signing keys beside the
identity token beside each provider's first fetch (the fleet cache's read included, when it
is on, since it is a layer of that fetch). A request that arrives meanwhile joins the work in
flight (the token cache's single flight, the signing keys' lock, the credential's single flight).

This is process-start work, not request-triggered: it runs once, because the process started,
whatever requests come or don't. The request rule is unchanged: an unauthenticated request
causes no upstream work of its own (tests/test_properties.py), and it never starts, restarts
or waits for the warm-up.

A failed warm-up is a cold cache: one WARNING line names what failed by error code (never a
secret, a token or an upstream's text), nothing is held against later requests, and the first
request that needs the part does the work itself as if there had been no warm-up.

Where a process starts: :func:`broker.startup.start_functions` (the Functions worker imports
function_app.py inside its running event loop) and :class:`broker.serving.BrokerServer` (serve).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

from broker.errors import BrokerError
from broker.runtime import Broker
from broker.secrets import KeyVaultSecretStore

log = logging.getLogger("broker.warmup")


def _reason(error: BaseException) -> str:
    """What failed, safe to log: the broker's error code, else the exception's type (never its text)."""
    return error.code if isinstance(error, BrokerError) else type(error).__name__


async def warm_up(broker: Broker) -> dict[str, str]:
    """Run every warm-up step at once; return the failed ones (step -> reason), after logging them once."""
    started = time.perf_counter()
    steps: dict[str, Awaitable[object]] = {}
    if broker.authenticator is not None:
        steps["signing keys"] = broker.authenticator.warm()
    if isinstance(broker.secrets, KeyVaultSecretStore):
        steps["Key Vault identity token"] = broker.secrets.warm()
    for name, provider in broker.providers.items():
        flight = provider.cache.warm()
        if flight is not None:
            # Shielded: the flight belongs to the cache and its callers, not to this warm-up.
            steps[f"token for provider {name}"] = asyncio.shield(flight)
    results = await asyncio.gather(*steps.values(), return_exceptions=True)
    failed = {step: _reason(r) for step, r in zip(steps, results, strict=True) if isinstance(r, BaseException)}
    elapsed_ms = (time.perf_counter() - started) * 1000
    if failed:
        log.warning(
            "warm-up: %s failed after %.0f ms; the first request that needs it does that work itself",
            ", ".join(f"{step} ({reason})" for step, reason in failed.items()),
            elapsed_ms,
        )
    else:
        log.info("warm-up: %s ready in %.0f ms", ", ".join(steps) or "nothing to do", elapsed_ms)
    return failed


def start_warm_up(broker: Broker) -> asyncio.Task[dict[str, str]] | None:
    """Schedule :func:`warm_up` on the running event loop; None when no loop runs (nothing to start it on).

    The caller keeps the task (the loop holds only a weak reference to it)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    task = loop.create_task(warm_up(broker), name="broker-warm-up")
    # Its outcome is logged inside; a cancellation (a test replacing the broker) needs no report.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return task
