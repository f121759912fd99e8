"""The fleet as separate processes: 4 under ``serve`` and 4 as Microsoft's worker imports function_app."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from broker.fleet.layer import LEASE_S
from broker.standin.faults import Reply
from tests.conftest import ROLE, Stack
from tests.fleet.processes import fleet_of

pytestmark = pytest.mark.fleet_processes


@pytest.mark.slow
async def test_eight_processes_share_one_token_and_one_backoff(fleet_stack: Stack, tmp_path: Path) -> None:
    """A concurrent cold burst of 240 requests over 8 broker processes: exactly 1 token request and
    1 client-secret read for the whole fleet, every request 200 with the same token. Then, for a second
    provider, the leader's 429 Retry-After: 30 is the fleet's: the other 7 make 0 token requests."""
    fleet_stack.kv.set_secret("other-client-id", fleet_stack.client_id)
    fleet_stack.kv.set_secret("other-client-secret", fleet_stack.client_secret)
    fleet_stack.env.update(
        BROKER_PROVIDERS="ilevel,other",
        BROKER_OTHER_TOKEN_URL=fleet_stack.token_url,
        BROKER_OTHER_ALLOWED_ROLES=ROLE,
    )
    fleet_stack.kv.reset_counts()
    fleet_stack.tokens.latency_s = 0.3
    with fleet_of(fleet_stack, tmp_path, serve=4, functions=4) as fleet:
        answers = await fleet.burst(30)
        assert len(answers) == 240
        assert {a["status"] for a in answers} == {200}
        assert len({a["token"] for a in answers}) == 1
        assert fleet_stack.tokens.request_count == 1
        assert fleet_stack.kv.reads["ilevel-client-secret"] == 1

        fleet_stack.tokens.default_reply = Reply(429, json={"error": "slow_down"}, headers={"Retry-After": "30"})
        started = time.monotonic()
        throttled = await fleet.burst(5, provider="other")
        again = await fleet.burst(5, provider="other")
        within = time.monotonic() - started
    assert within < 30
    assert {a["status"] for a in throttled + again} == {503}
    assert all(a["retry_after"] for a in throttled + again)
    assert fleet_stack.tokens.request_count == 2  # the ilevel token, and the leader's one 429 for "other"


@pytest.mark.slow
async def test_a_killed_leader_blocks_no_one_past_its_lease(fleet_stack: Stack, tmp_path: Path) -> None:
    """The leader holds the lease while the token endpoint hangs and is SIGKILLed: another instance takes
    over after the lease expires; every request is served (or told 503 with Retry-After), never 500."""
    fleet_stack.tokens.script(Reply(503, delay_s=25))  # the leader's request hangs
    with fleet_of(fleet_stack, tmp_path, serve=2, functions=1) as fleet:
        leader, *others = fleet.instances
        import asyncio

        pending = asyncio.ensure_future(fleet.burst(1, only=[leader]))
        deadline = time.monotonic() + 20
        while fleet_stack.tokens.request_count < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert fleet_stack.tokens.request_count == 1
        await asyncio.sleep(1)  # the others' burst starts while the dead leader's lease is still held
        leader.kill()
        started = time.monotonic()
        answers = await fleet.burst(10, only=others)
        longest = time.monotonic() - started
        pending.cancel()
    statuses = {a["status"] for a in answers}
    assert statuses <= {200, 503}
    assert all(a["retry_after"] for a in answers if a["status"] == 503)
    assert 200 in statuses
    assert longest < LEASE_S + 10
    assert fleet_stack.tokens.request_count == 2
    print(f"killed leader: longest wait {longest:.1f} s, statuses {sorted(statuses)}")
