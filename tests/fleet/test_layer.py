"""The fleet layer's rules, without an emulator: hit, miss, lease won or lost, backoff, the circuit, what a
record may claim, which key versions open it, replays, and the Key Vault reads a fetch costs.

Each "instance" here is a FleetLayer of its own over one in-memory store and vault
(tests/fleet/memory_store.py); time is the test's (the layer's clock, monotonic clock and sleep).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections import Counter
from dataclasses import dataclass, field

import pytest

from broker.cache import Want
from broker.config import ProviderConfig
from broker.errors import BrokerError, UpstreamUnavailable
from broker.fleet.keys import derive_key
from broker.fleet.layer import CIRCUIT_OPEN_S, LEASE_S, FleetLayer
from broker.fleet.reads import HandOver
from broker.fleet.record import (
    BACKOFF_CAP_S,
    CLOCK_SKEW_S,
    MAX_LIFETIME_S,
    Record,
    blob_name,
    clamped,
    open_record,
    seal,
)
from broker.tokens import Secret, Token
from tests.conftest import sensitive
from tests.fleet.memory_store import MemorySecrets, MemoryStore

KEY_SECRET = "broker-fleet-cache-key"
PROVIDER = ProviderConfig(
    name="ilevel",
    token_url="https://ilevel.example/connect/token",
    client_id_secret="ilevel-client-id",
    client_secret_secret="ilevel-client-secret",
)
YEAR_S = 365 * 24 * 3600.0


class Clocks:
    """The wall clock, the monotonic clock and a sleep that moves both (and lets other tasks run)."""

    def __init__(self) -> None:
        self.wall = 1_700_000_000.0 + random.uniform(0, 1e8)
        self.mono = 1000.0
        self.slept = 0.0

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.advance(seconds)
        await asyncio.sleep(0)


@dataclass
class Upstream:
    """The token endpoint: issues generated tokens, fails on cue, or holds a fetch until released."""

    clocks: Clocks
    lifetime: float = 3600.0
    issued: list[Token] = field(default_factory=list)
    fail: BrokerError | None = None
    gate: asyncio.Event | None = None

    async def issue(self, versions: tuple[str, str]) -> Token:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        now = self.clocks.now()
        token = Token(sensitive_secret(), obtained_at=now, expires_at=now + self.lifetime, credential_versions=versions)
        self.issued.append(token)
        return token


def sensitive_secret() -> Secret:
    return Secret(sensitive(secrets.token_urlsafe(32)))


class Instance:
    """One broker instance: its fleet layer over a source that reads both secrets, as TokenSource does."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.events: Counter[str] = Counter()
        self.secrets = HandOver(fleet.vault)
        self.fetches = 0
        self.layer = FleetLayer(
            PROVIDER,
            self.source,
            store=fleet.store,
            secrets=self.secrets,
            key_secret=KEY_SECRET,
            instance=secrets.token_hex(4),
            event=lambda name: self.events.update([name]),
            clock=fleet.clocks.now,
            monotonic=fleet.clocks.monotonic,
            sleep=fleet.clocks.sleep,
            rng=random.Random(7),
        )

    async def source(self, want: Want | None = None) -> Token:
        client_id, client_secret = await asyncio.gather(
            self.secrets.read(PROVIDER.client_id_secret), self.secrets.read(PROVIDER.client_secret_secret)
        )
        self.fetches += 1
        return await self.fleet.upstream.issue((client_id.version, client_secret.version))

    async def fetch(self, *, force: bool = False, min_validity: float = 300) -> Token:
        return await self.layer.fetch(Want(min_validity=min_validity, force=force))


class Fleet:
    """The shared parts: one store, one vault, one token endpoint, one clock."""

    def __init__(self) -> None:
        self.clocks = Clocks()
        self.store = MemoryStore(self.clocks.monotonic)
        self.vault = MemorySecrets(self.clocks.now)
        self.client_id = sensitive(secrets.token_urlsafe(12))
        self.vault.set(PROVIDER.client_id_secret, self.client_id)
        self.vault.set(PROVIDER.client_secret_secret, sensitive(secrets.token_urlsafe(24)))
        self.vault.set(KEY_SECRET, sensitive(secrets.token_urlsafe(48)))
        self.upstream = Upstream(self.clocks)

    def instance(self) -> Instance:
        return Instance(self)

    @property
    def blob(self) -> str:
        return blob_name(PROVIDER.name, PROVIDER.token_url, self.client_id)

    def record(self) -> Record:
        """The record in the store, opened with the current key."""
        key = self.vault._newest(KEY_SECRET)
        return open_record(self.store.blobs[self.blob].data, name=self.blob, key=derive_key(Secret(key.value)))

    def plant(self, record: Record, *, key_version: str | None = None) -> None:
        """Seal ``record`` with a key version of the vault (the current one unless named) and store it."""
        version = key_version or self.vault.latest(KEY_SECRET)
        value = next(v.value for v in self.vault._secrets[KEY_SECRET] if v.version == version)
        sealed = seal(record, name=self.blob, key=derive_key(Secret(value)), key_version=version)
        self.store.put(self.blob, sealed)

    def token(self, *, lifetime: float = 3600.0, versions: tuple[str, str] | None = None) -> Token:
        """A token as this fleet's credentials would get it now."""
        now = self.clocks.now()
        current = (self.vault.latest(PROVIDER.client_id_secret), self.vault.latest(PROVIDER.client_secret_secret))
        return Token(
            sensitive_secret(), obtained_at=now, expires_at=now + lifetime, credential_versions=versions or current
        )


