"""Caching one provider's token: single-flight, refresh-ahead, stale-but-valid.

The cache knows time and concurrency, nothing of OAuth2 or storage: it wraps any
``fetch(want) -> Token`` coroutine (in production :meth:`broker.source.TokenSource.fetch`,
or the fleet layer around it, :mod:`broker.fleet`). ``want`` says what the fetch is for, so a
layer in between can tell whether a token it already has would do.
All callers run on one event loop, so plain attributes plus one shared task give
single-flight without locks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal

from broker.errors import BrokerError
from broker.tokens import Token

log = logging.getLogger(__name__)

# Refresh-ahead window: the last 10% of a token's life, at least 60 s and at most 300 s
# before expiry (azure-identity refreshes 300 s early), never more than half its life.
REFRESH_FRACTION = 0.10
REFRESH_MIN_S = 60.0
REFRESH_MAX_S = 300.0
# A caller asking for min_validity m would have to wait for a fetch once the token has
# less than m left, so refresh-ahead also starts this long before that point: enough
# for a slow token request under steady traffic.
REFRESH_LEAD_S = 30.0
# After a failed fetch, requests within this time get the same answer without any
# upstream traffic: a stream of failing callers is not a stream of fetches.
FAILURE_HOLD_S = 10.0
FAILURE_HOLD_MAX_S = 60.0
# force_refresh=true is honoured at most once per provider per this interval.
FORCE_INTERVAL_S = 30.0

Outcome = Literal["hit", "fetched", "refreshed", "stale"]


@dataclass(frozen=True)
class Want:
    """What the cache asks of a fetch: a token with at least ``min_validity`` seconds (capped as
    :func:`effective_min_validity` caps it), newer than ``current``; ``force``: a new one from upstream."""

    min_validity: float = 0.0
    current: Token | None = None
    force: bool = False


class ForceDeclined(Exception):  # noqa: N818 - a signal between layers, not an error for a caller
    """A fetch layer declined a forced fetch (another instance forced one recently): use ``token``
    (still usable) and tell the caller to come back in ``retry_after`` seconds."""

    def __init__(self, token: Token, retry_after: int) -> None:
        super().__init__(f"forced refresh declined for {retry_after} s")
        self.token = token
        self.retry_after = retry_after


Fetch = Callable[[Want], Awaitable[Token]]


@dataclass(frozen=True)
class Served:
    """What a request gets: the token, how it was obtained, why it is stale (if it is), and,
    for a force_refresh that was not honoured, in how many seconds one would be."""

    token: Token
    outcome: Outcome
    stale_reason: BrokerError | None = None
    force_refused_retry_after: int | None = None


def refresh_threshold(token: Token, min_validity: float) -> float:
    """Remaining seconds at or below which a background refresh starts."""
    life = token.lifetime
    window = min(max(REFRESH_FRACTION * life, REFRESH_MIN_S), REFRESH_MAX_S)
    lead = min_validity + REFRESH_LEAD_S if min_validity > 0 else 0.0
    return min(max(window, lead), life / 2)


def effective_min_validity(token: Token, requested: float) -> float:
    """Capped at half the token's original life, so short-lived tokens don't force a fetch per request."""
    return min(requested, token.lifetime / 2)


class TokenCache:
    """The cached token of one provider."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._token: Token | None = None
        self._flight: asyncio.Task[Token] | None = None
        self._flight_is_background = False
        self._held: tuple[BrokerError, float] | None = None
        self._last_forced = float("-inf")

    @property
    def token(self) -> Token | None:
        return self._token

    @property
    def fetching(self) -> bool:
        return self._flight is not None and not self._flight.done()

    async def get(self, *, min_validity: float = 300.0, force: bool = False) -> Served:
        now = self._clock()
        if force:
            wait = self._force_wait(now)
            if wait is None:
                self._last_forced = now
                try:
                    return await self._fetch_now(self._token, Want(min_validity, self._token, force=True))
                except ForceDeclined as declined:
                    wait = declined.retry_after
            # Refused: the caller still gets a token, as without force, and learns when to ask again.
            return replace(await self._get(now, min_validity), force_refused_retry_after=wait)
        return await self._get(now, min_validity)

    def _force_wait(self, now: float) -> int | None:
        """None if a forced fetch may start now, else whole seconds until one may."""
        until = self._last_forced + FORCE_INTERVAL_S
        if self._held_error(now) is not None and self._held is not None:
            until = max(until, self._held[1])  # a fetch now would only repeat the held failure
        return None if until <= now else max(1, math.ceil(until - now))

    async def _get(self, now: float, min_validity: float) -> Served:
        token = self._token
        if token is not None and token.usable(now):
            wanted = effective_min_validity(token, min_validity)
            if token.remaining(now) >= wanted:
                if token.remaining(now) <= refresh_threshold(token, wanted):
                    self._refresh_in_background(now, Want(min_validity, token))
                return Served(token, "hit")
        return await self._fetch_now(token, Want(min_validity, token))

    async def renew(self, rejected: Token) -> Served:
        """A token to retry with after the upstream rejected ``rejected`` (proxy mode's 401).

        A newer cached token is used as it is; a fetch in flight is joined; otherwise this is a
        forced refresh, which keeps its once-per-30 s limit (when limited, ``rejected`` may come back).
        """
        current = self._token
        if current is not None and current != rejected and current.usable(self._clock()):
            return Served(current, "hit")
        if self.fetching:
            return await self._fetch_now(current, Want(0, current))
        return await self.get(min_validity=0, force=True)

    def warm(self) -> asyncio.Task[Token] | None:
        """Start the first fetch now, ahead of any caller (process start), unless one ran or runs.

        Callers that arrive meanwhile join it. Its failure is not held: a failed warm-up leaves a
        cold cache, and the first caller fetches as if there had been none. Returns the flight."""
        if self._token is not None or self.fetching or self._held is not None:
            return None
        self._flight = self._start_flight(Want(), hold=False)
        return self._flight

    def _held_error(self, now: float) -> BrokerError | None:
        if self._held is None:
            return None
        error, until = self._held
        if now >= until:
            self._held = None
            return None
        if error.retryable:
            error.retry_after = max(1.0, until - now)
        return error

    def _refresh_in_background(self, now: float, want: Want) -> None:
        if self.fetching or self._held_error(now) is not None:
            return
        self._flight = self._start_flight(want)
        self._flight_is_background = True

    def _start_flight(self, want: Want, *, hold: bool = True) -> asyncio.Task[Token]:
        task = asyncio.get_running_loop().create_task(self._run_fetch(want, hold=hold))
        # Background refresh failures are handled in _run_fetch; consume them here too.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._flight_is_background = False
        return task

    async def _run_fetch(self, want: Want, *, hold: bool = True) -> Token:
        try:
            token = await self._fetch(want)
        except ForceDeclined as declined:
            if self._token is None or declined.token.obtained_at > self._token.obtained_at:
                self._token = declined.token
            raise
        except BrokerError as error:
            if hold:
                self._hold(error)
            raise
        except Exception as exc:
            # A bug, not an upstream answer: held like any failure, so it cannot become a request storm.
            log.exception("token fetch failed unexpectedly")
            internal = BrokerError("The broker failed unexpectedly while fetching a token; see its log.")
            if hold:
                self._hold(internal)
            raise internal from exc
        self._token = token
        self._held = None
        return token

    def _hold(self, error: BrokerError) -> None:
        hold = min(max(FAILURE_HOLD_S, error.retry_after or 0.0), FAILURE_HOLD_MAX_S)
        self._held = (error, self._clock() + hold)

    async def _fetch_now(self, fallback: Token | None, want: Want) -> Served:
        """Wait for a token: join the flight in progress or start one; serve stale-but-valid on failure.

        Raises :class:`ForceDeclined` only to the caller whose ``want`` forced the flight."""
        held = self._held_error(self._clock())
        if held is not None:
            return self._stale_or_raise(fallback, held)
        background = self.fetching and self._flight_is_background
        flight = self._flight if self.fetching else None
        if flight is None:
            flight = self._flight = self._start_flight(want)
        try:
            token = await asyncio.shield(flight)
        except ForceDeclined as declined:
            if want.force:
                raise
            return Served(declined.token, "hit")
        except BrokerError as error:
            return self._stale_or_raise(fallback, error)
        return Served(token, "refreshed" if background else "fetched")

    def _stale_or_raise(self, fallback: Token | None, error: BrokerError) -> Served:
        if fallback is not None and fallback.usable(self._clock()):
            log.warning(
                "serving a stale but still valid token (%.0f s left): refresh failed with %s",
                fallback.remaining(self._clock()),
                error.code,
            )
            return Served(fallback, "stale", error)
        raise error.with_traceback(None)
