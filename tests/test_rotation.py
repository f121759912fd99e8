"""Secret rotation under load (issue 3, scenarios 1-3) and the Event Grid rotation check.

Twenty callers loop against the HTTP surface while ops rotate the secret in the local Key Vault
and revoke the old one at the local token endpoint. The broker's clock runs 4000 times faster
than real time (a minute every 15 ms), so a 30-minute token lives 0.45 s and each scenario spans
several token lifetimes in three real seconds.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from broker.rotation import NEW_VERSION_EVENT, check_rotation_event
from broker.routes.token import STALE_HEADER
from tests.conftest import Stack, sensitive
from tests.faults_support import Rig, report, rig_on

SECRET = "ilevel-client-secret"
CALLERS = 20
RUN_S = 3.0
SPEED = 4000.0
LIFETIME_S = 1800
RESULTS: dict[str, dict[str, Any]] = {}


@dataclass
class Outcome:
    started: float
    ended: float
    status: int
    code: str | None
    stale: bool


@dataclass
class Load:
    """What the callers saw, and when the ops steps happened (real monotonic seconds)."""

    outcomes: list[Outcome] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]


async def run_load(rig: Rig, ops: Callable[[Load], Awaitable[None]]) -> Load:
    """Twenty callers in a loop while the clock runs fast and ``ops`` rotates secrets."""
    load = Load()
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            started = time.monotonic()
            response, _ = await rig.get()
            code = None if response.status_code == 200 else response.json().get("error")
            stale = STALE_HEADER in response.headers
            load.outcomes.append(Outcome(started, time.monotonic(), response.status_code, code, stale))
            await asyncio.sleep(0.002)

    async def operate() -> None:
        await ops(load)
        remaining = RUN_S - (time.monotonic() - load.marks["start"])
        await asyncio.sleep(max(0.0, remaining))
        stop.set()

    rig.stack.tokens.expires_in = LIFETIME_S
    load.marks["start"] = time.monotonic()
    rig.clock.fast_forward(SPEED)
    try:
        await asyncio.gather(operate(), *(caller() for _ in range(CALLERS)))
    finally:
        rig.clock.fast_forward(1)
    return load


def basic(stack: Stack, client_secret: str) -> str:
    return "Basic " + base64.b64encode(f"{stack.client_id}:{client_secret}".encode()).decode()


def record(name: str, load: Load, **extra: Any) -> None:
    stale = sum(o.stale for o in load.outcomes)
    RESULTS[name] = {"requests": len(load.outcomes), "failures": len(load.failures), "stale_served": stale, **extra}


@pytest.fixture(scope="module", autouse=True)
def rotation_summary(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the module: requests and failures per scenario, written for the closing note."""
    yield
    if RESULTS:
        report(request.config, tmp_path_factory.getbasetemp(), "rotation-under-load", {"summary": RESULTS})


@pytest.mark.slow
async def test_scenario_1_a_new_version_is_used_from_the_next_fetch_with_no_failed_request(
    stack: Stack, host: str
) -> None:
    """A new version while the old still works, then the old revoked: no caller request fails."""
    async with rig_on(stack, host) as rig:
        await rig.start()
        rotated: dict[str, str] = {}
        seen_before = 0

        async def ops(load: Load) -> None:
            nonlocal seen_before
            await asyncio.sleep(RUN_S / 3)
            rotated["secret"] = stack.rotate_secret()
            seen_before = stack.tokens.request_count
            load.marks["rotated"] = time.monotonic()
            await asyncio.sleep(RUN_S / 3)
            stack.tokens.revoke(stack.client_id, stack.client_secret)
            load.marks["revoked"] = time.monotonic()

        load = await run_load(rig, ops)
    record("scenario 1 (new version, old still valid)", load, token_requests=stack.tokens.request_count)
    assert load.failures == []
    after = stack.tokens.requests[seen_before + 1 :]  # the fetch in flight at rotation may still send the old pair
    assert after, "the clock ran through several token lifetimes after the rotation"
    assert {request.headers["authorization"] for request in after} == {basic(stack, rotated["secret"])}


