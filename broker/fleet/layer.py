"""The fleet layer: a fetch that first asks the fleet's shared blob, then leads or waits, then fetches.

It wraps the token source the way the in-process cache wraps it (in-process cache → fleet
layer → source) and has the same signature, ``fetch(want) -> Token``:

1. Read the provider's blob (named from the provider, the token URL and the client id).
   A token there that satisfies ``want`` is served: no client-secret read, no token request.
2. Otherwise take a 15 s lease, re-read, and fetch only if still needed; the lease is renewed
   while the fetch runs. Write under the lease with the ETag read, then release.
3. When another instance holds the lease, poll the blob with jitter, at most a lease length
   (then take the expired lease). A lease held past its length with no token written degrades
   this instance (below): a dead or hostile holder costs one wait, not one per miss.
4. Shared state inside the record: a 429/503/outage backoff every instance honours, and the
   once-per-30 s force limit, fleet-wide.
5. A record is trusted only within bounds (:meth:`FleetLayer._admit`, :func:`~broker.fleet.record.clamped`,
   :mod:`broker.fleet.keys`): the current or previous key version, the credential versions read now,
   never older than one already read, a capped backoff and token lifetime.

Storage, the cache key or a stuck lease costs latency, never an answer: a circuit opens for
:data:`CIRCUIT_OPEN_S`, the layer passes straight through to the source, one WARNING
``fleet cache degraded:`` marks the change and one INFO ``fleet cache restored:`` its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from broker.cache import FORCE_INTERVAL_S, Fetch, ForceDeclined, Want, effective_min_validity, refresh_threshold
from broker.config import ProviderConfig
from broker.errors import BrokerError, SecretError, UpstreamTimeout, UpstreamUnavailable
from broker.fleet.keys import Key, KeyRing, KeyUnavailable
from broker.fleet.reads import HandOver
from broker.fleet.record import (
    BACKOFF_CAP_S,
    MAX_LIFETIME_S,
    Record,
    RecordInvalid,
    blob_name,
    clamped,
    key_version_of,
    open_record,
    seal,
)
from broker.fleet.store import Store, StoreUnavailable, WriteConflict
from broker.secrets import SecretValue
from broker.tokens import Token

log = logging.getLogger("broker.fleet")

# Blob leases are 15-60 s; the shortest frees the fleet soonest after a leader dies, and the
# leader renews it every third of it while its fetch (Key Vault included, up to 40 s) runs.
LEASE_S = 15
RENEW_EVERY_S = LEASE_S / 3
# Waiters poll with jitter, so a fleet of waiters does not read in lockstep.
POLL_MIN_S = 0.05
POLL_MAX_S = 0.3
# After storage or the key failed: pass straight through this long before trying storage again.
CIRCUIT_OPEN_S = 30.0
# An outage without Retry-After gets a short jittered backoff, so instances do not return in step
# (a recorded backoff is capped at BACKOFF_CAP_S, broker.fleet.record).
OUTAGE_BACKOFF_S = (5.0, 15.0)
# ADF's Web activity times out after 60 s: no caller waits in this layer longer than this.
CALLER_BUDGET_S = 55.0
# Reading the client id, the client secret's versions and the cache key (managed-identity token and Key Vault).
KEY_READ_BUDGET_S = 10.0

Event = Callable[[str], None]


@dataclass(frozen=True)
class _Context:
    """What one fetch needs: the blob's name, the current key, and the credential versions read now."""

    name: str
    key: Key
    client_id_version: str
    # The client secret's current version (several only if they share Key Vault's one-second ``created``).
    secret_versions: frozenset[str]


class Circuit:
    """Open after a storage or key failure; logs one line per state change, never per request."""

    def __init__(self, provider: str, location: str, monotonic: Callable[[], float]) -> None:
        self._provider = provider
        self._location = location
        self._monotonic = monotonic
        self._open_until = float("-inf")
        self.degraded = False

    def allows(self) -> bool:
        return self._monotonic() >= self._open_until

    def failed(self, reason: str) -> None:
        self._open_until = self._monotonic() + CIRCUIT_OPEN_S
        if not self.degraded:
            self.degraded = True
            log.warning(
                "fleet cache degraded: provider %s: %s; this instance fetches its own tokens and retries "
                "the fleet cache every %.0f s",
                self._provider,
                reason,
                CIRCUIT_OPEN_S,
            )

    def succeeded(self) -> None:
        if self.degraded:
            self.degraded = False
            log.info(
                "fleet cache restored: provider %s: %s answers again; tokens are shared across the fleet",
                self._provider,
                self._location,
            )


