"""Header allow-lists: what crosses the proxy in each direction. Everything else stays behind.

Allow-lists rather than deny-lists, so a header nobody thought about (a cookie, a
forwarding header, a hop-by-hop header, an upstream's internal diagnostics) never crosses.
"""

from __future__ import annotations

from collections.abc import Iterable

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
