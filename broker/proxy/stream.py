"""Body transformations that work on a stream: a few chunks held, never the body.

Each stage takes chunks and returns chunks, carrying across chunk boundaries only what a
match could still need (a token split in two, a base URL split in two, a JSON string whose
key-or-value role is not known yet). ``finish()`` gives back what is still carried.

- :class:`Decoder`: ``Content-Encoding`` undone with ``max_length``, so a compressed bomb
  costs at most the remaining budget, never its expanded size.
- :class:`Redactor`: the broker's own token, in any encoding an echoing server may use
  (:func:`token_forms`), becomes ``[redacted-by-broker]``.
- :class:`JsonLinks`: JSON string *values* that begin with the API base get the broker's
  proxy root instead, ``\\/`` escaping included; a value with a dot segment in its path is left
  as written (it may leave the base once resolved).
"""

from __future__ import annotations

import contextlib
import functools
import re
import zlib
from urllib.parse import urlsplit

from broker.errors import InvalidUpstreamResponse
from broker.redaction import SecretForms

REDACTED = b"[redacted-by-broker]"
# Decompressed output per step: bounded, so one highly compressed chunk is never one huge chunk.
DECODE_STEP_BYTES = 256 * 1024
# A JSON string that begins with the base but has not closed after this many bytes is rewritten
# as a value without waiting for its end (a key that long is not a key anyone writes).
MAX_PENDING_BYTES = 64 * 1024
_SPACE = rb"[ \t\r\n]*"


class BodyTooLarge(InvalidUpstreamResponse):
    """The decoded body passed the response cap."""


class Decoder:
    """Undoes gzip or deflate (or nothing), counting decoded bytes against ``budget``."""

    def __init__(self, encoding: str | None, budget: int, too_big: InvalidUpstreamResponse) -> None:
        coding = (encoding or "identity").strip().lower()
        self._coding = coding
        self._budget = budget
        self._too_big = too_big
        self.decoded = 0
        self._inflate: zlib._Decompress | None
        if coding in ("", "identity"):
            self._inflate = None
        elif coding in ("gzip", "x-gzip"):
            self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self._inflate = zlib.decompressobj()
        else:
            raise InvalidUpstreamResponse(
                f"The API answered with Content-Encoding {coding[:32]!r}, which the broker does not decode "
                "(it asks for identity); the answer is not passed on."
            )

    @property
    def compressed(self) -> bool:
        return self._inflate is not None

    def twin(self) -> Decoder:
        """A fresh decoder for the same coding and budget (to measure a body before decoding it for real)."""
        return Decoder(self._coding, self._budget, self._too_big)

    def feed(self, data: bytes) -> list[bytes]:
        if self._inflate is None:
            self._count(len(data))
            return [data] if data else []
        out: list[bytes] = []
        pending = data
        while pending:
            try:
                piece = self._inflate.decompress(pending, min(DECODE_STEP_BYTES, self._budget - self.decoded + 1))
            except zlib.error:
                raise InvalidUpstreamResponse("The API's compressed body is corrupt; it is not passed on.") from None
            self._count(len(piece))
            if piece:
                out.append(piece)
            pending = self._inflate.unconsumed_tail
        return out

    def finish(self) -> list[bytes]:
        if self._inflate is None:
            return []
        piece = self._inflate.flush()
        self._count(len(piece))
        return [piece] if piece else []

    def _count(self, size: int) -> None:
        self.decoded += size
        if self.decoded > self._budget:
            raise self._too_big


@functools.lru_cache(maxsize=16)
def token_forms(token: str) -> SecretForms:
    """Every way a reflected token can appear (:mod:`broker.redaction`): raw; each character
    percent-encoded (either case), form-encoded, JSON-escaped (``\\u002B``, ``\\/``) or an HTML
    numeric reference; and the base64 of ``Bearer <token>`` or of the token. Built once per token,
    not per request (the token changes about once an hour)."""
    return SecretForms((token,), base64_of=(f"Bearer {token}", token))


