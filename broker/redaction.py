"""Every way a secret value can come back from a server that echoes it, as one pattern.

An upstream may reflect what it was sent (its error text, a debug echo, a next link). The
value then arrives encoded by whatever wrote it: percent-encoding in either hex case, form
encoding, JSON's ``\\uXXXX`` escapes (System.Text.Json escapes ``+`` as ``\\u002B`` by
default), ``\\/``, HTML numeric character references (``&#43;``, ``&#x2b;``), or inside a
base64 value such as a Basic or ``Bearer <token>`` header. The pattern matches each value
with every character written in any of those forms, mixed freely, so no encoder's choice of
which characters to escape lets it through. Used by the proxy's body and header redaction
(:mod:`broker.proxy.stream`).

That pattern is slow to build and to run (one alternation per character), so it runs only
where it can match: :class:`SecretForms` first looks for the plain forms in the text as
received and with its escapes decoded (two fast literal searches), and builds and runs the
full pattern only when one is there.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

# Leading zeros an HTML numeric reference may carry and still be matched (``&#043;``).
MAX_ENTITY_ZEROS = 2
# The base64 alphabets' two differing characters: standard and URL-safe (RFC 4648 §4 and §5).
_BASE64_TWINS = {"+": "-", "/": "_"}


def _hex(number: int, width: int = 1) -> str:
    """``number`` in hex, each letter digit matched in either case."""
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{number:0{width}x}")


@functools.lru_cache(maxsize=1024)
def _char(char: str) -> tuple[str, int]:
    """The alternatives for one character, and the longest of them in UTF-8 bytes."""
    code = ord(char)
    utf8 = char.encode("utf-8")
    zeros = f"0{{0,{MAX_ENTITY_ZEROS}}}"
    forms = [
        re.escape(char),
        "".join("%" + _hex(byte, 2) for byte in utf8),
        f"&#{zeros}{code};?",
        f"&#[xX]{zeros}{_hex(code)};?",
    ]
    longest = [len(utf8), 3 * len(utf8), 3 + MAX_ENTITY_ZEROS + len(str(code)), 4 + MAX_ENTITY_ZEROS + len(f"{code:x}")]
    if code < 0x10000:
        forms.append(r"\\u" + _hex(code, 4))
        longest.append(6)
    if char == "/":
        forms.append(r"\\/")
    if char == " ":
        forms.append(r"\+")
    return "(?:" + "|".join(forms) + ")", max(longest)


def _text(text: str, twins: dict[str, str] | None = None) -> tuple[str, int]:
    parts: list[str] = []
    size = 0
    for char in text:
        pattern, longest = _char(char)
        if twins and char in twins:
            twin, twin_longest = _char(twins[char])
            pattern, longest = f"(?:{pattern}|{twin})", max(longest, twin_longest)
        parts.append(pattern)
        size += longest
    return "".join(parts), size


def _base64(plain: str) -> tuple[str, int]:
    """``plain``'s base64, either alphabet, padded or not, each character in any form."""
    encoded = base64.b64encode(plain.encode("utf-8")).decode("ascii")
    body = encoded.rstrip("=")
    pattern, size = _text(body, _BASE64_TWINS)
    padding, padding_size = _char("=")
    missing = len(encoded) - len(body)
    if missing:
        pattern += f"(?:{padding}){{0,{missing}}}"
        size += missing * padding_size
    return pattern, size


def secret_forms(values: Iterable[str], *, base64_of: Iterable[str] = ()) -> list[tuple[str, int]]:
    """One regex source per value (any of its forms) and per base64 plain text, longest first, each
    with the longest match it can make in bytes (what a stream must hold back across chunks).

    Kept apart rather than joined: each source starts with a set of literal characters, which lets
    the regex engine skip to candidates; one alternation of them scans every byte (20 times slower).
    """
    alternatives = [_text(value) for value in set(values) if value]
    alternatives += [_base64(plain) for plain in set(base64_of) if plain]
    # Longest first, so a form inside another never splits it.
    return sorted(alternatives, key=lambda item: item[1], reverse=True)


def secret_pattern(values: Iterable[str], *, base64_of: Iterable[str] = ()) -> str:
    """:func:`secret_forms` as one regex source, for short texts (an error message)."""
    return "|".join(source for source, _ in secret_forms(values, base64_of=base64_of)) or r"(?!)"


def _anchor(text: str) -> bytes:
    """The longest piece of ``text`` that both base64 alphabets write alike: in every plain form."""
    return max(re.split(r"[+/]", text), key=len).encode("utf-8")


