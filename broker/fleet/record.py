"""What one blob holds: the provider's token and the fleet's shared state, sealed with AES-256-GCM.

The blob is a small JSON envelope: the format version, the key version and, base64, the nonce
and the ciphertext. Everything an instance acts on (the token, backoff-until and its reason,
the last forced refresh, the writer) is inside the ciphertext, because blob metadata and the
envelope are not authenticated: a forged backoff-until there could stall the fleet. The
associated data binds the blob name, the format version and the key version, so a blob
copied under another provider's name, or relabelled with another key version, fails to open.

The AES key comes from :mod:`broker.fleet.keys`. What an opened record claims is bounded before
anyone acts on it (:func:`clamped`): a writer holding a valid key still cannot stall the fleet past
a short backoff or plant a token that outlives any the provider issues.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, replace
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.tokens import Secret, Token

FORMAT_VERSION = 1
NONCE_BYTES = 12
# A blob is a few hundred bytes; anything much larger is not ours.
MAX_BLOB_BYTES = 64 * 1024


class RecordInvalid(Exception):  # noqa: N818 - a miss with a reason, never a caller's error
    """The blob could not be opened (tampered, copied, another format or an unknown key), or ``opened``
    but not trusted (a replay, other credentials, a claim from the future)."""

    def __init__(self, reason: str, key_version: str | None = None, *, opened: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key_version = key_version
        self.opened = opened


def blob_name(provider: str, token_url: str, client_id: str) -> str:
    """One blob per provider, token URL and client id: a changed client id or URL never reads the old token.

    The client id enters as a fingerprint (part of a SHA-256), never as itself.
    """
    client = hashlib.sha256(client_id.encode("utf-8")).hexdigest()
    digest = hashlib.sha256(f"{provider}\n{token_url}\n{client}".encode()).hexdigest()[:40]
    return f"v{FORMAT_VERSION}/{provider}/{digest}"


def associated_data(name: str, key_version: str) -> bytes:
    return f"{name}|format={FORMAT_VERSION}|key={key_version}".encode()


@dataclass(frozen=True)
class Record:
    """The fleet's state for one provider. Times are the broker clock's (epoch seconds)."""

    token: Token | None = None
    backoff_until: float = 0.0
    backoff_reason: str = ""
    last_forced: float = float("-inf")
    writer: str = ""
    written_at: float = 0.0

    def backoff_left(self, now: float) -> float:
        return max(0.0, self.backoff_until - now)


# A recorded backoff ends at most this long after the record was written (a Retry-After of a day must
# not stall the fleet for a day, and a forged one must not stall it for ten years).
BACKOFF_CAP_S = 300.0
# Instances' clocks differ by a little (NTP-synchronised hosts): a record written this far "ahead" is tolerated.
CLOCK_SKEW_S = 60.0
# The longest token lifetime trusted before this instance has seen one of the provider's own.
MAX_LIFETIME_S = 24 * 3600.0


def clamped(record: Record, *, now: float, max_lifetime_s: float) -> Record:
    """``record`` with its claims bounded, or RecordInvalid when it claims to be written in the future.

    The backoff ends at most :data:`BACKOFF_CAP_S` after the write, the last forced refresh is no later
    than the write, and the token expires at most ``max_lifetime_s`` after it was obtained (a token
    obtained in the future is dropped).
    """
    if record.written_at > now + CLOCK_SKEW_S:
        raise RecordInvalid(f"it claims to be written {record.written_at - now:.0f} s in the future", opened=True)
    token = record.token
    if token is not None:
        if token.obtained_at > now + CLOCK_SKEW_S:
            token = None
        elif token.lifetime > max_lifetime_s:
            token = replace(token, expires_at=token.obtained_at + max_lifetime_s)
    return replace(
        record,
        token=token,
        backoff_until=min(record.backoff_until, record.written_at + BACKOFF_CAP_S),
        last_forced=min(record.last_forced, record.written_at),
    )


def _plain(record: Record) -> bytes:
    token = record.token
    body: dict[str, Any] = {
        "token": None
        if token is None
        else {
            "access_token": token.access_token.reveal(),
            "token_type": token.token_type,
            "obtained_at": token.obtained_at,
            "expires_at": token.expires_at,
            "credential_versions": list(token.credential_versions),
        },
        "backoff_until": record.backoff_until,
        "backoff_reason": record.backoff_reason,
        "last_forced": record.last_forced if record.last_forced != float("-inf") else None,
        "writer": record.writer,
        "written_at": record.written_at,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _from_plain(data: bytes) -> Record:
    try:
        body = json.loads(data)
        raw = body["token"]
        token = None
        if raw is not None:
            token = Token(
                access_token=Secret(str(raw["access_token"])),
                obtained_at=float(raw["obtained_at"]),
                expires_at=float(raw["expires_at"]),
                token_type=str(raw["token_type"]),
                credential_versions=tuple(str(v) for v in raw.get("credential_versions", ())),
                origin="fleet",
            )
        forced = body.get("last_forced")
        return Record(
            token=token,
            backoff_until=float(body.get("backoff_until") or 0.0),
            backoff_reason=str(body.get("backoff_reason") or "")[:200],
            last_forced=float("-inf") if forced is None else float(forced),
            writer=str(body.get("writer") or "")[:100],
            written_at=float(body.get("written_at") or 0.0),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordInvalid(f"the decrypted record is malformed ({type(exc).__name__})") from None


def seal(record: Record, *, name: str, key: bytes, key_version: str) -> bytes:
    """The blob's bytes: a fresh nonce per write, the AAD binding name, format and key version."""
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, _plain(record), associated_data(name, key_version))
    envelope = {
        "format": FORMAT_VERSION,
        "key_version": key_version,
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(sealed).decode(),
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def key_version_of(blob: bytes) -> str:
    """The key version the envelope names (a hint until the record opens with it)."""
    return _envelope(blob)[0]


def _envelope(blob: bytes) -> tuple[str, bytes, bytes]:
    if len(blob) > MAX_BLOB_BYTES:
        raise RecordInvalid("the blob is larger than any record")
    try:
        envelope = json.loads(blob)
        if envelope.get("format") != FORMAT_VERSION:
            raise RecordInvalid(f"unknown format {str(envelope.get('format'))[:10]!r}")
        version = envelope["key_version"]
        if not isinstance(version, str) or not version or len(version) > 64:
            raise RecordInvalid("the key version is missing or malformed")
        nonce = base64.b64decode(envelope["nonce"], validate=True)
        sealed = base64.b64decode(envelope["ciphertext"], validate=True)
    except RecordInvalid:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RecordInvalid(f"the envelope is malformed ({type(exc).__name__})") from None
    if len(nonce) != NONCE_BYTES:
        raise RecordInvalid("the nonce is malformed")
    return version, nonce, sealed


def open_record(blob: bytes, *, name: str, key: bytes) -> Record:
    """The record in ``blob``, which must have been sealed for ``name`` with ``key``; else RecordInvalid."""
    version, nonce, sealed = _envelope(blob)
    try:
        plain = AESGCM(key).decrypt(nonce, sealed, associated_data(name, version))
    except InvalidTag:
        raise RecordInvalid(
            "it failed authentication (tampered, copied from another blob, or another key)", version
        ) from None
    return _from_plain(plain)