@pytest.fixture
def fleet() -> Fleet:
    return Fleet()


def warnings(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(start)]


# Hit, miss, lease won and lost


async def test_a_miss_takes_the_lease_fetches_once_and_shares_the_token(fleet: Fleet) -> None:
    """The first instance misses, wins the lease, fetches and writes; the next is served that token."""
    first, second = fleet.instance(), fleet.instance()
    token = await first.fetch()
    assert first.events == Counter(miss=1, lease_won=1)
    assert fleet.record().token == token
    assert await second.fetch() == token
    assert second.events == Counter(hit=1)
    assert second.fetches == 0
    assert len(fleet.upstream.issued) == 1


async def test_a_hit_reads_no_client_secret(fleet: Fleet) -> None:
    """An instance served from the fleet reads the client id and the key, never the client secret's value."""
    await fleet.instance().fetch()
    fleet.vault.reads.clear()
    await fleet.instance().fetch()
    assert fleet.vault.reads == Counter({PROVIDER.client_id_secret: 1, KEY_SECRET: 1})


async def test_a_fetch_through_the_fleet_reads_the_client_id_once(fleet: Fleet) -> None:
    """On a miss the layer's client-id read is handed to the source: one read per secret, not two of the id."""
    await fleet.instance().fetch()
    assert fleet.vault.reads == Counter({PROVIDER.client_id_secret: 1, PROVIDER.client_secret_secret: 1, KEY_SECRET: 1})
    # A rotation of the client id is still seen at the next fetch: nothing is kept between fetches.
    fleet.vault.set(PROVIDER.client_id_secret, fleet.client_id)
    token = await fleet.instance().fetch(force=True)
    assert token.credential_versions[0] == fleet.vault.latest(PROVIDER.client_id_secret)


async def test_a_waiter_is_served_the_token_the_lease_holder_writes(fleet: Fleet) -> None:
    """While the leader's fetch runs the other instance polls the blob, then serves the leader's token."""
    fleet.upstream.gate = asyncio.Event()
    leader, waiter = fleet.instance(), fleet.instance()
    leading = asyncio.ensure_future(leader.fetch())
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(waiter.fetch())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()
    fleet.upstream.gate.set()
    assert await waiting == await leading
    assert waiter.events["lease_lost"] == 1 and waiter.events["hit"] == 1
    assert waiter.fetches == 0
    assert len(fleet.upstream.issued) == 1


async def test_the_leader_renews_its_lease_on_the_injected_clock(fleet: Fleet) -> None:
    """A fetch that outlasts the lease keeps it: the renewal sleeps on the layer's clock, not the loop's."""
    fleet.upstream.gate = asyncio.Event()
    leader = fleet.instance()
    leading = asyncio.ensure_future(leader.fetch())
    started = fleet.clocks.mono
    while fleet.clocks.mono - started < 3 * LEASE_S:
        await fleet.clocks.sleep(1)
    assert (await fleet.store.read(fleet.blob)).leased
    assert fleet.store.calls["renew"] >= 3
    fleet.upstream.gate.set()
    await leading


