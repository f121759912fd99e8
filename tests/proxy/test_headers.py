"""Header allow-lists: only the named headers cross the proxy, in either direction."""

from __future__ import annotations

from broker.proxy.headers import request_headers, response_headers


def test_only_allowed_request_headers_are_forwarded() -> None:
    """Accept, Accept-Language, Content-Type, If-*, Prefer; never Authorization, cookies, Host, X-Forwarded-*."""
    received = [
        ("accept", "application/json"),
        ("Accept-Language", "en"),
        ("content-type", "application/json"),
        ("if-none-match", '"e1"'),
        ("if-modified-since", "Sun, 01 Nov 2026 00:00:00 GMT"),
        ("if-match", '"e2"'),
        ("prefer", "return=minimal"),
        ("authorization", "Bearer caller"),
        ("cookie", "a=b"),
        ("host", "broker"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-host", "evil"),
        ("accept-encoding", "gzip"),
        ("x-ms-client-request-id", "1"),
    ]
    assert [name.lower() for name, _ in request_headers(received)] == [
        "accept",
        "accept-language",
        "content-type",
        "if-none-match",
        "if-modified-since",
        "if-match",
        "prefer",
    ]


def test_only_allowed_response_headers_are_passed_back_repeated_ones_kept() -> None:
    """Content-Type, Content-Language, Content-Disposition, ETag, Last-Modified, Retry-After, Link, Location."""
    received = [
        ("Content-Type", "text/csv"),
        ("Set-Cookie", "s=1"),
        ("Link", "<a>; rel=next"),
        ("Link", "<b>; rel=prev"),
        ("Server", "iis"),
        ("ETag", '"1"'),
        ("Content-Encoding", "gzip"),
        ("WWW-Authenticate", "Bearer"),
        ("Retry-After", "5"),
        ("content-disposition", "attachment"),
        ("content-language", "en"),
        ("last-modified", "x"),
        ("location", "y"),
    ]
    assert response_headers(received) == [
        ("content-type", "text/csv"),
        ("link", "<a>; rel=next"),
        ("link", "<b>; rel=prev"),
        ("etag", '"1"'),
        ("retry-after", "5"),
        ("content-disposition", "attachment"),
        ("content-language", "en"),
        ("last-modified", "x"),
        ("location", "y"),
    ]
