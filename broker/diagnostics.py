"""Diagnostics inside the app: ``python -m broker check``'s steps, run where the identity lives.

With the vault private, a laptop's ``check`` can only say "cannot be reached"; the app reaches
everything with its managed identity. ``GET /api/diagnostics/{provider}`` runs the very steps of
:func:`broker.check.diagnose` with the app's broker (its secret store, its HTTP client, its network
path) and adds what only the app knows: the cache's state, the fleet cache's state, the build and
the instance. The answer is the report ``check`` prints, as JSON, with the same verdict line.

Cost: at most one run per provider per :data:`RUN_INTERVAL_S` (per instance) reaches Key Vault and
the token endpoint; concurrent calls join the run in flight, and later calls within the window get
the last report with its age. The report carries names, versions, lengths and fingerprints, never
a secret, a token or a header value.
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import weakref
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from broker import __version__
from broker.check import Where, diagnose
from broker.config import Setting
from broker.report import CheckReport
from broker.runtime import Broker, Provider

# At most one diagnostics run per provider per minute reaches the token endpoint (issue 17): an
# operator, a script in a loop or a monitor gets the last report in between, never more requests.
RUN_INTERVAL_S = 60.0


class Diagnostics:
    """The diagnostics of one broker (one process): the last report per provider and the run in flight."""

    def __init__(self, broker: Broker, *, env: Mapping[str, str] | None = None) -> None:
        self._broker = broker
        self._env = env
        self._last: dict[str, tuple[float, CheckReport]] = {}
        self._flights: dict[str, asyncio.Task[CheckReport]] = {}
        # Runs that reached Key Vault and the token endpoint (for tests and the bench).
        self.runs = 0

    @classmethod
    def of(cls, broker: Broker) -> Diagnostics:
        """The one Diagnostics of ``broker``, made on first use: its rate limit lives as long as the broker."""
        found = _BY_BROKER.get(broker)
        if found is None:
            found = _BY_BROKER[broker] = cls(broker)
        return found

    @property
    def providers(self) -> list[str]:
        return list(self._broker.providers)

    async def report(self, name: str) -> CheckReport:
        """One known provider's report: a fresh run, the one in flight, or the last one with its age."""
        now = self._broker.clock()
        last = self._last.get(name)
        if last is not None and 0 <= now - last[0] < RUN_INTERVAL_S:
            return replace(last[1], age_s=round(now - last[0], 1))
        flight = self._flights.get(name)
        if flight is None or flight.done():
            flight = self._flights[name] = asyncio.get_running_loop().create_task(self._run(name, now))
        return await asyncio.shield(flight)

    async def summary(self) -> dict[str, Any]:
        """Every provider's report, and one verdict over them (``/api/diagnostics``)."""
        reports = await asyncio.gather(*(self.report(name) for name in self.providers))
        return overall(list(reports), instance_state(self._environment()))

    async def _run(self, name: str, started: float) -> CheckReport:
        self.runs += 1
        env = self._environment()
        report = await diagnose(self._broker, name, Where(env, inside_app=True))
        provider = self._broker.providers[name]
        report.cache = cache_state(provider, self._broker.clock())
        report.fleet = fleet_state(self._broker, name)
        report.instance = instance_state(env)
        report.age_s = 0.0
        self._last[name] = (started, report)
        return report

    def _environment(self) -> Mapping[str, str]:
        return os.environ if self._env is None else self._env


_BY_BROKER: weakref.WeakKeyDictionary[Broker, Diagnostics] = weakref.WeakKeyDictionary()


def overall(reports: list[CheckReport], instance: dict[str, Any]) -> dict[str, Any]:
    """The all-providers answer: ok when every provider is, the verdict ``check`` would print for one."""
    failing = [r for r in reports if not r.ok]
    if len(reports) == 1:
        verdict = reports[0].verdict
    elif not failing:
        verdict = f"OK: providers {', '.join(r.provider for r in reports)} get tokens with the configured settings"
    else:
        verdict = "; ".join(f"provider {r.provider}: {r.verdict}" for r in failing)
    return {
        "ok": not failing,
        "verdict": verdict,
        "providers": [r.as_dict() for r in reports],
        "instance": instance,
    }


def cache_state(provider: Provider, now: float) -> dict[str, Any]:
    """The in-process cache of one provider: whether a token is held, its remaining life, its fingerprint."""
    token = provider.cache.token
    fetching = provider.cache.fetching
    if token is None:
        return {
            "state": "empty",
            "fetching": fetching,
            "summary": "no token cached on this instance yet (the next caller fetches one)",
        }
    remaining = max(0, int(token.remaining(now)))
    state = "valid" if token.usable(now) else "expired"
    return {
        "state": state,
        "remaining_s": remaining,
        "lifetime_s": round(token.lifetime),
        "expires_on": int(token.expires_at),
        "sha256": token.access_token.fingerprint(),
        "fetching": fetching,
        "summary": f"{state} token, {remaining} s left of {round(token.lifetime)} s, "
        f"sha256 {token.access_token.fingerprint()}{', a fetch in flight' if fetching else ''}",
    }


def fleet_state(broker: Broker, provider: str) -> dict[str, Any]:
    """The fleet token cache's state for one provider (:meth:`broker.fleet.Fleet.diagnostics`), or ``off``."""
    if broker.fleet is None:
        return {"state": "off", "summary": f"off ({Setting.FLEET_CACHE_URL} is not set)"}
    return dict(broker.fleet.diagnostics(provider))


def instance_state(env: Mapping[str, str]) -> dict[str, Any]:
    """Which build answered, and on which instance (Functions' WEBSITE_INSTANCE_ID, else host and process)."""
    instance = env.get("WEBSITE_INSTANCE_ID", "").strip() or f"{socket.gethostname()}-{os.getpid()}"
    host = "functions" if env.get("FUNCTIONS_WORKER_RUNTIME") else "serve"
    state = {
        "version": __version__,
        "python": platform.python_version(),
        "host": host,
        "instance_id": instance,
        "site": env.get("WEBSITE_SITE_NAME", "").strip() or None,
    }
    state["summary"] = f"broker {__version__} (Python {state['python']}, {host}), instance {instance}"
    return state