async def test_a_lease_held_past_its_length_degrades_once_and_fetches_locally(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    """A lease no one writes under (held forever): one wait of a lease length, one warning, a local fetch;
    the next fetches skip the wait for the circuit's length."""
    await fleet.store.acquire(fleet.blob, 10**6)
    stuck = fleet.instance()
    await stuck.fetch()
    assert LEASE_S <= fleet.clocks.slept <= LEASE_S + 2
    assert stuck.fetches == 1
    assert stuck.layer.circuit.degraded
    degraded = warnings(caplog, "fleet cache degraded:")
    assert len(degraded) == 1 and "held past its 15 s" in degraded[0]
    slept, reads = fleet.clocks.slept, fleet.store.calls["read"]
    for _ in range(3):
        await stuck.fetch(force=True)
    assert fleet.clocks.slept == slept
    assert fleet.store.calls["read"] == reads
    assert len(warnings(caplog, "fleet cache degraded:")) == 1


# Backoff and the circuit


async def test_the_leaders_429_is_the_fleets_backoff(fleet: Fleet) -> None:
    """A 429 with Retry-After: 30 at the leader: the other instances answer 503 for it without a request."""
    throttled = UpstreamUnavailable("slow down", retry_after=30)
    throttled.upstream_status = 429
    fleet.upstream.fail = throttled
    with pytest.raises(UpstreamUnavailable):
        await fleet.instance().fetch()
    other = fleet.instance()
    with pytest.raises(UpstreamUnavailable) as refused:
        await other.fetch()
    assert refused.value.retry_after is not None and 29 <= refused.value.retry_after <= 30
    assert other.fetches == 0
    fleet.clocks.advance(31)
    fleet.upstream.fail = None
    await other.fetch()
    assert other.fetches == 1


async def test_storage_failure_opens_the_circuit_and_its_return_closes_it(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    """Storage down: every fetch is local, one warning; after the circuit's length storage is tried again."""
    instance = fleet.instance()
    fleet.store.down = True
    for _ in range(3):
        await instance.fetch(force=True)
    assert instance.fetches == 3
    assert fleet.store.calls["prepare"] == 1  # the circuit is open: storage is not asked again
    assert instance.events["fallback"] == 3
    assert len(warnings(caplog, "fleet cache degraded:")) == 1
    fleet.store.down = False
    fleet.clocks.advance(CIRCUIT_OPEN_S + 1)
    await instance.fetch(force=True)
    assert not instance.layer.circuit.degraded
    assert len(warnings(caplog, "fleet cache restored:")) == 1
    assert fleet.record().token is not None


# What a record may claim (issue 22, item 1)


async def test_a_forged_ten_year_backoff_ends_300_s_after_its_write(fleet: Fleet) -> None:
    """A record sealed with a valid key that claims a 10-year backoff stalls the fleet at most 300 s."""
    now = fleet.clocks.now()
    fleet.plant(Record(backoff_until=now + 10 * YEAR_S, backoff_reason="forged", written_at=now))
    instance = fleet.instance()
    with pytest.raises(UpstreamUnavailable) as refused:
        await instance.fetch()
    assert refused.value.retry_after is not None and refused.value.retry_after <= BACKOFF_CAP_S
    fleet.clocks.advance(BACKOFF_CAP_S + 1)
    await instance.fetch()
    assert instance.fetches == 1


@pytest.mark.parametrize("fetched_before", [False, True])
async def test_a_planted_3650_day_token_is_cut_to_the_providers_lifetime(fleet: Fleet, fetched_before: bool) -> None:
    """A token claiming 3,650 days lives at most 24 h, or the longest lifetime this instance fetched itself."""
    instance = fleet.instance()
    if fetched_before:
        await instance.fetch()
    fleet.clocks.advance(60)
    planted = fleet.token(lifetime=3650 * 24 * 3600.0)
    fleet.plant(Record(token=planted, written_at=fleet.clocks.now()))
    served = await instance.fetch()
    assert served.access_token == planted.access_token
    assert served.lifetime == (fleet.upstream.lifetime if fetched_before else MAX_LIFETIME_S)


async def test_a_record_written_in_the_future_is_a_miss(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    """A record whose write time lies beyond the clock skew is rejected: the instance fetches its own token."""
    now = fleet.clocks.now()
    fleet.plant(Record(token=fleet.token(), written_at=now + CLOCK_SKEW_S + 60))
    instance = fleet.instance()
    served = await instance.fetch()
    assert served == fleet.upstream.issued[0]
    assert instance.events["rejected"] >= 1
    assert "in the future" in warnings(caplog, "fleet cache: provider ilevel: the shared blob was rejected")[0]


def test_clamped_bounds_every_claim_and_keeps_honest_ones() -> None:
    """Backoff ≤ write + 300 s, last force ≤ write, lifetime ≤ the limit; an honest record is unchanged."""
    now = 5_000_000.0 + random.uniform(0, 1e6)
    honest = Record(
        token=Token(Secret("t"), obtained_at=now - 10, expires_at=now + 3590),
        backoff_until=now + 20,
        last_forced=now - 5,
        written_at=now - 1,
    )
    assert clamped(honest, now=now, max_lifetime_s=3600) == honest
    forged = Record(
        token=Token(Secret("t"), obtained_at=now, expires_at=now + YEAR_S),
        backoff_until=now + YEAR_S,
        last_forced=now + YEAR_S,
        written_at=now,
    )
    bounded = clamped(forged, now=now, max_lifetime_s=3600)
    assert bounded.backoff_until == now + BACKOFF_CAP_S
    assert bounded.last_forced == now
    assert bounded.token is not None and bounded.token.expires_at == now + 3600
    from_the_future = Token(Secret("t"), obtained_at=now + YEAR_S, expires_at=now + YEAR_S + 60)
    assert clamped(Record(token=from_the_future, written_at=now), now=now, max_lifetime_s=3600).token is None


# Which key versions open a record (issue 22, items 1 and 3)


@pytest.fixture
def three_key_versions(fleet: Fleet) -> list[str]:
    """The key secret with three versions, a second apart and more: the oldest, the previous, the current."""
    created = fleet.clocks.now()
    fleet.vault._secrets[KEY_SECRET].clear()
    return [
        fleet.vault.set(KEY_SECRET, sensitive(secrets.token_urlsafe(48)), created=created - 20 + 10 * i)
        for i in range(3)
    ]


@pytest.mark.parametrize(("which", "opens"), [(2, True), (1, True), (0, False)])
async def test_only_the_current_and_the_previous_key_version_open_a_record(
    fleet: Fleet, three_key_versions: list[str], which: int, opens: bool
) -> None:
    """A record sealed with the current or the previous key version is served; one sealed with an older
    (still enabled) version is a miss and a fetch."""
    planted = fleet.token()
    fleet.plant(Record(token=planted, written_at=fleet.clocks.now()), key_version=three_key_versions[which])
    instance = fleet.instance()
    served = await instance.fetch()
    assert (served.access_token == planted.access_token) is opens
    assert (instance.events["decrypt_failure"] == 0) is opens


async def test_a_made_up_key_version_costs_one_vault_call_per_circuit_length(fleet: Fleet) -> None:
    """An unknown key version behind a held lease: the polls ask Key Vault about it once, not per poll."""
    fleet.plant(Record(token=fleet.token(), written_at=fleet.clocks.now()), key_version=fleet.vault.latest(KEY_SECRET))
    blob = fleet.store.blobs[fleet.blob]
    blob.data = blob.data.replace(fleet.vault.latest(KEY_SECRET).encode(), secrets.token_hex(16).encode())
    await fleet.store.acquire(fleet.blob, 10**6)
    instance = fleet.instance()
    fleet.vault.reads.clear()
    await instance.fetch()
    assert fleet.store.calls["read"] > 20  # it polled for a lease length
    assert fleet.vault.list_calls[KEY_SECRET] == 1
    assert fleet.vault.reads[KEY_SECRET] == 1  # the current version, read once for the fetch


# Replays (issue 22, item 2)


async def test_a_record_for_replaced_credentials_is_not_served(fleet: Fleet) -> None:
    """After the client secret is rotated, a genuine record holding a token of the old secret is a miss."""
    old = await fleet.instance().fetch()
    fleet.vault.set(PROVIDER.client_secret_secret, sensitive(secrets.token_urlsafe(24)))
    cold = fleet.instance()
    served = await cold.fetch()
    assert served != old
    assert served.credential_versions[1] == fleet.vault.latest(PROVIDER.client_secret_secret)
    assert cold.events["rejected"] >= 1


async def test_a_rotation_in_the_same_second_still_refuses_the_old_secrets_record(fleet: Fleet) -> None:
    """Key Vault's creation times have one-second resolution: when two client-secret versions share the newest
    second, the fleet cannot tell which is current, so it trusts neither record and the instance fetches."""
    old = await fleet.instance().fetch()
    (original,) = await fleet.vault.versions(PROVIDER.client_secret_secret)
    fleet.vault.set(PROVIDER.client_secret_secret, sensitive(secrets.token_urlsafe(24)), created=original.created)
    cold = fleet.instance()
    served = await cold.fetch()
    assert served != old
    assert served.credential_versions[1] == fleet.vault.latest(PROVIDER.client_secret_secret)
    assert cold.events["rejected"] >= 1


async def test_a_record_older_than_one_seen_is_not_served(fleet: Fleet) -> None:
    """A replay of the blob's earlier bytes is refused by an instance that has read a newer record."""
    writer, reader = fleet.instance(), fleet.instance()
    first = await writer.fetch()
    earlier = fleet.store.blobs[fleet.blob].data
    fleet.clocks.advance(40)
    newer = await writer.fetch(force=True)
    assert await reader.fetch() == newer
    fleet.store.put(fleet.blob, earlier)
    served = await reader.fetch(force=True)
    assert served != first
    assert reader.events["rejected"] >= 1


async def test_honest_records_pass_every_check(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    """A day of refreshes across three instances: no record rejected, no warning."""
    instances = [fleet.instance() for _ in range(3)]
    for _ in range(24):
        for instance in instances:
            await instance.fetch(min_validity=300)
        fleet.clocks.advance(3600)
    assert len(fleet.upstream.issued) == 24
    assert not any(i.events["rejected"] or i.events["decrypt_failure"] for i in instances)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
