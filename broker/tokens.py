"""Values that must never be printed: secrets and tokens, and the frozen token record."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal


class Secret:
    """A secret or token value whose ``repr``/``str`` never shows it.

    Call :meth:`reveal` at the one place that must send the value on the wire.
    """

    __slots__ = ("_fingerprint", "_value")

    def __init__(self, value: str) -> None:
        self._value = value
        self._fingerprint: str | None = None

    def reveal(self) -> str:
        return self._value

    def fingerprint(self) -> str:
        """First 8 hex digits of SHA-256: enough to tell values apart in a log, useless to an attacker.

        Computed once: a cached token's access line names it on every request."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self._value)
        return self._fingerprint

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"Secret(len={len(self._value)}, sha256={self.fingerprint()})"

    __str__ = __repr__


def fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:8]


# x/oauth2 treats tokens as expired 10 s early so that a token handed out is still
# good when it reaches the upstream despite clock skew and transit time. Short-lived
# tokens get a proportionally smaller margin.
EXPIRY_SKEW_S = 10.0


@dataclass(frozen=True)
class Token:
    """An upstream access token. ``obtained_at`` is when the request was *sent*."""

    access_token: Secret
    obtained_at: float
    expires_at: float
    token_type: str = "Bearer"
    credential_versions: tuple[str, ...] = field(default=(), compare=False)
    # Where this process got it: its own token request, or the fleet cache (another instance's request).
    origin: Literal["fetch", "fleet"] = field(default="fetch", compare=False)

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.obtained_at

    def remaining(self, now: float) -> float:
        return self.expires_at - now

    def usable(self, now: float) -> bool:
        """Still safe to hand out: unexpired by more than the skew margin."""
        return self.remaining(now) > min(EXPIRY_SKEW_S, self.lifetime / 10)
