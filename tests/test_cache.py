"""The token cache: single-flight, refresh-ahead, min_validity, stale-but-valid, failure hold."""

from __future__ import annotations

import asyncio

import pytest

from broker.cache import FAILURE_HOLD_S, FORCE_INTERVAL_S, TokenCache, Want, refresh_threshold
from broker.errors import BrokerError, UpstreamUnavailable
from broker.tokens import Secret, Token


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Upstream:
    """A fetch function: counts calls, issues numbered tokens, fails on demand."""

    def __init__(self, clock: Clock, lifetime: float = 3600.0, delay: float = 0.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.delay = delay
        self.calls = 0
        self.fail: BrokerError | None = None

    async def __call__(self, want: Want | None = None) -> Token:
        self.calls += 1
        sent = self.clock()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return Token(Secret(f"token-{self.calls}"), obtained_at=sent, expires_at=sent + self.lifetime)


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_hundred_concurrent_cold_requests_make_one_fetch(clock: Clock) -> None:
    """N concurrent requests on a cold cache share one fetch and get the same token."""
    upstream = Upstream(clock, delay=0.05)
    cache = TokenCache(upstream, clock=clock)
    served = await asyncio.gather(*(cache.get(min_validity=300) for _ in range(100)))
    assert upstream.calls == 1
    assert {s.token.access_token.reveal() for s in served} == {"token-1"}


async def test_refresh_ahead_starts_inside_the_window_and_serves_the_cached_token(clock: Clock) -> None:
    """In the last 300 s of a 1-hour token the next request starts one refresh and does not wait."""
    upstream = Upstream(clock)
    cache = TokenCache(upstream, clock=clock)
    first = await cache.get(min_validity=0)
    clock.now += 3600 - 301
    await cache.get(min_validity=0)
    await settle()
    assert upstream.calls == 1, "one second before the window: no refresh"
    clock.now += 2
    served = await cache.get(min_validity=0)
    assert served.token is first.token
    assert served.outcome == "hit"
    await settle()
    assert upstream.calls == 2
    assert cache.token is not None
    assert cache.token.access_token.reveal() == "token-2"


async def test_refresh_ahead_leads_the_callers_min_validity(clock: Clock) -> None:
    """With the default min_validity of 300 s the refresh starts 30 s before a caller would have to wait."""
    upstream = Upstream(clock)
    cache = TokenCache(upstream, clock=clock)
    token = (await cache.get(min_validity=300)).token
    assert refresh_threshold(token, 300) == 330
    clock.now += 3600 - 331
    await cache.get(min_validity=300)
    await settle()
    assert upstream.calls == 1
    clock.now += 2
    assert (await cache.get(min_validity=300)).outcome == "hit"
    await settle()
    assert upstream.calls == 2


async def test_refresh_window_never_exceeds_half_the_life(clock: Clock) -> None:
    """A 60-second token refreshes at half-life, not 60 s before expiry (which would be at once)."""
    upstream = Upstream(clock, lifetime=60)
    cache = TokenCache(upstream, clock=clock)
    await cache.get(min_validity=0)
    clock.now += 29
    await cache.get(min_validity=0)
    await settle()
    assert upstream.calls == 1
    clock.now += 2
    await cache.get(min_validity=0)
    await settle()
    assert upstream.calls == 2


async def test_min_validity_forces_a_fresh_token_when_too_little_is_left(clock: Clock) -> None:
    """A caller asking for 900 s gets a freshly fetched token once less than 900 s remain."""
    upstream = Upstream(clock)
    cache = TokenCache(upstream, clock=clock)
    await cache.get(min_validity=0)
    clock.now += 3600 - 899
    served = await cache.get(min_validity=900)
    assert served.outcome in ("fetched", "refreshed")
    assert served.token.access_token.reveal() == "token-2"


async def test_min_validity_is_capped_at_half_a_short_tokens_life(clock: Clock) -> None:
    """A 100-second token is not refetched on every request by a caller asking for an hour."""
    upstream = Upstream(clock, lifetime=100)
    cache = TokenCache(upstream, clock=clock)
    await cache.get(min_validity=3600)
    clock.now += 40
    served = await cache.get(min_validity=3600)
    assert served.outcome == "hit"
    assert upstream.calls == 1


async def test_serves_cached_token_while_refresh_fails(clock: Clock) -> None:
    """When a refresh fails and the token is unexpired, it is served as stale, even below min_validity."""
    upstream = Upstream(clock)
    cache = TokenCache(upstream, clock=clock)
    first = await cache.get(min_validity=300)
    upstream.fail = UpstreamUnavailable("down", retry_after=30)
    clock.now += 3600 - 100
    served = await cache.get(min_validity=300)
    assert served.outcome == "stale"
    assert served.token is first.token
    assert served.stale_reason is not None
    assert served.stale_reason.code == "upstream_unavailable"


async def test_never_serves_an_expired_token(clock: Clock) -> None:
    """With the cached token expired and the upstream down, the caller gets the error."""
    upstream = Upstream(clock)
    cache = TokenCache(upstream, clock=clock)
    await cache.get()
    upstream.fail = UpstreamUnavailable("down", retry_after=30)
    clock.now += 3601
    with pytest.raises(UpstreamUnavailable):
        await cache.get()


async def test_failing_callers_do_not_become_a_stream_of_fetches(clock: Clock) -> None:
    """After a failed fetch, requests within the hold get the same error without fetching."""
    upstream = Upstream(clock)
    upstream.fail = UpstreamUnavailable("down")
    cache = TokenCache(upstream, clock=clock)
    for _ in range(20):
        with pytest.raises(UpstreamUnavailable) as raised:
            await cache.get()
        clock.now += 0.2
    assert upstream.calls == 1
    assert raised.value.retry_after is not None
    assert 1 <= raised.value.retry_after <= FAILURE_HOLD_S


async def test_the_next_successful_fetch_restores_normal_service(clock: Clock) -> None:
    """Once the hold has passed and the upstream is back, tokens flow again and nothing sticks."""
    upstream = Upstream(clock)
    upstream.fail = UpstreamUnavailable("down")
    cache = TokenCache(upstream, clock=clock)
    with pytest.raises(UpstreamUnavailable):
        await cache.get()
    upstream.fail = None
    clock.now += FAILURE_HOLD_S
    served = await cache.get()
    assert served.outcome == "fetched"
    assert (await cache.get()).outcome == "hit"


async def test_force_refresh_is_honoured_once_per_interval(clock: Clock) -> None:
    """force_refresh fetches a new token, but at most once per 30 s; a rate-limited force gets the cached one."""
    upstream = Upstream(clock)
    cache = TokenCache(upstream, clock=clock)
    await cache.get()
    forced = await cache.get(force=True)
    assert forced.token.access_token.reveal() == "token-2"
    again = await cache.get(force=True)
    assert again.outcome == "hit"
    assert again.token is forced.token
    clock.now += FORCE_INTERVAL_S
    assert (await cache.get(force=True)).token.access_token.reveal() == "token-3"


async def test_steady_traffic_for_an_hour_waits_on_the_upstream_only_once(clock: Clock) -> None:
    """One request a second for two token lifetimes: only the very first request waits for a fetch."""
    upstream = Upstream(clock)
    cache = TokenCache(upstream, clock=clock)
    waited = 0
    for _ in range(2 * 3600):
        served = await cache.get(min_validity=300)
        waited += served.outcome in ("fetched", "refreshed")
        await settle()
        clock.now += 1
    assert waited == 1
    assert upstream.calls == 3


async def test_an_unexpected_fetch_failure_is_held_like_any_other(clock: Clock) -> None:
    """A bug in a fetch becomes a 500 internal_error that is held, not a fetch per request."""

    calls = 0

    async def broken(want: Want) -> Token:
        nonlocal calls
        calls += 1
        raise KeyError("bug")

    cache = TokenCache(broken, clock=clock)
    for _ in range(5):
        with pytest.raises(BrokerError) as raised:
            await cache.get()
    assert raised.value.status == 500
    assert raised.value.code == "internal_error"
    assert calls == 1


async def test_a_refused_force_says_when_the_next_would_be_honoured(clock: Clock) -> None:
    """A rate-limited force_refresh serves the cached token and names the seconds until a force is honoured."""
    upstream = Upstream(clock)
    cache = TokenCache(upstream, clock=clock)
    await cache.get()
    honoured = await cache.get(force=True)
    assert honoured.force_refused_retry_after is None
    clock.now += 10.5
    refused = await cache.get(force=True)
    assert refused.token is honoured.token and upstream.calls == 2
    assert refused.force_refused_retry_after == 20
    clock.now += 19.5
    assert (await cache.get(force=True)).force_refused_retry_after is None
    assert upstream.calls == 3


async def test_a_force_during_a_held_failure_is_refused_until_the_hold_ends(clock: Clock) -> None:
    """While a failure is held, a forced fetch would only repeat it: refused, with the hold's remaining time."""
    upstream = Upstream(clock)
    cache = TokenCache(upstream, clock=clock)
    await cache.get()
    clock.now += FORCE_INTERVAL_S
    upstream.fail = UpstreamUnavailable("down", retry_after=45)
    stale = await cache.get(force=True)
    assert stale.outcome == "stale"
    clock.now += 31
    refused = await cache.get(force=True)
    assert refused.force_refused_retry_after == 14
    assert upstream.calls == 2
