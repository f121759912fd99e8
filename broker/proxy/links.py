"""Link rewriting, so that "next" links and ADF's ``AbsoluteUrl`` pagination keep going through the broker.

Every JSON string value that begins with the provider's ``API_BASE_URL`` gets that prefix
replaced by the broker's public proxy root for the provider; ``Link`` and ``Location``
headers are rewritten the same way. Bodies that are not JSON pass through byte for byte.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import unquote, urljoin, urlsplit

# One link-value of a Link header (RFC 8288 §3): the target, then its parameters up to the next
# comma outside a quoted string.
_LINK_VALUE = re.compile(r'<([^>]*)>((?:[^,"<]|"(?:[^"\\]|\\.)*")*)')
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")


def is_json(content_type: str | None) -> bool:
    """``application/json`` or any ``+json`` type (JSON:API is ``application/vnd.api+json``)."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def public_root(scheme: str, host: str, provider: str) -> str | None:
    """``<scheme>://<host the caller used>/api/proxy/<provider>/``, or None for a host not worth echoing."""
    if not _HOST.fullmatch(host) or scheme not in ("http", "https"):
        return None
    return f"{scheme}://{host}/api/proxy/{provider}/"


DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` compared as browsers do: case-insensitive, IDNA host, default port implicit."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in DEFAULT_PORTS or not host:
        return None
    try:
        ascii_host = host.encode("idna").decode("ascii").lower() if not host.isascii() else host.lower()
    except UnicodeError:
        return None
    return scheme, ascii_host, port if port is not None else DEFAULT_PORTS[scheme]


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, with ``%2e`` read as ``.`` (a client may decode it first; WHATWG URLs do).

    ``/v1/../../x`` → ``/x``. The segments keep their own spelling; only whole dot segments go.
    """
    absolute = path.startswith("/")
    segments = (path[1:] if absolute else path).split("/")
    out: list[str] = []
    for index, segment in enumerate(segments):
        dots = unquote(segment)
        if dots in (".", ".."):
            if dots == ".." and out:
                out.pop()
            if index == len(segments) - 1:
                out.append("")
        else:
            out.append(segment)
    return ("/" if absolute else "") + "/".join(out)


# Decoding rounds for the canonical path: as many as paths.safe_path checks.
_CANONICAL_ROUNDS = 4


def canonical_path(path: str) -> str:
    """The path as the most lenient server would route it, to compare two URLs for the same resource.

    Fully percent-decoded; from each segment, ``;`` parameters and trailing dots and spaces
    removed (Tomcat, IIS and Windows file names ignore them); dot segments removed (RFC 3986
    §5.2.4); empty segments, a final ``/`` and case ignored.
    """
    for _ in range(_CANONICAL_ROUNDS):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    segments: list[str] = []
    for segment in path.replace("\\", "/").split("/"):
        segment = segment.split(";", 1)[0]
        if segment not in (".", ".."):
            segment = segment.rstrip(". ")
        if segment:
            segments.append(segment)
    return remove_dot_segments("/" + "/".join(segments)).rstrip("/").lower()


Place = Literal["inside", "outside_base", "elsewhere"]


class Rewriter:
    """Replaces the API root by the broker's proxy root in URLs, headers and JSON bodies.

    A URL is *inside* when its origin is the API's (after normalisation) and its path lies under
    the base path; *outside_base* when the origin is the API's but the path is not; else
    *elsewhere*, which is data and left alone.
    """

    def __init__(self, base_url: str, root: str) -> None:
        self.base = base_url
        self.root = root
        self._origin = origin(base_url)
        self._base_path = urlsplit(base_url).path or "/"

    def place(self, value: str) -> tuple[str, Place]:
        """The URL rewritten to the broker's root when inside, and where it points.

        Dot segments are resolved first: ``<base>../../x`` is outside the base, never ``<root>../../x``
        (which a client would resolve to another of the broker's routes).
        """
        if self._origin is None or origin(value) != self._origin:
            return value, "elsewhere"
        parts = urlsplit(value)
        path = remove_dot_segments(parts.path.replace("\\", "/"))
        if not path.startswith(self._base_path):
            return value, "outside_base"
        rest = path[len(self._base_path) :]
        rest += f"?{parts.query}" if parts.query else ""
        rest += f"#{parts.fragment}" if parts.fragment else ""
        return self.root + rest, "inside"

    def url(self, value: str) -> str:
        return self.place(value)[0]

    def link_header(self, value: str, request_url: str | None = None) -> tuple[str, bool]:
        """The rewritten Link header, and whether any target is on the API's origin outside the base.

        Targets are resolved against ``request_url`` (relative ones too); a target on another host
        is removed, like a Location there: the broker passes no link that leads off the API. An
        empty result means no Link header at all.
        """
        outside = False
        kept: list[str] = []
        for match in _LINK_VALUE.finditer(value):
            target = urljoin(request_url, match.group(1)) if request_url else match.group(1)
            url, where = self.place(target)
            outside = outside or where == "outside_base"
            if where == "inside":
                kept.append(f"<{url}>{match.group(2).rstrip()}")
        return ", ".join(kept), outside

    def location(self, value: str, request_url: str) -> tuple[str, Place]:
        """The rewritten Location (relative ones resolved first) and where it points."""
        absolute = urljoin(request_url, value)
        url, where = self.place(absolute)
        return (url if where == "inside" else value), where

    def json_body(self, body: bytes) -> bytes:
        """The whole body at once (tests and small bodies): :class:`broker.proxy.stream.JsonLinks` does the work."""
        from broker.proxy.stream import JsonLinks

        links = JsonLinks(self.base, self.root)
        return links.feed(body) + links.finish()