class Redactor:
    """Replaces every form of a secret value with :data:`REDACTED`, across chunk boundaries."""

    def __init__(self, forms: SecretForms) -> None:
        self._forms = forms
        self._carry = b""
        self.found = 0

    def value(self, data: bytes) -> bytes:
        """A whole value (a header) redacted."""
        return self._redact(data, final=True)[0]

    def feed(self, chunk: bytes) -> bytes:
        data = self._carry + chunk
        out, cut = self._redact(data, final=False)
        self._carry = data[cut:]
        return out

    def finish(self) -> bytes:
        rest, self._carry = self._carry, b""
        return self.value(rest)

    def _redact(self, data: bytes, *, final: bool) -> tuple[bytes, int]:
        """``data`` redacted up to where it may be cut (matches starting before the held-back end), and the cut."""
        spans, hold = self._forms.scan(data)
        safe = len(data) if final else len(data) - hold
        out: list[bytes] = []
        last = 0
        for start, end in spans:
            if start >= safe:
                break
            out.append(data[last:start])
            out.append(REDACTED)
            self.found += 1
            last = end
        cut = max(last, safe, 0)
        out.append(data[last:cut])
        return b"".join(out), cut


def _slashes(text: str) -> bytes:
    return b"".join(rb"(?:/|\\/)" if char == "/" else re.escape(char.encode()) for char in text)


def _any_case(text: str) -> bytes:
    out: list[bytes] = []
    for c in text:
        if c.isascii() and c.isalpha():
            out.append(f"[{c.upper()}{c.lower()}]".encode())
        elif c.upper() != c.lower():
            out.append(b"(?:" + re.escape(c.upper().encode()) + b"|" + re.escape(c.lower().encode()) + b")")
        else:
            out.append(re.escape(c.encode()))
    return b"".join(out)