@pytest.mark.slow
async def test_scenario_2_revoked_first_fails_at_most_the_requests_in_flight_and_only_with_502(
    stack: Stack,
    host: str,
) -> None:
    """Old secret revoked upstream, refused at a fetch, then the new one stored: only that window may fail, with 502."""
    new_secret = sensitive(secrets.token_urlsafe(24))
    async with rig_on(stack, host) as rig:
        await rig.start()

        async def ops(load: Load) -> None:
            await asyncio.sleep(RUN_S / 3)
            stack.tokens.accept(stack.client_id, new_secret)
            stack.tokens.revoke(stack.client_id, stack.client_secret)
            load.marks["revoked"] = time.monotonic()
            # Ops are slow to store the new version: the broker's next fetch is refused first.
            deadline = time.monotonic() + 1.5
            while not any(r.outcome == "invalid_client" for r in stack.tokens.requests):
                assert time.monotonic() < deadline, "no fetch within a simulated hour and a half"
                await asyncio.sleep(0.002)
            stack.kv.set_secret(SECRET, new_secret)
            load.marks["stored"] = time.monotonic()

        load = await run_load(rig, ops)
    in_window = [o for o in load.outcomes if o.ended >= load.marks["revoked"] and o.started <= load.marks["stored"]]
    record(
        "scenario 2 (revoked first, then new version stored)",
        load,
        in_flight_during_revocation=len(in_window),
        token_requests=stack.tokens.request_count,
        rejected_upstream=sum(r.outcome == "invalid_client" for r in stack.tokens.requests),
    )
    assert all(o in in_window for o in load.failures), "only requests in flight during the revocation may fail"
    assert {(o.status, o.code) for o in load.failures} <= {(502, "invalid_client")}
    assert stack.tokens.requests[-1].headers["authorization"] == basic(stack, new_secret)