class FleetLayer:
    """One provider's fleet cache; ``fetch`` has the signature the in-process cache expects."""

    def __init__(
        self,
        provider: ProviderConfig,
        inner: Fetch,
        *,
        store: Store,
        secrets: HandOver,
        key_secret: str,
        instance: str,
        event: Event,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.provider = provider
        self._inner = inner
        self._store = store
        self._secrets = secrets
        self._keys = KeyRing(secrets, key_secret, failure_s=CIRCUIT_OPEN_S, monotonic=monotonic)
        self._instance = instance
        self._event = event
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._warned: str | None = None
        # The longest lifetime of a token this instance fetched itself: no record's token may claim more.
        self._longest_lifetime: float | None = None
        # The newest record this instance has seen (its written_at): an older one is a replay.
        self._newest_seen = float("-inf")
        self.circuit = Circuit(provider.name, store.location, monotonic)

    async def fetch(self, want: Want | None = None) -> Token:
        want = want or Want()
        if not self.circuit.allows():
            self._event("fallback")
            return await self._fetch_inner(want)
        started = self._monotonic()
        try:
            context, client_id = await self._context()
        except StoreUnavailable as failure:
            self._degrade(f"{self._store.location} failed: {failure.reason}")
            return await self._fetch_inner(want)
        except KeyUnavailable as failure:
            self._degrade(failure.reason)
            return await self._fetch_inner(want)
        with self._secrets.handing_over(client_id):
            try:
                return await self._through_fleet(context, want, started)
            except StoreUnavailable as failure:
                self._degrade(f"{self._store.location} failed: {failure.reason}")
            return await self._fetch_inner(want)

    def _degrade(self, reason: str) -> None:
        self.circuit.failed(reason)
        self._event("fallback")

    async def _fetch_inner(self, want: Want) -> Token:
        """The source's fetch; the lifetimes it returns bound what a record may claim."""
        token = await self._inner(want)
        if self._longest_lifetime is None or token.lifetime > self._longest_lifetime:
            self._longest_lifetime = token.lifetime
        return token

    async def _context(self) -> tuple[_Context, SecretValue]:
        """The client id (to name the blob), the client secret's versions and the current key, read together.

        The client id read here is handed to the source's next read of it (one read per fetch)."""
        client_id_secret = self.provider.client_id_secret
        try:
            async with asyncio.timeout(KEY_READ_BUDGET_S):
                client_id, listed, key, _ = await asyncio.gather(
                    self._secrets.read(client_id_secret),
                    self._secrets.versions(self.provider.client_secret_secret),
                    self._keys.current(),
                    self._store.prepare(),
                )
        except TimeoutError:
            raise KeyUnavailable(
                f"{self._secrets.location} did not answer within {KEY_READ_BUDGET_S:.0f} s reading "
                f"{client_id_secret}, the versions of {self.provider.client_secret_secret} and the cache key"
            ) from None
        except SecretError as error:
            raise KeyUnavailable(
                f"reading secret {error.secret} from {self._secrets.location} failed ({error.code}); "
                "the fleet cache needs the client id, the client secret's versions and the cache key"
            ) from None
        enabled = [v for v in listed if v.enabled]
        newest = max((v.created or 0.0 for v in enabled), default=0.0)
        secret_versions = frozenset(v.version for v in enabled if (v.created or 0.0) == newest)
        if len(secret_versions) > 1:
            # Creation times have one-second resolution: versions written in the same second tie, and a
            # replayed record of the older one would pass. Key Vault's latest read names the current one.
            secret_versions = await self._current_secret_version()
        name = blob_name(self.provider.name, self.provider.token_url, client_id.value.reveal())
        return _Context(name, key, client_id.version, secret_versions), client_id

    async def _current_secret_version(self) -> frozenset[str]:
        name = self.provider.client_secret_secret
        try:
            async with asyncio.timeout(KEY_READ_BUDGET_S):
                return frozenset({(await self._secrets.read(name)).version})
        except TimeoutError:
            raise KeyUnavailable(
                f"{self._secrets.location} did not answer within {KEY_READ_BUDGET_S:.0f} s reading {name}"
            ) from None
        except SecretError as error:
            raise KeyUnavailable(f"reading secret {name} from {self._secrets.location} failed ({error.code})") from None

    async def _through_fleet(self, context: _Context, want: Want, started: float) -> Token:
        snapshot = await self._store.read(context.name)
        self.circuit.succeeded()
        record = await self._open(context, snapshot.data, snapshot.etag)
        token = self._judge(record, want)
        if token is not None:
            self._event("hit")
            return token
        self._event("miss")
        waited = False
        wait_until = self._monotonic() + LEASE_S + 1
        leased = snapshot.leased
        while True:
            lease = None if leased else await self._store.acquire(context.name, LEASE_S)
            if lease is not None:
                self._event("lease_won")
                return await self._lead(context, lease, want)
            if not waited:
                waited = True
                self._event("lease_lost")
                self._event("wait")
            if self._monotonic() >= wait_until:
                break
            await self._sleep(self._rng.uniform(POLL_MIN_S, POLL_MAX_S))
            snapshot = await self._store.read(context.name)
            token = self._judge(await self._open(context, snapshot.data, snapshot.etag), want)
            if token is not None:
                self._event("hit")
                return token
            leased = snapshot.leased
        # The lease outlived its length without a token: its holder is stuck (or holds it on purpose).
        # Degraded: the next fetches skip the wait for the circuit's length.
        self._degrade(
            f"a lease on the shared blob in {self._store.location} was held past its {LEASE_S} s "
            "without a token written"
        )
        return await self._own_fetch(want, started)

    async def _own_fetch(self, want: Want, started: float) -> Token:
        left = CALLER_BUDGET_S - (self._monotonic() - started)
        try:
            async with asyncio.timeout(max(1.0, left)):
                return await self._fetch_inner(want)
        except TimeoutError:
            raise UpstreamTimeout(
                f"Fetching a token for provider {self.provider.name} after waiting for another broker instance "
                "took too long; retry later.",
                retry_after=10,
            ) from None

    async def _lead(self, context: _Context, lease: str, want: Want) -> Token:
        renewer = asyncio.get_running_loop().create_task(self._keep(context.name, lease))
        try:
            snapshot = await self._store.read(context.name)
            record = await self._open(context, snapshot.data, snapshot.etag)
            token = self._judge(record, want)
            if token is not None:
                self._event("hit")
                return token
            base = record or Record()
            now = self._clock()
            try:
                token = await self._fetch_inner(want)
            except BrokerError as error:
                backoff = self._backoff(error)
                if backoff is not None:
                    error.retry_after = backoff
                    answered = self._clock()  # a Retry-After counts from the answer, not from the request
                    backed_off = replace(
                        base,
                        backoff_until=answered + backoff,
                        backoff_reason=_reason(error),
                        writer=self._instance,
                        written_at=answered,
                    )
                    await self._write(context, backed_off, lease, snapshot.etag)
                raise
            fresh = Record(
                token=replace(token, origin="fetch"),
                last_forced=now if want.force else base.last_forced,
                writer=self._instance,
                written_at=self._clock(),
            )
            await self._write(context, fresh, lease, snapshot.etag)
            return token
        finally:
            renewer.cancel()
            # On failure the lease expires on its own within LEASE_S.
            with contextlib.suppress(StoreUnavailable):
                await self._store.release(context.name, lease)

    async def _keep(self, name: str, lease: str) -> None:
        """Renew the lease while the fetch runs (Key Vault and the token endpoint can outlast 15 s)."""
        while True:
            await self._sleep(RENEW_EVERY_S)
            try:
                await self._store.renew(name, lease)
            except StoreUnavailable as failure:
                log.debug("fleet cache: renewing the lease failed (%s)", failure.reason)

    async def _write(self, context: _Context, record: Record, lease: str, etag: str | None) -> None:
        """Write under the lease; a failure here never costs the caller the token already fetched."""
        data = seal(record, name=context.name, key=context.key.material, key_version=context.key.version)
        try:
            await self._store.write(context.name, data, lease_id=lease, etag=etag)
        except WriteConflict:
            log.info("fleet cache: provider %s: the blob changed under the lease; not written", self.provider.name)
            return
        except StoreUnavailable as failure:
            self._degrade(f"{self._store.location} failed writing: {failure.reason}")
            return
        self._newest_seen = max(self._newest_seen, record.written_at)

    async def _open(self, context: _Context, data: bytes | None, etag: str | None) -> Record | None:
        """The blob's record, or None when it is missing, empty, cannot be opened or is not to be trusted
        (a miss plus one warning per blob version)."""
        if data is None:
            return None
        try:
            version = key_version_of(data)
            key = await self._keys.opener(version, context.key)
            record = self._admit(open_record(data, name=context.name, key=key), context)
        except RecordInvalid as invalid:
            self._event("rejected" if invalid.opened else "decrypt_failure")
            if self._warned != etag:  # once per blob version, not per poll
                self._warned = etag
                log.warning(
                    "fleet cache: provider %s: the shared blob %s: %s; treating it as a miss "
                    "(the next token fetched replaces it)",
                    self.provider.name,
                    "was rejected" if invalid.opened else "could not be opened",
                    invalid.reason,
                )
            return None
        self._newest_seen = max(self._newest_seen, record.written_at)
        return record

    def _admit(self, record: Record, context: _Context) -> Record:
        """The opened record with its claims bounded; RecordInvalid for a replay or other credentials."""
        if record.written_at < self._newest_seen:
            raise RecordInvalid("it is older than one this instance has already read (a replay)", opened=True)
        token = record.token
        if token is not None:
            versions = token.credential_versions
            current = len(versions) == 2 and versions[0] == context.client_id_version
            if not current or versions[1] not in context.secret_versions:
                raise RecordInvalid(
                    "its token was issued for other versions of "
                    f"{self.provider.client_id_secret} and {self.provider.client_secret_secret} than the current ones",
                    opened=True,
                )
        limit = MAX_LIFETIME_S if self._longest_lifetime is None else self._longest_lifetime
        return clamped(record, now=self._clock(), max_lifetime_s=limit)

    def _judge(self, record: Record | None, want: Want) -> Token | None:
        """The blob's token if it satisfies ``want``; raises for a fleet backoff or a declined force; else None."""
        now = self._clock()
        token = record.token if record is not None else None
        current = want.current
        usable = token is not None and token.usable(now)
        newer = (
            token is not None
            and usable
            and (current is None or not current.usable(now) or token.obtained_at > current.obtained_at)
        )
        backoff = record.backoff_left(now) if record is not None else 0.0
        if want.force:
            if newer and current is not None:
                return token  # another instance refreshed after the token this one holds: no new fetch
            usable_token = token if usable else None
            forced_ago = now - record.last_forced if record is not None else math.inf
            if usable_token is not None and forced_ago < FORCE_INTERVAL_S:
                raise ForceDeclined(usable_token, max(1, math.ceil(FORCE_INTERVAL_S - forced_ago)))
            if backoff > 0 and record is not None:
                if usable_token is not None:
                    raise ForceDeclined(usable_token, max(1, math.ceil(backoff)))
                raise self._backoff_error(record, backoff)
            return None
        if token is not None and newer:
            wanted = effective_min_validity(token, want.min_validity)
            left = token.remaining(now)
            if left >= wanted and left > refresh_threshold(token, wanted):
                return token
        if backoff > 0 and record is not None:
            if token is not None and newer:
                return token  # still valid, and no instance may ask upstream before the backoff ends
            raise self._backoff_error(record, backoff)
        return None

    def _backoff_error(self, record: Record, left: float) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"The token endpoint for provider {self.provider.name} failed ({record.backoff_reason or 'unavailable'}) "
            f"and the broker's instances back off together for {math.ceil(left)} more s; retry after that.",
            retry_after=max(1.0, left),
        )

    def _backoff(self, error: BrokerError) -> float | None:
        """How long the fleet backs off after the leader's fetch failed this way, or None (no backoff)."""
        if not isinstance(error, (UpstreamUnavailable, UpstreamTimeout)) or isinstance(error, SecretError):
            return None
        status = getattr(error, "upstream_status", None)
        if status in (429, 503) and error.retry_after:
            return min(float(error.retry_after), BACKOFF_CAP_S)
        return self._rng.uniform(*OUTAGE_BACKOFF_S)


class _KeyUnavailable(Exception):  # noqa: N818
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reason(error: BrokerError) -> str:
    status = getattr(error, "upstream_status", None)
    return f"{error.code} (HTTP {status})" if status else error.code
