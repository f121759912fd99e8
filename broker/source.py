"""Fetching one provider's token: read fresh credentials, request, and survive rotation.

How the broker chooses which credentials to send (docs/internals.md, rotation):

1. Every fetch reads both secrets from Key Vault (latest enabled versions), so a new
   version is used from the next fetch on.
2. If the token endpoint rejects them as bad credentials (``invalid_client``) and they
   differ from the last pair that worked, the new pair is wrong (a typo): log
   "rotation FAILED", remember the bad pair for 60 s, and retry once with the last
   working pair, in the same caller request.
3. If the rejected pair *is* the last working one (revoked at the provider), re-read
   Key Vault once; if a newer version exists, retry once with it.
4. Otherwise remember the rejection for 60 s (the negative cache) and fail with a
   502 naming the secrets and versions. A new version in Key Vault bypasses it.

If a re-read of Key Vault fails transiently, the last pair read is used.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from broker.cache import Want
from broker.config import ProviderConfig
from broker.endpoint import UNAVAILABLE_RETRY_AFTER_S, TokenEndpoint
from broker.errors import SecretStoreUnavailable, TokenRejected, UpstreamTimeout
from broker.secrets import KEY_VAULT_BUDGET_S, Credentials, SecretStore, read_pair
from broker.tokens import Token

log = logging.getLogger(__name__)

# A definitive rejection is remembered this long, so a broken secret cannot make the
# broker hammer the provider and risk locking the account.
NEGATIVE_CACHE_S = 60.0
# Key Vault re-reads triggered by a failure happen at most this often per provider.
FAILURE_REREAD_INTERVAL_S = 10.0


@dataclass(frozen=True)
class _Rejection:
    error: TokenRejected
    until: float


class TokenSource:
    """Gets a fresh token for one provider. Not cached: see :mod:`broker.cache`."""

    def __init__(
        self,
        provider: ProviderConfig,
        secrets: SecretStore,
        endpoint: TokenEndpoint,
        *,
        budget_s: float,
        key_vault_budget_s: float = KEY_VAULT_BUDGET_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self._budget_s = budget_s
        self._key_vault_budget_s = key_vault_budget_s
        self._secrets = secrets
        self._endpoint = endpoint
        self._clock = clock
        self._last_good: Credentials | None = None
        self._last_read: Credentials | None = None
        self._rejected: dict[tuple[str, str], _Rejection] = {}
        self._last_reread = float("-inf")

    async def fetch(self, want: Want | None = None) -> Token:
        """A fresh token; the whole fetch, rotation fallbacks included, stays within the budget.

        Any ``want`` is met by a fresh token, so this layer ignores it."""
        try:
            async with asyncio.timeout(self._budget_s):
                return await self._fetch()
        except TimeoutError:
            raise UpstreamTimeout(
                f"Fetching a token for provider {self.provider.name} (Key Vault and the token endpoint together) "
                f"took longer than {self._budget_s:.0f} s; retry later.",
                retry_after=UNAVAILABLE_RETRY_AFTER_S,
            ) from None

    async def _fetch(self) -> Token:
        credentials = await self.read_credentials()
        rejection = self._rejection(credentials)
        if rejection is not None:
            if self._last_good is None or self._last_good.versions == credentials.versions:
                raise rejection.error.with_traceback(None)
            log.warning(
                "provider %s: %s were rejected less than %.0f s ago; using the last working %s",
                self.provider.name,
                credentials.describe(),
                NEGATIVE_CACHE_S,
                self._last_good.describe(),
            )
            credentials = self._last_good
        try:
            token = await self._endpoint.request(credentials)
        except TokenRejected as error:
            if not error.bad_credentials:
                raise
            token, credentials = await self._recover(credentials, error)
        self._succeeded(credentials)
        return token

    async def try_credentials(self, credentials: Credentials) -> Token:
        """One token request with these credentials, outside the cache and the rotation rules."""
        return await self._endpoint.request(credentials)

    async def read_credentials(self) -> Credentials:
        """Both secrets, read concurrently; the last pair read if Key Vault is briefly unavailable."""
        try:
            credentials = await read_pair(self._secrets, self.provider, budget_s=self._key_vault_budget_s)
        except SecretStoreUnavailable as error:
            if self._last_read is None:
                raise
            log.warning(
                "provider %s: %s; using the %s read earlier",
                self.provider.name,
                error.description,
                self._last_read.describe(),
            )
            return self._last_read
        self._last_read = credentials
        return credentials

    async def _recover(self, rejected: Credentials, error: TokenRejected) -> tuple[Token, Credentials]:
        now = self._clock()
        last_good = self._last_good
        if last_good is not None and last_good.versions != rejected.versions:
            log.error(
                "rotation FAILED for provider %s: the token endpoint rejected the new %s (%s); "
                "still using the previous %s. Fix the new secret version in %s.",
                self.provider.name,
                rejected.describe(),
                error.upstream_error,
                last_good.describe(),
                self._secrets.location,
            )
            self._remember(rejected, error, now)
            return await self._retry_with(last_good), last_good
        if now - self._last_reread >= FAILURE_REREAD_INTERVAL_S:
            self._last_reread = now
            fresh = await self.read_credentials()
            if fresh.versions != rejected.versions:
                log.warning(
                    "provider %s: the token endpoint rejected %s; retrying once with the newer %s",
                    self.provider.name,
                    rejected.describe(),
                    fresh.describe(),
                )
                return await self._retry_with(fresh), fresh
        self._remember(rejected, error, now)
        log.error(
            "provider %s: the token endpoint rejected %s (%s) and %s has no newer version; "
            "rejections are remembered for %.0f s",
            self.provider.name,
            rejected.describe(),
            error.upstream_error,
            self._secrets.location,
            NEGATIVE_CACHE_S,
        )
        raise error

    async def _retry_with(self, credentials: Credentials) -> Token:
        try:
            return await self._endpoint.request(credentials)
        except TokenRejected as error:
            if error.bad_credentials:
                self._remember(credentials, error, self._clock())
            raise

    def _rejection(self, credentials: Credentials) -> _Rejection | None:
        now = self._clock()
        for versions in [v for v, r in self._rejected.items() if r.until <= now]:
            del self._rejected[versions]
        return self._rejected.get(credentials.versions)

    def _remember(self, credentials: Credentials, error: TokenRejected, now: float) -> None:
        self._rejected[credentials.versions] = _Rejection(error, now + NEGATIVE_CACHE_S)

    def _succeeded(self, credentials: Credentials) -> None:
        if self._last_good is not None and self._last_good.versions != credentials.versions:
            log.info("provider %s: now using %s", self.provider.name, credentials.describe())
        self._last_good = credentials
        self._rejected.pop(credentials.versions, None)