@pytest.mark.slow
async def test_scenario_3_a_wrong_new_version_is_reported_and_the_working_one_kept_with_no_failed_request(
    stack: Stack, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    """A typo in the new version: "rotation FAILED" is logged and callers keep getting tokens from the old secret."""
    async with rig_on(stack, host) as rig:
        await rig.start()

        async def ops(load: Load) -> None:
            await asyncio.sleep(RUN_S / 3)
            stack.rotate_secret(accept=False)
            load.marks["rotated"] = time.monotonic()

        load = await run_load(rig, ops)
    failed_lines = [r for r in caplog.records if r.getMessage().startswith("rotation FAILED")]
    record(
        "scenario 3 (wrong new version)",
        load,
        rotation_failed_log_lines=len(failed_lines),
        token_requests=stack.tokens.request_count,
    )
    assert load.failures == []
    assert failed_lines, "the bad version is reported loudly"
    assert stack.kv.versions(SECRET)[-2] in failed_lines[0].getMessage(), "the line names the working version"
    assert stack.tokens.requests[-1].outcome == "issued"


async def test_a_fetch_rejected_mid_rotation_rereads_key_vault_and_retries_once_with_the_new_version(
    stack: Stack, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    """Scenario 2 in slow motion: the old pair is revoked while its request is in flight; the new version wins."""
    new_secret = sensitive(secrets.token_urlsafe(24))
    stack.tokens.latency_s = 0.2
    async with rig_on(stack, host) as rig:
        await rig.start()
        arrived = stack.tokens.arrived
        pending = asyncio.ensure_future(rig.get())
        # Rotate once the old pair's request is at the endpoint (it waits latency_s before judging it),
        # not after a fixed pause that a loaded machine can outlast before the request is even sent.
        while stack.tokens.arrived == arrived and not pending.done():
            await asyncio.sleep(0.005)
        stack.tokens.accept(stack.client_id, new_secret)
        stack.tokens.revoke(stack.client_id, stack.client_secret)
        stack.kv.set_secret(SECRET, new_secret)
        response, _ = await pending
    assert response.status_code == 200, response.text
    assert [r.outcome for r in stack.tokens.requests] == ["invalid_client", "issued"]
    assert stack.tokens.requests[-1].headers["authorization"] == basic(stack, new_secret)
    assert "retrying once with the newer" in "\n".join(r.getMessage() for r in caplog.records)


# --- the Event Grid rotation check -------------------------------------------------------------
OUR_VAULT = "https://ilevel-kv.vault.azure.net/"


def event(version: str, *, name: str = SECRET, vault: str = "ilevel-kv") -> dict[str, str]:
    """Event data shaped like Microsoft's sample, stray spaces in keys and values included."""
    return {
        "Id": f"https://{vault}.vault.azure.net/secrets/{name}/{version}",
        "VaultName": vault,
        "ObjectType": "Secret",
        "ObjectName ": name,
        "Version": f" {version}",
        "NBF": "",
        "EXP": "",
    }


def rotation_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.getMessage().startswith(("rotation verified", "rotation FAILED"))
    ]


async def started(rig: Rig) -> Rig:
    """A broker on the local vault (a loopback host: the event's vault name is not compared)."""
    return await rig.start()


async def test_rotation_check_verifies_a_working_new_version_in_one_line(
    stack: Stack, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    """A new version that the token endpoint accepts: one "rotation verified" line, one token request with it."""
    stack.rotate_secret()
    version = stack.kv.versions(SECRET)[-1]
    async with rig_on(stack, host) as rig:
        await started(rig)
        assert rig.broker is not None
        results = await check_rotation_event(rig.broker, event(version), subject=SECRET)
    assert [r.ok for r in results] == [True]
    lines = rotation_lines(caplog)
    assert len(lines) == 1
    assert lines[0].startswith("rotation verified")
    assert version in lines[0]
    assert stack.tokens.request_count == 1


async def test_rotation_check_reports_a_wrong_new_version_as_failed_in_one_line(
    stack: Stack, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    """A new version the token endpoint refuses: one "rotation FAILED" line naming the secret, version and reason."""
    stack.rotate_secret(accept=False)
    version = stack.kv.versions(SECRET)[-1]
    async with rig_on(stack, host) as rig:
        await started(rig)
        assert rig.broker is not None
        results = await check_rotation_event(rig.broker, event(version), subject=SECRET)
    assert [(r.ok, r.detail) for r in results] == [(False, "invalid_client")]
    lines = rotation_lines(caplog)
    assert len(lines) == 1
    assert lines[0].startswith("rotation FAILED")
    assert SECRET in lines[0]
    assert version in lines[0]
    assert "invalid_client" in lines[0]


async def test_the_first_write_of_a_pair_is_no_failed_rotation(
    stack: Stack, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    """A first setup stores the client id before the secret: one warning naming both, no "rotation FAILED"."""
    stack.kv.delete("ilevel-client-id")
    stack.kv.delete(SECRET)
    version = stack.kv.set_secret("ilevel-client-id", stack.client_id)
    async with rig_on(stack, host) as rig:
        await started(rig)
        assert rig.broker is not None
        results = await check_rotation_event(rig.broker, event(version, name="ilevel-client-id"))
    assert [(r.ok, r.detail) for r in results] == [(False, "pair_incomplete")]
    assert rotation_lines(caplog) == []
    warning = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rotation check: provider")]
    assert len(warning) == 1 and "ilevel-client-id is stored, ilevel-client-secret not yet" in warning[0]
    assert stack.tokens.request_count == 0


async def test_a_new_version_that_is_gone_again_is_a_failed_rotation(
    stack: Stack, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    """The event's own secret missing (deleted since) is still a failure: "rotation FAILED" secret_not_found."""
    version = stack.kv.versions(SECRET)[-1]
    stack.kv.delete(SECRET)
    async with rig_on(stack, host) as rig:
        await started(rig)
        assert rig.broker is not None
        results = await check_rotation_event(rig.broker, event(version), subject=SECRET)
    assert [(r.ok, r.detail) for r in results] == [(False, "secret_not_found")]
    assert len(rotation_lines(caplog)) == 1


@pytest.mark.parametrize(
    ("case", "data", "event_type"),
    [
        ("another event type", event("0" * 32), "Microsoft.KeyVault.SecretNearExpiry"),
        ("another vault", event("0" * 32, vault="someone-elses-vault"), NEW_VERSION_EVENT),
        ("an unrelated secret", event("0" * 32, name="database-password"), NEW_VERSION_EVENT),
        ("not an object", "garbage", NEW_VERSION_EVENT),
    ],
)
async def test_rotation_check_ignores_events_that_are_not_about_its_secrets(
    stack: Stack, caplog: pytest.LogCaptureFixture, case: str, data: Any, event_type: str, host: str
) -> None:
    """Other event types, other vaults and unrelated secrets: nothing is read, requested or reported."""
    async with rig_on(stack, host) as rig:
        # Configured for an Azure vault that is never contacted: every one of these is ignored first.
        await rig.start(settings={"KEY_VAULT_URL": OUR_VAULT})
        assert rig.broker is not None
        results = await check_rotation_event(rig.broker, data, subject="", event_type=event_type)
    assert results == []
    assert rotation_lines(caplog) == []
    assert stack.tokens.request_count == 0
    assert sum(stack.kv.reads.values()) == 0
