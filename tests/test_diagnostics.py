"""Diagnostics inside the app (broker.diagnostics): check's steps with the app's broker, at most one run a minute.

These run the steps against the local servers without HTTP; tests/test_diagnostics_http.py covers the route
on both hosts, who may call it, and ``check --remote``.
"""

from __future__ import annotations

import asyncio
import json
import time

from broker.check import run_check
from broker.diagnostics import RUN_INTERVAL_S, Diagnostics
from broker.runtime import Broker, Overrides
from tests.conftest import Stack, leaks, sensitive


class Clock:
    """Wall time that a test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def scan(stack: Stack, text: str) -> None:
    """No secret, no token (upstream or managed identity), no identity header in a diagnostics answer."""
    for token in [*stack.tokens.issued_tokens, *stack.servers.identity.issued_tokens]:
        sensitive(token)
    sensitive(stack.servers.identity.identity_header)
    assert not leaks(text), f"a diagnostics answer leaks {leaks(text)}"


async def test_a_run_reports_what_check_reports_plus_cache_fleet_and_instance(stack: Stack) -> None:
    """The verdict is check's own; the report adds the cache, the fleet cache (off) and the build and instance."""
    broker = stack.broker()
    report = await Diagnostics(broker).report("ilevel")
    local = await run_check(broker.settings, "ilevel", Overrides(secret_client_options=stack_options(stack)))
    assert report.ok and report.verdict == local.verdict
    assert [a["variant"] for a in report.attempts] == [a["variant"] for a in local.attempts]
    assert report.cache is not None and report.cache["state"] == "empty"
    assert report.fleet == {"state": "off", "summary": "off (BROKER_FLEET_CACHE_URL is not set)"}
    assert report.instance is not None and report.instance["version"] and report.instance["instance_id"]
    assert report.age_s == 0.0
    scan(stack, json.dumps(report.as_dict()) + report.render())


async def test_the_cache_section_shows_the_cached_token_by_fingerprint_and_remaining_life(stack: Stack) -> None:
    """Once a caller got a token: valid, its remaining lifetime, its fingerprint, never the token."""
    clock = Clock()
    broker = stack.broker(clock=clock)
    served = await broker.providers["ilevel"].cache.get(min_validity=0)
    clock.now += 600
    report = await Diagnostics(broker).report("ilevel")
    assert report.cache is not None
    assert report.cache["state"] == "valid"
    assert 2990 <= report.cache["remaining_s"] <= 3000 and report.cache["lifetime_s"] == 3600
    assert report.cache["sha256"] == served.token.access_token.fingerprint()
    scan(stack, json.dumps(report.as_dict()) + report.render())


async def test_a_second_call_within_a_minute_gets_the_last_report_with_its_age(stack: Stack) -> None:
    """One run per provider per 60 s reaches the token endpoint; in between, the last report and how old it is."""
    clock = Clock()
    broker = stack.broker(clock=clock)
    diagnostics = Diagnostics(broker)
    first = await diagnostics.report("ilevel")
    requests, reads = stack.tokens.request_count, sum(stack.kv.reads.values())
    assert requests == 1, "the configured variant works: one token request"
    clock.now += RUN_INTERVAL_S - 1
    again = await diagnostics.report("ilevel")
    assert (stack.tokens.request_count, sum(stack.kv.reads.values())) == (requests, reads)
    assert again.age_s == RUN_INTERVAL_S - 1 and again.verdict == first.verdict
    assert "report: made 59 s ago" in again.render()
    clock.now += 1
    fresh = await diagnostics.report("ilevel")
    assert stack.tokens.request_count == requests + 1 and fresh.age_s == 0.0
    assert diagnostics.runs == 2


async def test_concurrent_calls_join_one_run(stack: Stack) -> None:
    """Ten operators at once: one Key Vault read per secret and one token request."""
    stack.tokens.latency_s = 0.1
    broker = stack.broker()
    diagnostics = Diagnostics(broker)
    reports = await asyncio.gather(*(diagnostics.report("ilevel") for _ in range(10)))
    assert all(r.ok for r in reports)
    assert stack.tokens.request_count == 1 and diagnostics.runs == 1
    assert stack.kv.reads["ilevel-client-secret"] == 1


async def test_the_all_providers_answer_is_ok_only_when_every_provider_is(stack: Stack) -> None:
    """Two providers, one without its secrets: not ok, and the verdict names the provider and what to fix."""
    for name in (
        "other-client-id",
        "other-client-secret",
    ):  # the vault is the session's: another test may have set them
        stack.kv.delete(name)
    settings = stack.settings(BROKER_PROVIDERS="ilevel,other", BROKER_OTHER_TOKEN_URL=stack.token_url)
    broker = stack.broker(settings)
    answer = await Diagnostics(broker).summary()
    assert answer["ok"] is False
    assert [p["provider"] for p in answer["providers"]] == ["ilevel", "other"]
    assert answer["providers"][0]["ok"] is True
    assert answer["verdict"].startswith("provider other: fix secret 'other-client-")  # whichever read failed first
    assert answer["instance"]["version"]
    scan(stack, json.dumps(answer))


async def test_one_diagnostics_per_broker(stack: Stack) -> None:
    """Diagnostics.of keeps one rate limit per broker (per process), however many requests ask for it."""
    broker: Broker = stack.broker()
    assert Diagnostics.of(broker) is Diagnostics.of(broker)
    assert Diagnostics.of(stack.broker()) is not Diagnostics.of(broker)


def stack_options(stack: Stack) -> dict[str, object]:
    return {"connection_verify": stack.servers.pki.ca, "verify_challenge_resource": False, "retry_total": 1}


def test_the_fleet_state_is_off_without_a_fleet_cache(stack: Stack) -> None:
    """No BROKER_FLEET_CACHE_URL: the report says the fleet cache is off and names the setting."""
    from broker.diagnostics import fleet_state

    assert fleet_state(stack.broker(), "ilevel") == {
        "state": "off",
        "summary": "off (BROKER_FLEET_CACHE_URL is not set)",
    }