def _prefix_pattern(base_url: str) -> bytes:
    """The base URL as it may be written: scheme and host in any case, IDNA or Unicode host, the
    default port implicit or explicit, and ``/`` or ``\\/`` for every slash."""
    parts = urlsplit(base_url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    hosts = {host}
    with contextlib.suppress(UnicodeError):
        hosts.add(host.encode("ascii").decode("idna").lower())
    with contextlib.suppress(UnicodeError):
        hosts.add(host.encode("idna").decode("ascii").lower())
    default = {"http": 80, "https": 443}.get(scheme)
    port = parts.port
    if port is None or port == default:
        port_pattern = b"(?::" + str(default).encode() + b")?" if default else b""
    else:
        port_pattern = b":" + str(port).encode()
    host_pattern = b"(?:" + b"|".join(_any_case(h) for h in sorted(hosts, key=len, reverse=True)) + b")"
    return _any_case(scheme) + b":" + _slashes("//") + host_pattern + port_pattern + _slashes(parts.path or "/")


class JsonLinks:
    r"""Rewrites the base prefix of JSON string values, incrementally.

    A string is a *value* when its opening quote follows ``:``, ``[``, ``,`` (blanks aside) or the
    start, and it is not followed by ``:``. Each window ends outside any string, and never right
    after a string whose next non-blank character has not arrived (it may be a key's ``:``); the
    rest waits for the next chunk. The last non-blank byte already sent is kept as context.
    """

    def __init__(self, base_url: str, root: str) -> None:
        self._base, self._root = base_url, root
        self._carry = b""
        self._before = b""  # the last non-blank byte sent, or b"" at the start
        self._in_string = False  # only after a pathological string was passed on unfinished
        self.rewritten = 0

    def feed(self, chunk: bytes) -> bytes:
        data = self._carry + chunk
        self._carry = b""
        head = b""
        if self._in_string:
            part = _STRING_PART.match(data)
            end = part.end() if part else 0
            if end < len(data) and data[end : end + 1] == b'"':
                head, data = data[: end + 1], data[end + 1 :]
                self._in_string = False
                self._before = b'"'
            else:
                self._carry = data[end:]
                return data[:end]
        cut, unfinished = _cut(data)
        if len(data) - cut > MAX_PENDING_BYTES:
            # A pathological string: passed on as it stands, unrewritten.
            self._in_string = unfinished
            cut = len(data)
        out = head + self._sub(data[:cut])
        self._carry = data[cut:]
        return out

    def finish(self) -> bytes:
        data, self._carry = self._carry, b""
        if self._in_string:
            return data
        return self._sub(data)

    def _sub(self, window: bytes) -> bytes:
        if not window:
            return b""
        context = self._before
        data = context + window
        # Only a window that could hold a dot segment pays for the patterns that look for one.
        fast, first, general, root = _link_patterns(self._base, self._root, _maybe_dots(data))
        if not context and window.lstrip(b" \t\r\n")[:1] == b'"':
            pattern, template = first, b"\\g<1>" + root  # the document is one string
        elif any(blank in window for blank in _RARE_BLANKS):
            pattern, template = general, b"\\g<1>" + root
        else:
            # Compact JSON (what APIs send): a pattern led by the literal quote, which the regex
            # engine finds fast, with the opener in a fixed-width lookbehind.
            pattern, template = fast, b'"' + root
        out, count = pattern.subn(template, data)
        self.rewritten += count
        stripped = window.rstrip(b" \t\r\n")
        if stripped:
            self._before = stripped[-1:]
        return out[len(context) :]


# Blanks the fast pattern's one-character lookbehind cannot see past (pretty-printed JSON).
_RARE_BLANKS = (b"  ", b"\n", b"\r", b"\t")


# A dot segment ahead in the same JSON string: ".", "..", "%2e", "\u002e" between separators ("/",
# "\/", or a backslash, which WHATWG URL parsers read as "/"). Such a link may leave the base once a
# client resolves it, so it is not rewritten: it stays as the API wrote it, like any other link off
# the base (:meth:`broker.proxy.links.Rewriter.place` resolves it exactly, for headers).
_DOT = rb"(?:\.|%2[eE]|\\u002[eE])"
_SEP = rb"(?:/|\\/|\\\\)"
_DOT_SEGMENT = _DOT + _DOT + rb"?(?:" + _SEP + rb'|["?#])'
# One path segment of a JSON string: anything but a separator, the string's end, "?" or "#"; JSON escapes
# other than the two separators included. Unrolled (a class, then escape-and-class), so the engine scans in C.
_SEGMENT = rb'[^"?#/\\]*(?:\\[^/\\][^"?#/\\]*)*'
# Segment by segment (lazily): is any segment, the first included, a dot segment?
_NO_DOT_SEGMENT = rb"(?!(?:" + _SEGMENT + _SEP + rb")*?" + _DOT_SEGMENT + rb")"


def _maybe_dots(data: bytes) -> bool:
    """Whether ``data`` holds what every dot segment of a JSON string holds: a separator then a dot
    (``/.``, ``\\.``), or an encoded dot. Single-byte searches first: most windows have no ``%`` or ``\\``."""
    if b"/." in data:
        return True
    if b"\\" in data and (b"\\." in data or b"\\u002e" in data or b"\\u002E" in data):
        return True
    return b"%" in data and (b"%2e" in data or b"%2E" in data)


@functools.lru_cache(maxsize=32)
def _link_patterns(
    base_url: str, root: str, dots: bool
) -> tuple[re.Pattern[bytes], re.Pattern[bytes], re.Pattern[bytes], bytes]:
    """Compiled once per (base, root, dots): fast (compact JSON), first (the document's start), general;
    with ``dots``, each refuses a value with a dot segment (2x slower, so only where one may be)."""
    prefix = _prefix_pattern(base_url)
    rest = rb'[^"\\]*(?:\\.[^"\\]*)*"'
    tail = prefix + (_NO_DOT_SEGMENT if dots else b"") + rb"(?=" + rest + rb"(?!" + _SPACE + rb":))"
    fast = re.compile(rb'"(?:(?<=[:\[,]")|(?<=[:\[,][ \t\r\n]"))' + tail)
    first = re.compile(rb"((?:^|[:\[,])" + _SPACE + rb'")' + tail)
    general = re.compile(rb"([:\[,]" + _SPACE + rb'")' + tail)
    return fast, first, general, root.encode("utf-8").replace(b"\\", b"\\\\")


def _cut(data: bytes) -> tuple[int, bool]:
    """Where the window may end (outside strings, after a known follower), and whether a string is unfinished.

    ``data`` starts outside any string. Without an escaped quote, quote parity says where strings
    are (fast); otherwise a regex walks the strings.
    """
    if b'\\"' not in data:
        last = data.rfind(b'"')
        if last < 0:
            return len(data), False
        if data.count(b'"') % 2:
            return last, True  # the last quote opens an unfinished string
        if data[last + 1 :].strip(b" \t\r\n"):
            return len(data), False
        return data.rfind(b'"', 0, last), False  # the last string's role (key or value) is not known yet
    complete = _COMPLETE.match(data)
    ended = complete.end() if complete else 0
    if complete is not None and complete.group(1) is not None and not data[complete.end(1) : ended].strip(b" \t\r\n"):
        return complete.start(1), ended < len(data)
    return ended, ended < len(data)


# From a point outside any string: non-string bytes and complete strings; group 1 is the last string.
_COMPLETE = re.compile(rb'(?:[^"]+|("[^"\\]*(?:\\.[^"\\]*)*"))*')
# Inside a string: up to (not including) its closing quote or a final lone backslash.
_STRING_PART = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*')