def _escapes(chars: set[str]) -> tuple[tuple[bytes, re.Pattern[bytes]], ...]:
    """Escapes that may stand for one of ``chars``: only where one is is decoding worth its cost.

    One pattern per leading literal, each behind a plain search for that literal (memchr speed): most
    bodies hold no ``%``, ``\\u`` or ``&#`` at all.
    """
    by_high: dict[int, set[str]] = {}
    for char in chars:
        if char.isascii():
            low = f"{ord(char) & 0xF:x}"
            by_high.setdefault(ord(char) >> 4, set()).update({low, low.upper()})
    # Grouped by the high digit: one short branch per digit, not one per character.
    codes = "|".join(f"{high}[{''.join(sorted(lows))}]" for high, lows in sorted(by_high.items())) or "(?!)"
    sources = [f"%(?:{codes})", f"\\\\u00(?:{codes})", "&#"]
    if "/" in chars:
        sources.append(r"\\/")
    if not all(c.isascii() for c in chars):
        sources += ["%[89a-fA-F][0-9a-fA-F]", r"\\u(?!00)"]
    literals = {"%": b"%", "\\": b"\\", "&": b"&#"}
    return tuple((literals[source[0]], re.compile(source.encode("ascii"))) for source in sources)


_HTML = re.compile(rb"&#(?:[xX]0*([0-9A-Fa-f]{1,6})|0*([0-9]{1,7}));?")
_JSON = re.compile(rb"\\u([0-9A-Fa-f]{4})")


def _char_bytes(code: int) -> bytes:
    return chr(code).encode("utf-8", "replace") if code <= 0x10FFFF else b"?"


def decoded(data: bytes) -> bytes:
    """``data`` with HTML numeric references, JSON ``\\uXXXX`` and ``\\/`` escapes and percent-escapes
    decoded (one layer each); ``data`` itself when it has none."""
    if b"&#" in data:
        data = _HTML.sub(lambda m: _char_bytes(int(m[1], 16) if m[1] else int(m[2])), data)
    if b"\\" in data:
        data = _JSON.sub(lambda m: _char_bytes(int(m[1], 16)), data.replace(b"\\/", b"/"))
    if b"%" in data:
        data = unquote_to_bytes(data)
    return data


class SecretForms:
    """The forms of some secret values, for bytes: :meth:`spans` finds them, ``keep`` is how many
    bytes a stream must hold back so that a form split across chunks is still seen whole."""

    def __init__(self, values: Iterable[str], *, base64_of: Iterable[str] = (), ignore_case: bool = False) -> None:
        values, base64_of = tuple(v for v in values if v), tuple(p for p in base64_of if p)
        self._forms = secret_forms(values, base64_of=base64_of)
        self._ignore_case = ignore_case
        encoded = [base64.b64encode(plain.encode("utf-8")).decode("ascii").rstrip("=") for plain in base64_of]
        self._anchors = tuple({_anchor(text.lower() if ignore_case else text) for text in (*values, *encoded)})
        self._escapes = _escapes(set("".join((*values, *encoded))) | ({"-", "_", "="} if encoded else set()))
        self.keep = max((size for _, size in self._forms), default=1) - 1
        # Without an escape in sight, a form is written plainly so far: no longer than its plain text, plus
        # base64 padding that may still come escaped ("%3D").
        plain = [len(v.encode("utf-8")) for v in values] + [len(text) + 2 * _char("=")[1] for text in encoded]
        self.plain_keep = min(self.keep, max(plain, default=1) - 1)

    def __repr__(self) -> str:
        return f"SecretForms(<{len(self._forms)} forms>)"

    def _anywhere(self, data: bytes) -> bool:
        if self._ignore_case:
            data = data.lower()
        return any(anchor in data for anchor in self._anchors)

    def spans(self, data: bytes) -> list[tuple[int, int]]:
        """Where the forms are in ``data``, in order, without overlaps (the longest at a start wins)."""
        return self.scan(data)[0]

    def scan(self, data: bytes) -> tuple[list[tuple[int, int]], int]:
        """:meth:`spans`, and how much of ``data``'s end a stream must hold back: ``keep`` where an escape
        of a form's character is in ``data``, else ``plain_keep`` (a form split at the end is plain so far).

        A form with no escape holds a plain anchor; one with escapes holds an escape of one of its
        characters and, decoded, the anchor. Only then are the full patterns run.
        """
        escaped = any(literal in data and escape.search(data) for literal, escape in self._escapes)
        hold = self.keep if escaped else self.plain_keep
        if not self._anywhere(data) and not (escaped and self._anywhere(decoded(data))):
            return [], hold
        patterns = _compiled(tuple(self._forms), self._ignore_case)
        found = sorted(
            ((m.start(), m.end()) for pattern in patterns for m in pattern.finditer(data)),
            key=lambda span: (span[0], -span[1]),
        )
        kept: list[tuple[int, int]] = []
        for start, end in found:
            if not kept or start >= kept[-1][1]:
                kept.append((start, end))
        return kept, hold


@functools.lru_cache(maxsize=8)
def _compiled(forms: tuple[tuple[str, int], ...], ignore_case: bool) -> tuple[re.Pattern[bytes], ...]:
    """The full patterns, built the first time a form is actually seen (about 1 ms per character)."""
    flags = re.IGNORECASE if ignore_case else 0
    return tuple(re.compile(source.encode("utf-8"), flags) for source, _ in forms)
