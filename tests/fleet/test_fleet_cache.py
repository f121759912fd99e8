"""The fleet cache on Azurite, with several brokers in this process: one token for the fleet, shared
backoff and force limit, tampering, key rotation, storage failure, and nothing readable in storage.

Each broker here is a separate instance (its own in-process cache, secret store and blob client);
they share only Azurite, the vault and the token endpoint, as instances in Azure share only those.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from typing import Any

import httpx
import pytest
from azure.storage.blob import ContainerClient

from broker.cache import Served
from broker.config import DEFAULT_FLEET_KEY_SECRET, FLEET_CONTAINER
from broker.diagnostics import fleet_state
from broker.fleet.layer import CIRCUIT_OPEN_S
from broker.fleet.record import blob_name
from broker.runtime import Broker
from broker.standin.faults import Reply
from broker.warmup import warm_up
from tests.conftest import SENSITIVE, Api, Stack, sensitive
from tests.fleet.support import Azurite, counted_telemetry, events, fleet_env
from tests.hosts import open_host


class Monotonic:
    """A monotonic clock the test moves (the circuit's)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def instance(stack: Stack, **overrides: Any) -> Broker:
    """A new broker instance on the fleet (counted fleet events)."""
    overrides.setdefault("telemetry", counted_telemetry())
    return stack.broker(**overrides)


async def get(broker: Broker, *, min_validity: float = 300, force: bool = False) -> Served:
    return await broker.providers["ilevel"].cache.get(min_validity=min_validity, force=force)


def container(server: Azurite) -> ContainerClient:
    return ContainerClient.from_connection_string(server.connection_string, FLEET_CONTAINER)


def blob_of(stack: Stack, provider: str = "ilevel") -> str:
    return blob_name(provider, stack.token_url, stack.client_id)


async def test_new_instance_with_warm_fleet_reads_no_client_secret_and_requests_no_token(
    fleet_stack: Stack, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A fresh instance serves the fleet's token: no client-secret read, no token request, origin=fleet."""
    first = instance(fleet_stack)
    warm = await get(first)
    fleet_stack.kv.reset_counts()
    requests_before = fleet_stack.tokens.request_count
    fresh = instance(fleet_stack)
    caller = fleet_stack.caller()
    async with open_host(host, fresh) as client:
        response = await Api(client, fleet_stack).get("/api/token/ilevel", token=caller)
        again = await Api(client, fleet_stack).get("/api/token/ilevel", token=caller)
    assert response.status_code == 200
    assert response.json()["access_token"] == warm.token.access_token.reveal()
    assert fleet_stack.tokens.request_count == requests_before
    assert fleet_stack.kv.reads["ilevel-client-secret"] == 0
    assert events(fresh).get("hit") == 1
    origins = [r.getMessage().split("origin=")[1].split()[0] for r in caplog.records if r.name == "broker.access"]
    assert origins[-1:] == ["fleet"], "the second answer is a hit from the instance's cache, which writes no line"
    assert again.json()["access_token"] == warm.token.access_token.reveal()


async def test_concurrent_cold_instances_make_one_token_request(fleet_stack: Stack) -> None:
    """Four cold instances with 25 concurrent first requests each: one token request, one secret read."""
    fleet_stack.tokens.latency_s = 0.3
    brokers = [instance(fleet_stack) for _ in range(4)]
    served = await asyncio.gather(*(get(b) for b in brokers for _ in range(25)))
    assert fleet_stack.tokens.request_count == 1
    assert fleet_stack.kv.reads["ilevel-client-secret"] == 1
    assert len({s.token.access_token.reveal() for s in served}) == 1
    won = sum(events(b).get("lease_won", 0) for b in brokers)
    assert won == 1


def flip_a_ciphertext_byte(blob: bytes) -> bytes:
    envelope = json.loads(blob)
    sealed = bytearray(base64.b64decode(envelope["ciphertext"]))
    sealed[len(sealed) // 2] ^= 0x01
    envelope["ciphertext"] = base64.b64encode(bytes(sealed)).decode()
    return json.dumps(envelope).encode()


def unknown_key_version(blob: bytes) -> bytes:
    envelope = json.loads(blob)
    envelope["key_version"] = secrets.token_hex(16)
    return json.dumps(envelope).encode()


@pytest.mark.parametrize("tamper", ["flipped_byte", "unknown_key_version", "copied_from_another_provider"])
async def test_tampered_blob_is_a_miss_and_a_warning_never_a_wrong_token(
    fleet_stack: Stack, azurite: Azurite, tamper: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A blob that fails to open is a miss plus one warning: the instance fetches its own token."""
    fleet_stack.kv.set_secret("other-client-id", fleet_stack.client_id)
    fleet_stack.kv.set_secret("other-client-secret", fleet_stack.client_secret)
    settings = fleet_stack.settings(BROKER_PROVIDERS="ilevel,other", BROKER_OTHER_TOKEN_URL=fleet_stack.token_url)
    writer = instance(fleet_stack, settings=settings)
    planted = await get(writer)
    blobs = container(azurite)
    name = blob_of(fleet_stack)
    data = blobs.get_blob_client(name).download_blob().readall()
    if tamper == "flipped_byte":
        blobs.get_blob_client(name).upload_blob(flip_a_ciphertext_byte(data), overwrite=True)
        provider = "ilevel"
    elif tamper == "unknown_key_version":
        blobs.get_blob_client(name).upload_blob(unknown_key_version(data), overwrite=True)
        provider = "ilevel"
    else:
        # The other provider's blob gets ilevel's record (its own token, fetched first, is replaced).
        await writer.providers["other"].cache.get(min_validity=300)
        blobs.get_blob_client(blob_of(fleet_stack, "other")).upload_blob(data, overwrite=True)
        provider = "other"
    requests_before = fleet_stack.tokens.request_count
    reader = instance(fleet_stack, settings=settings)
    served = await reader.providers[provider].cache.get(min_validity=300)
    assert served.token.access_token != planted.token.access_token
    assert served.token.origin == "fetch"
    assert fleet_stack.tokens.request_count == requests_before + 1
    assert events(reader).get("decrypt_failure", 0) >= 1
    warnings = [r for r in caplog.records if r.name == "broker.fleet" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "could not be opened" in warnings[0].getMessage()
    # The fetched token replaced the bad blob: the next instance is served from the fleet again.
    third = instance(fleet_stack, settings=settings)
    assert (await third.providers[provider].cache.get(min_validity=300)).token == served.token


async def test_key_rotation_under_load_fails_no_request(fleet_stack: Stack) -> None:
    """Blobs under the previous key version are still read; new writes use the new version; 0 failures."""
    first = instance(fleet_stack)
    token = (await get(first)).token
    results: list[Served | BaseException] = []

    async def load() -> None:
        for _ in range(3):
            results.extend(
                await asyncio.gather(*(get(instance(fleet_stack)) for _ in range(4)), return_exceptions=True)
            )

    async def rotate() -> None:
        await asyncio.sleep(0.05)
        fleet_stack.kv.set_secret(DEFAULT_FLEET_KEY_SECRET, sensitive(secrets.token_urlsafe(48)))

    await asyncio.gather(load(), rotate())
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert {r.token.access_token.reveal() for r in results if isinstance(r, Served)} == {token.access_token.reveal()}
    assert fleet_stack.tokens.request_count == 1
    # A forced refresh after the rotation writes under the new key version, which the next instance reads.
    forced = await get(instance(fleet_stack), force=True)
    assert (await get(instance(fleet_stack))).token == forced.token


@pytest.mark.slow
async def test_shared_backoff_keeps_other_instances_off_the_token_endpoint(fleet_stack: Stack, host: str) -> None:
    """The leader's 429 Retry-After: 30 is recorded: other instances answer 503 with Retry-After, no request."""
    fleet_stack.tokens.default_reply = Reply(429, json={"error": "slow_down"}, headers={"Retry-After": "30"})
    leader = instance(fleet_stack)
    caller = fleet_stack.caller()
    async with open_host(host, leader) as client:
        first = await Api(client, fleet_stack).get("/api/token/ilevel", token=caller)
    assert first.status_code == 503
    requests_after_leader = fleet_stack.tokens.request_count
    for _ in range(3):
        other = instance(fleet_stack)
        async with open_host("serve", other) as client:
            response = await Api(client, fleet_stack).get("/api/token/ilevel", token=caller)
        assert response.status_code == 503
        assert 20 <= int(response.headers["Retry-After"]) <= 30
        assert "back off together" in response.json()["error_description"]
    assert fleet_stack.tokens.request_count == requests_after_leader


async def test_force_refresh_limit_is_fleet_wide(fleet_stack: Stack, host: str) -> None:
    """One forced refresh per 30 s for the whole fleet; another instance's is refused with today's header."""
    first = instance(fleet_stack)
    await get(first)
    forced = await get(first, force=True)
    assert fleet_stack.tokens.request_count == 2
    other = instance(fleet_stack)
    caller = fleet_stack.caller()
    async with open_host(host, other) as client:
        api = Api(client, fleet_stack)
        plain = await api.get("/api/token/ilevel", token=caller)
        refused = await api.get("/api/token/ilevel?force_refresh=true", token=caller)
    assert plain.json()["access_token"] == forced.token.access_token.reveal()
    assert refused.status_code == 200
    assert refused.headers["X-Broker-Force-Refresh"].startswith("refused; retry-after=")
    assert refused.json()["access_token"] == forced.token.access_token.reveal()
    assert fleet_stack.tokens.request_count == 2


async def test_renew_after_401_uses_the_newer_fleet_token_without_a_fetch(fleet_stack: Stack) -> None:
    """The proxy's renew after a 401: if the blob holds a newer token than the rejected one, it is used."""
    first, second = instance(fleet_stack), instance(fleet_stack)
    old = (await get(first)).token
    assert (await get(second)).token == old
    newer = (await get(first, force=True)).token
    requests = fleet_stack.tokens.request_count
    renewed = await second.providers["ilevel"].cache.renew(old)
    assert renewed.token == newer
    assert fleet_stack.tokens.request_count == requests


@pytest.mark.slow
async def test_storage_outage_costs_latency_not_answers_and_the_fleet_converges_after(
    stack: Stack, restartable_azurite: Azurite, caplog: pytest.LogCaptureFixture
) -> None:
    """With storage killed every request still gets a token (per-instance fetch), one warning per state
    change; when storage is back the circuit closes with one INFO line and tokens are shared again."""
    own_azurite = restartable_azurite
    fleet_env(stack, own_azurite)
    monotonic = Monotonic()
    steady = instance(stack, monotonic=monotonic)
    await get(steady)
    own_azurite.kill()
    down = [instance(stack, monotonic=monotonic) for _ in range(3)]
    served = await asyncio.gather(*(get(b) for b in down for _ in range(5)))
    assert {s.outcome for s in served} <= {"fetched", "hit"}
    assert all(events(b).get("fallback", 0) >= 1 for b in down)
    degraded = [r for r in caplog.records if r.getMessage().startswith("fleet cache degraded:")]
    assert len(degraded) == 3  # one per instance, not one per request
    assert "connection refused" in degraded[0].getMessage() or "no answer" in degraded[0].getMessage()
    # Still open: a forced refresh on a degraded instance goes straight to the source, logging nothing new.
    await get(down[0], force=True)
    assert len([r for r in caplog.records if r.getMessage().startswith("fleet cache degraded:")]) == 3
    own_azurite.start()
    monotonic.now += CIRCUIT_OPEN_S + 1
    leader = (await get(down[1], force=True)).token
    restored = [r for r in caplog.records if r.getMessage().startswith("fleet cache restored:")]
    assert len(restored) == 1
    requests = stack.tokens.request_count
    joined = instance(stack, monotonic=monotonic)
    assert (await get(joined)).token == leader
    assert stack.tokens.request_count == requests


async def test_nothing_readable_reaches_storage(fleet_stack: Stack, azurite: Azurite) -> None:
    """The leak scan over storage: no token, secret, key or client id in any blob, its metadata or its name."""
    brokers = [instance(fleet_stack) for _ in range(3)]
    await asyncio.gather(*(get(b) for b in brokers))
    await get(brokers[0], force=True)
    for issued in fleet_stack.tokens.issued_tokens:
        sensitive(issued)
    scanned = 0
    for blob in container(azurite).list_blobs(include=["metadata"]):
        data = container(azurite).get_blob_client(blob.name).download_blob().readall()
        text = data.decode("latin-1") + blob.name + json.dumps(blob.metadata or {})
        decoded = (
            b"".join(base64.b64decode(v) for v in json.loads(data).values() if isinstance(v, str) and v)
            if (data.startswith(b"{") and b"ciphertext" in data)
            else b""
        )
        for value in SENSITIVE | {fleet_stack.client_id}:
            if len(value) >= 8:
                assert value not in text and value.encode() not in decoded, f"blob {blob.name} holds a sensitive value"
        scanned += 1
    assert scanned >= 1


async def test_one_blob_per_provider_token_url_and_client_id(fleet_stack: Stack, azurite: Azurite) -> None:
    """A changed client id never reads the old token: the blob name changes with it."""
    first = instance(fleet_stack)
    old = (await get(first)).token
    new_client = sensitive(secrets.token_urlsafe(12) + "+/=")
    fleet_stack.kv.set_secret("ilevel-client-id", new_client)
    fleet_stack.tokens.accept(new_client, fleet_stack.client_secret)
    fresh = instance(fleet_stack)
    assert (await get(fresh)).token != old
    assert fleet_stack.tokens.request_count == 2


async def test_fleet_cache_is_off_when_unset(stack: Stack) -> None:
    """Without BROKER_FLEET_CACHE_URL or the connection string, the wiring is today's: cache → source."""
    broker = stack.broker()
    assert broker.fleet is None
    assert broker.providers["ilevel"].cache._fetch == broker.providers["ilevel"].source.fetch


async def test_an_unreachable_fleet_never_fails_a_caller_on_either_host(stack: Stack, host: str) -> None:
    """Storage that refuses connections: the caller still gets its token (200), through a per-instance fetch."""
    from broker.standin.serve import closed_port

    stack.env["BROKER_FLEET_CACHE_CONNECTION_STRING"] = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
        + base64.b64encode(b"k" * 64).decode()
        + f";BlobEndpoint=http://127.0.0.1:{closed_port()}/devstoreaccount1;"
    )
    stack.kv.set_secret(DEFAULT_FLEET_KEY_SECRET, sensitive(secrets.token_urlsafe(48)))
    broker = instance(stack)
    async with open_host(host, broker) as client:
        response = await Api(client, stack).get("/api/token/ilevel", token=stack.caller())
    assert response.status_code == 200
    assert events(broker).get("fallback") == 1
    assert isinstance(response, httpx.Response)
    assert fleet_state(broker, "ilevel")["state"] == "degraded"


async def test_diagnostics_report_a_healthy_fleet_cache_as_on_without_its_key_or_connection_string(
    fleet_stack: Stack,
) -> None:
    """After a fetch through the fleet, the diagnostics' fleet section is on and names the container only."""
    broker = instance(fleet_stack)
    await get(broker)
    state = fleet_state(broker, "ilevel")
    assert state["state"] == "on"
    assert "broker-tokens" in state["summary"] or "container" in state["summary"]
    shown = repr(state)
    assert "AccountKey" not in shown
    assert not [value for value in SENSITIVE if value in shown]


async def test_an_unusable_cache_key_degrades_to_per_instance_fetches_naming_the_secret(
    fleet_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache key too short to hold 256 bits: no caller fails; one warning names the secret to fix."""
    fleet_stack.kv.set_secret(DEFAULT_FLEET_KEY_SECRET, "too-short")
    broker = instance(fleet_stack)
    served = await asyncio.gather(*(get(broker) for _ in range(5)))
    assert {s.token.origin for s in served} == {"fetch"}
    degraded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fleet cache degraded:")]
    assert len(degraded) == 1
    assert DEFAULT_FLEET_KEY_SECRET in degraded[0] and "256 bits" in degraded[0]
    assert events(broker).get("fallback") == 1


async def test_a_fleet_fetch_reads_each_secret_once_at_the_vault(fleet_stack: Stack) -> None:
    """At the Key Vault stand-in: a miss reads the client id, the client secret and the key once each (the
    client id is no longer read again by the source); a hit reads the client id and the key, no client secret.
    The client secret's version is listed (metadata, no value) to refuse a record of other credentials."""
    cold = instance(fleet_stack)
    await get(cold)
    assert fleet_stack.kv.reads == {"ilevel-client-id": 1, "ilevel-client-secret": 1, DEFAULT_FLEET_KEY_SECRET: 1}
    assert fleet_stack.kv.list_calls == {"ilevel-client-secret": 1}
    fleet_stack.kv.reset_counts()
    await get(instance(fleet_stack))
    assert fleet_stack.kv.reads == {"ilevel-client-id": 1, DEFAULT_FLEET_KEY_SECRET: 1}
    assert fleet_stack.kv.list_calls == {"ilevel-client-secret": 1}


@pytest.mark.parametrize(("newer_versions", "served_from_the_fleet"), [(1, True), (2, False)])
async def test_a_blob_under_a_key_version_older_than_the_previous_one_is_refused(
    fleet_stack: Stack, newer_versions: int, served_from_the_fleet: bool
) -> None:
    """Through the real Key Vault client: a blob sealed with the previous key version is served; after two
    more versions it is refused (a miss, a warning, a fetch), though the old version is still enabled."""
    now = int(time.time())
    fleet_stack.kv.delete(DEFAULT_FLEET_KEY_SECRET)
    fleet_stack.kv.set_secret(DEFAULT_FLEET_KEY_SECRET, sensitive(secrets.token_urlsafe(48)), created=now - 30)
    token = (await get(instance(fleet_stack))).token
    for step in range(newer_versions):
        created = now - 20 + 10 * step
        fleet_stack.kv.set_secret(DEFAULT_FLEET_KEY_SECRET, sensitive(secrets.token_urlsafe(48)), created=created)
    reader = instance(fleet_stack)
    served = (await get(reader)).token
    assert (served == token) is served_from_the_fleet
    assert (events(reader).get("decrypt_failure", 0) == 0) is served_from_the_fleet
    assert fleet_stack.tokens.request_count == (1 if served_from_the_fleet else 2)


async def test_a_new_instance_s_warm_up_takes_the_fleet_s_token(fleet_stack: Stack) -> None:
    """The fleet cache is part of the process-start warm-up: a new instance's warm-up fills its cache from
    the blob another instance wrote, with no token request and no client-secret read."""
    first = instance(fleet_stack)
    warm = await get(first)
    fleet_stack.kv.reset_counts()
    requests_before = fleet_stack.tokens.request_count
    fresh = instance(fleet_stack)
    assert await warm_up(fresh) == {}
    cached = fresh.providers["ilevel"].cache.token
    assert cached is not None and cached.access_token == warm.token.access_token
    assert cached.origin == "fleet"
    assert fleet_stack.tokens.request_count == requests_before
    assert fleet_stack.kv.reads["ilevel-client-secret"] == 0
    assert events(fresh).get("hit") == 1
