"""Header allow-lists: what crosses the proxy in each direction. Everything else stays behind.

Allow-lists rather than deny-lists, so a header nobody thought about (a cookie, a
forwarding header, a hop-by-hop header, an upstream's internal diagnostics) never crosses.
:func:`passed_back` is the whole response-header pass, in one place: allow-list, redaction
(:mod:`broker.proxy.stream`), the UTF-8 rule, and ``Link``/``Location`` rewriting
(:mod:`broker.proxy.links`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from broker.errors import InvalidUpstreamResponse
from broker.proxy.links import Rewriter
from broker.proxy.stream import Redactor

log = logging.getLogger(__name__)

# Caller → upstream. The caller's Authorization (its Entra token for the broker), cookies,
# Host and X-Forwarded-* are not here on purpose.
REQUEST_HEADERS = frozenset(
    {"accept", "accept-language", "content-type", "if-none-match", "if-modified-since", "if-match", "prefer"}
)
# Upstream → caller, besides the broker's own X-Request-Id and Cache-Control: no-store.
RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "content-language",
        "content-disposition",
        "etag",
        "last-modified",
        "retry-after",
        "link",
        "location",
    }
)


def request_headers(received: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The caller's headers that are forwarded upstream, in order, repeated ones kept."""
    return [(name, value) for name, value in received if name.lower() in REQUEST_HEADERS]


def response_headers(received: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's headers that are passed back to the caller, in order, repeated ones kept."""
    return [(name.lower(), value) for name, value in received if name.lower() in RESPONSE_HEADERS]


def passed_back(
    raw: Iterable[tuple[bytes, bytes]],
    *,
    status: int,
    request_url: str,
    rewriter: Rewriter,
    redactor: Redactor,
    host: str,
    base_setting: str,
) -> list[tuple[bytes, bytes]]:
    """The upstream's raw headers as the caller gets them: allowed ones only, byte for byte (latin-1
    round-trips every byte), the broker's token redacted, ``Link`` and ``Location`` rewritten to the
    proxy root. A value that is not UTF-8 is dropped (the Functions bridge decodes UTF-8).

    Raises :class:`InvalidUpstreamResponse` (502) for a ``Link`` or ``Location`` on the API's origin
    outside ``base_setting``, and for a redirect to another host.
    """
    allowed = response_headers((name.decode("latin-1"), value.decode("latin-1")) for name, value in raw)
    headers: list[tuple[bytes, bytes]] = []
    for name, text in allowed:
        value = redactor.value(text.encode("latin-1"))
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            log.warning("proxy: %s sent a %s header that is not UTF-8; dropped", host, name)
            continue
        if name == "link":
            link, outside = rewriter.link_header(value.decode("latin-1"), request_url)
            if outside:
                raise _outside(host, "a Link header", status, base_setting)
            if not link:
                continue
            value = link.encode("latin-1")
        elif name == "location":
            location, where = rewriter.location(value.decode("latin-1"), request_url)
            if where == "outside_base":
                raise _outside(host, "a Location", status, base_setting)
            if where == "elsewhere" and 300 <= status < 400:
                raise InvalidUpstreamResponse(
                    f"{host} answered {status} with a redirect to another host; the broker follows no "
                    "redirects and passes none that would leave the API root."
                )
            value = location.encode("latin-1")
        headers.append((name.encode("latin-1"), value))
    return headers


def _outside(host: str, what: str, status: int, base_setting: str) -> InvalidUpstreamResponse:
    return InvalidUpstreamResponse(
        f"{host} answered {status} with {what} on its own host but outside {base_setting}; the broker "
        "passes no link out of the API root."
    )
