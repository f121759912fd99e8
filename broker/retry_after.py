"""Reading an upstream's Retry-After header, for the token endpoint and Key Vault alike."""

from __future__ import annotations

import email.utils
import re

# An upstream's Retry-After is honoured up to this long and passed on no longer: a caller is
# never told to stay away for more than an hour by one answer.
MAX_RETRY_AFTER_S = 3600
_DELTA_SECONDS = re.compile(r"[0-9]+")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as delta-seconds (ASCII digits only) or an HTTP-date (RFC 9110 §10.2.3), capped.

    ``str.isdigit`` is true for "²" and other Unicode digits that ``float`` refuses; anything
    but ASCII digits or a date is ignored (None), and no value exceeds MAX_RETRY_AFTER_S.
    """
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        # Compare the digit count before converting: a 20-digit value is simply "too long".
        return float(min(int(value), MAX_RETRY_AFTER_S)) if len(value) <= 9 else float(MAX_RETRY_AFTER_S)
    if not value.isascii():
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        delay = when.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, delay), float(MAX_RETRY_AFTER_S))
