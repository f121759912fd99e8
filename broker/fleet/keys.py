"""The fleet cache's keys: the current one, read at every fleet fetch, and the older one a record may name.

The AES key is derived with HKDF-SHA256 from the Key Vault secret named by
``BROKER_FLEET_CACHE_KEY_SECRET``; the secret's version is the key version. Key material is kept
in memory by version, so a version is read and derived once per process; the latest version is
still read at every fleet fetch, so a rotation takes effect at the next fetch.

A record sealed with a key version opens only when that version is the current one or the one
created just before it (issue 22): old versions stay enabled in Key Vault (each ``azd provision``
adds one), and anyone holding an old version must not be able to write what every instance
trusts. A version outside that window, or unknown to Key Vault, is remembered as a failure for
a while (``failure_s``), so a made-up version costs one Key Vault call, not one per poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.config import Setting
from broker.errors import SecretError
from broker.fleet.record import FORMAT_VERSION, RecordInvalid
from broker.secrets import SecretStore, VersionInfo
from broker.tokens import Secret

# HKDF's info names the format, so a future format derives a different key from the same secret.
HKDF_INFO = f"ilevel-token-broker fleet cache format {FORMAT_VERSION}".encode()
# The key secret is "any string with at least 256 bits of entropy": infra builds it from three GUIDs
# (over 300 random bits); 32 characters is the least that can carry 256 bits of base64-like text.
MIN_KEY_CHARS = 32
# Versions remembered as unusable at once (a writer making up versions cannot grow this without bound).
MAX_REMEMBERED = 64


class KeyUnavailable(Exception):  # noqa: N818 - the fleet layer degrades on it, never a caller's error
    """The current key could not be read or is unusable: ``reason`` names the secret, never its value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Key:
    """One key version and its AES-256 key (kept out of any repr)."""

    version: str
    material: bytes = field(repr=False)
    created: float | None = None


def derive_key(secret: Secret) -> bytes:
    """The AES-256 key from the Key Vault secret's value (HKDF-SHA256, fixed info)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(secret.reveal().encode())


def previous_versions(listed: list[VersionInfo], current: Key) -> frozenset[str]:
    """The version created just before ``current`` (all of them, should several share that second).

    Key Vault's ``created`` has one-second resolution, so a version created in the same second as
    the current one counts as previous too. Without creation times (the environment store) there is none.
    """
    if current.created is None:
        return frozenset()
    created = current.created
    older = [v for v in listed if v.version != current.version and v.created is not None and v.created <= created]
    if not older:
        return frozenset()
    newest = max(v.created for v in older if v.created is not None)
    return frozenset(v.version for v in older if v.created == newest)


class KeyRing:
    """The cache key secret's versions this instance knows: material by version, the window, the failures."""

    def __init__(
        self,
        secrets: SecretStore,
        key_secret: str,
        *,
        failure_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secrets = secrets
        self._key_secret = key_secret
        self._failure_s = failure_s
        self._monotonic = monotonic
        self._material: dict[str, bytes] = {}
        # For the current version: the previous one(s), listed once per current version.
        self._window: tuple[str, frozenset[str]] | None = None
        self._failed: dict[str, tuple[float, str]] = {}

    async def current(self) -> Key:
        """The latest version of the key secret (read now), its material derived once per version."""
        try:
            secret = await self._secrets.read(self._key_secret)
        except SecretError as error:
            raise KeyUnavailable(
                f"reading secret {error.secret} from {self._secrets.location} failed ({error.code}); "
                f"the cache key lives in secret {self._key_secret} ({Setting.FLEET_CACHE_KEY_SECRET})"
            ) from None
        if len(secret.value) < MIN_KEY_CHARS:
            raise KeyUnavailable(
                f"the cache key secret {self._key_secret} (version {secret.version}) is shorter than "
                f"{MIN_KEY_CHARS} characters; set a value with at least 256 bits of entropy"
            )
        if secret.version not in self._material:
            self._material[secret.version] = derive_key(secret.value)
        return Key(secret.version, self._material[secret.version], secret.created)

    async def opener(self, version: str, current: Key) -> bytes:
        """The material for a record sealed with ``version``: the current or the previous one, else RecordInvalid."""
        if version == current.version:
            return current.material
        failed = self._failed.get(version)
        if failed is not None and self._monotonic() < failed[0]:
            raise RecordInvalid(failed[1], version)
        try:
            if version not in await self._previous(current):
                raise RecordInvalid("its key version is neither the current nor the previous one", version)
            if version not in self._material:
                self._material[version] = await self._read(version)
        except RecordInvalid as invalid:
            self._remember_failure(version, invalid.reason)
            raise
        return self._material[version]

    async def _previous(self, current: Key) -> frozenset[str]:
        if self._window is None or self._window[0] != current.version:
            try:
                listed = await self._secrets.versions(self._key_secret)
            except SecretError as error:
                raise RecordInvalid(
                    f"listing the versions of {self._key_secret} in {self._secrets.location} failed ({error.code})"
                ) from None
            self._window = (current.version, previous_versions(listed, current))
            kept = self._window[1] | {current.version}
            self._material = {v: m for v, m in self._material.items() if v in kept}
        return self._window[1]

    async def _read(self, version: str) -> bytes:
        try:
            secret = await self._secrets.read(self._key_secret, version)
        except SecretError:
            raise RecordInvalid(f"its key version is unknown to {self._secrets.location}", version) from None
        if secret.version != version or len(secret.value) < MIN_KEY_CHARS:
            raise RecordInvalid("its key version is unknown or unusable", version)
        return derive_key(secret.value)

    def _remember_failure(self, version: str, reason: str) -> None:
        if len(self._failed) >= MAX_REMEMBERED:
            now = self._monotonic()
            self._failed = {v: f for v, f in self._failed.items() if f[0] > now}
            if len(self._failed) >= MAX_REMEMBERED:
                self._failed.pop(next(iter(self._failed)))
        self._failed[version] = (self._monotonic() + self._failure_s, reason)
