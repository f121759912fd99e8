"""One managed-identity token per cold start, however many secrets the cold fetch reads at once."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Api, Stack
from tests.fleet.support import fleet_env
from tests.hosts import open_host


def vault_identity_requests(stack: Stack) -> int:
    return sum(1 for r in stack.servers.identity.requests if "vault" in r.params.get("resource", ""))


@pytest.mark.parametrize(
    "fleet", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["without_fleet", "with_fleet"]
)
async def test_cold_burst_makes_one_identity_token_request(
    stack: Stack, host: str, fleet: bool, request: pytest.FixtureRequest
) -> None:
    """20 concurrent first requests on a cold instance (client id, client secret and, with the fleet
    cache, its key read in parallel): exactly one request at the managed-identity endpoint."""
    if fleet:
        fleet_env(stack, request.getfixturevalue("azurite"))
        stack.export_environment()
    stack.servers.identity.requests.clear()
    caller = stack.caller()
    broker = stack.broker()
    async with open_host(host, broker) as client:
        api = Api(client, stack)
        responses = await asyncio.gather(*(api.get("/api/token/ilevel", token=caller) for _ in range(20)))
    assert {r.status_code for r in responses} == {200}
    assert stack.kv.reads["ilevel-client-secret"] == 1
    if fleet:
        assert stack.kv.reads["broker-fleet-cache-key"] >= 1
    assert vault_identity_requests(stack) == 1
