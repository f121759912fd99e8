"""Path safety and the upstream target: nothing a caller writes may leave the API root.

The proxied path is checked as received and after every layer of percent-decoding, so
``%2e%2e``, ``%252e%252e`` and ``..`` are all the same dot segment to us, whichever layer
the upstream (or something in front of it) decodes. Under Azure Functions the host has
already decoded the path once (its ASGI scope's ``path`` and ``raw_path`` are both
decoded), so an encoded slash arrives as a plain ``/`` and is indistinguishable from
one: it is then forwarded as a segment separator, which stays inside the root. Encoded
dots, backslashes and control characters still decode to forms refused here.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote_to_bytes

from broker.errors import InvalidRequest

# RFC 3986 pchar minus "%": what may stay literal in a forwarded segment.
_PCHAR = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@")
_HEX = frozenset(b"0123456789ABCDEFabcdef")
_SCHEME = re.compile(rb"^[A-Za-z][A-Za-z0-9+.-]*:")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_QUERY_SAFE = _PCHAR | frozenset(b"/?")
# Enough for any honest path; deeper nesting of %25 is refused rather than followed.
MAX_DECODE_ROUNDS = 4
MAX_PATH_BYTES = 2048
# "code" is the Functions key, should anyone switch key auth on: it is never forwarded.
DROPPED_QUERY_KEYS = frozenset({"code"})


def _refuse(why: str) -> InvalidRequest:
    return InvalidRequest(
        f"The proxied path is refused: {why}. Nothing was sent upstream. Send the API's own path under "
        "/api/proxy/<provider>/, e.g. /api/proxy/ilevel/entities/assets."
    )


def _layers(segment: bytes) -> list[bytes]:
    """The segment as received and after each round of percent-decoding, until nothing changes."""
    layers = [segment]
    for _ in range(MAX_DECODE_ROUNDS):
        decoded = unquote_to_bytes(layers[-1])
        if decoded == layers[-1]:
            return layers
        layers.append(decoded)
    raise _refuse("it is percent-encoded more deeply than any real path")


def _check_layer(layer: bytes) -> None:
    if layer.split(b";", 1)[0] in (b".", b".."):
        # "..;x" is ".." to servers that strip path parameters (Tomcat and friends).
        raise _refuse("it has a '.' or '..' segment, plain or percent-encoded")
    if b"/" in layer or b"\\" in layer:
        raise _refuse("it has an encoded slash or backslash")
    if _CONTROL.search(layer):
        raise _refuse("it has a control character")
    if b"@" in layer or _SCHEME.match(layer):
        raise _refuse("it has a scheme or '@'")


def _escape(data: bytes, safe: frozenset[int]) -> str:
    """Keep what is already valid (percent-escapes as received); escape anything else."""
    if _valid(safe).fullmatch(data):
        return data.decode("ascii")  # the common case, nothing to escape: one C-level match, not a loop per byte
    return _escape_each(data, safe)


@functools.lru_cache(maxsize=4)
def _valid(safe: frozenset[int]) -> re.Pattern[bytes]:
    """Bytes :func:`_escape_each` would return unchanged: ``safe`` ones and well-formed percent-escapes."""
    allowed = b"".join(re.escape(bytes([byte])) for byte in sorted(safe))
    return re.compile(rb"(?:[" + allowed + rb"]|%[0-9A-Fa-f]{2})*")


def _escape_each(data: bytes, safe: frozenset[int]) -> str:
    out: list[str] = []
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == 0x25 and i + 2 < len(data) and data[i + 1] in _HEX and data[i + 2] in _HEX:
            out.append(data[i : i + 3].decode("ascii"))
            i += 3
            continue
        out.append(chr(byte) if byte in safe else f"%{byte:02X}")
        i += 1
    return "".join(out)


def safe_path(raw: bytes) -> str:
    """The proxied path (after ``/api/proxy/<name>/``), checked, as it is appended to the API root.

    Raises :class:`InvalidRequest` (400 ``invalid_request``) for anything that could leave the root:
    ``.``/``..`` segments, encoded slashes or backslashes, empty segments, control characters, a
    scheme or ``@``.
    """
    if not raw:
        raise _refuse("it is empty; name a resource under the API root, e.g. /api/proxy/ilevel/entities/assets")
    if len(raw) > MAX_PATH_BYTES:
        raise _refuse("it is over 2 KiB")
    segments = raw.split(b"/")
    encoded: list[str] = []
    for segment in segments:
        if not segment:
            raise _refuse("it has an empty segment ('//', a leading or a trailing '/')")
        for layer in _layers(segment):
            _check_layer(layer)
        encoded.append(_escape(segment, _PCHAR))
    return "/".join(encoded)


def forwarded_query(raw: bytes) -> str:
    """The query string as received, without ``code`` (the Functions key) in any case."""
    if not raw:
        return ""
    kept = []
    for part in raw.split(b"&"):
        key = unquote_to_bytes(part.split(b"=", 1)[0].replace(b"+", b" ")).decode("utf-8", "replace")
        if key.lower() not in DROPPED_QUERY_KEYS:
            kept.append(_escape(part, _QUERY_SAFE))
    return "&".join(kept)
