"""The fleet as separate processes: 4 under ``serve`` and 4 as Microsoft's worker imports function_app."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx
import pytest
from azure.storage.blob import ContainerClient

from broker.config import FLEET_CONTAINER
from broker.fleet.layer import LEASE_S
from broker.fleet.record import blob_name
from broker.standin.faults import Reply
from broker.standin.oauth import TOKEN_PATH, TokenServer
from broker.standin.serve import run_server
from tests.conftest import ROLE, Stack, sensitive
from tests.fleet.processes import fleet_of
from tests.fleet.support import Azurite

pytestmark = pytest.mark.fleet_processes


@pytest.mark.slow
async def test_eight_processes_share_one_token_and_one_backoff(fleet_stack: Stack, tmp_path: Path) -> None:
    """A concurrent cold burst of 240 requests over 8 broker processes: exactly 1 token request and
    1 client-secret read for the whole fleet, every request 200 with the same token. A second provider's
    token endpoint answers 429 Retry-After: 30 from the start: the leader's 429 (the serve processes warm
    every provider up as they start) is the fleet's, and the other 7 make 0 token requests."""
    throttling = TokenServer()
    throttling.default_reply = Reply(429, json={"error": "slow_down"}, headers={"Retry-After": "30"})
    fleet_stack.kv.set_secret("other-client-id", fleet_stack.client_id)
    fleet_stack.kv.set_secret("other-client-secret", fleet_stack.client_secret)
    fleet_stack.kv.reset_counts()
    fleet_stack.tokens.latency_s = 0.3
    with run_server(throttling) as other:
        fleet_stack.env.update(
            BROKER_PROVIDERS="ilevel,other",
            BROKER_OTHER_TOKEN_URL=other.url + TOKEN_PATH,
            BROKER_OTHER_ALLOWED_ROLES=ROLE,
        )
        with fleet_of(fleet_stack, tmp_path, serve=4, functions=4) as fleet:
            answers = await fleet.burst(30)
            assert len(answers) == 240
            assert {a["status"] for a in answers} == {200}
            assert len({a["token"] for a in answers}) == 1
            assert fleet_stack.tokens.request_count == 1
            assert fleet_stack.kv.reads["ilevel-client-secret"] == 1

            started = time.monotonic()
            throttled = await fleet.burst(5, provider="other")
            again = await fleet.burst(5, provider="other")
            within = time.monotonic() - started
    assert within < 30
    assert {a["status"] for a in throttled + again} == {503}
    assert all(a["retry_after"] for a in throttled + again)
    assert throttling.request_count == 1  # the leader's one 429 for "other"


@pytest.mark.slow
async def test_a_killed_leader_blocks_no_one_past_its_lease(fleet_stack: Stack, tmp_path: Path) -> None:
    """The leader holds the lease while the token endpoint hangs and is SIGKILLed: another instance takes
    over after the lease expires; every request is served (or told 503 with Retry-After), never 500."""
    fleet_stack.tokens.script(Reply(503, delay_s=25))  # the leader's request hangs
    with fleet_of(fleet_stack, tmp_path, serve=1, functions=0) as first:
        (leader,) = first.instances
        import asyncio

        # Its process-start warm-up takes the lease and asks for the token, which hangs.
        deadline = time.monotonic() + 20
        while fleet_stack.tokens.request_count < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert fleet_stack.tokens.request_count == 1
        # The others start (and warm up) while the leader's lease is held: they wait on it.
        (tmp_path / "others").mkdir()
        with fleet_of(fleet_stack, tmp_path / "others", serve=1, functions=1) as fleet:
            await asyncio.sleep(1)
            leader.kill()
            started = time.monotonic()
            answers = await fleet.burst(10, only=fleet.instances)
            longest = time.monotonic() - started
    statuses = {a["status"] for a in answers}
    assert statuses <= {200, 503}
    assert all(a["retry_after"] for a in answers if a["status"] == 503)
    assert 200 in statuses
    assert longest < LEASE_S + 10
    assert fleet_stack.tokens.request_count == 2
    print(f"killed leader: longest wait {longest:.1f} s, statuses {sorted(statuses)}")


@pytest.mark.slow
async def test_a_replayed_record_never_serves_the_old_token_to_a_cold_instance(
    fleet_stack: Stack, azurite: Azurite, tmp_path: Path
) -> None:
    """The blob's earlier (genuine) bytes written back after the client secret was rotated and the fleet
    refreshed: a cold instance refuses the replayed record and fetches; it never serves the old token."""
    with fleet_of(fleet_stack, tmp_path, serve=1, functions=0) as fleet:
        (warm,) = fleet.instances
        (first,) = await fleet.burst(1, only=[warm])
        blob = ContainerClient.from_connection_string(azurite.connection_string, FLEET_CONTAINER).get_blob_client(
            blob_name("ilevel", fleet_stack.token_url, fleet_stack.client_id)
        )
        earlier = blob.download_blob().readall()
        rotated = sensitive(secrets.token_urlsafe(24))
        fleet_stack.tokens.accept(fleet_stack.client_id, rotated)
        fleet_stack.kv.set_secret("ilevel-client-secret", rotated)
        async with httpx.AsyncClient(timeout=30) as client:
            forced = await client.get(
                warm.url + "/api/token/ilevel?force_refresh=true",
                headers={"Authorization": f"Bearer {fleet.caller}"},
            )
        assert forced.status_code == 200
        blob.upload_blob(earlier, overwrite=True)  # the replay
        # Started only now: a process warms its cache up as it starts, so an instance started earlier
        # would already hold the first token and prove nothing about the replayed record.
        (tmp_path / "cold").mkdir()
        with fleet_of(fleet_stack, tmp_path / "cold", serve=1, functions=0) as later:
            (cold,) = later.instances
            (served,) = await later.burst(1, only=[cold])
    assert first["status"] == served["status"] == 200
    assert served["token"] != first["token"]
    assert fleet_stack.tokens.request_count == 3  # the first, the forced one, and the cold instance's own
