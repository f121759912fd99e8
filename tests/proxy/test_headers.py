"""Header allow-lists: only the named headers cross the proxy, in either direction."""

from __future__ import annotations

import pytest

from broker.errors import InvalidUpstreamResponse
from broker.proxy.headers import passed_back, request_headers, response_headers
from broker.proxy.links import Rewriter
from broker.proxy.stream import REDACTED, Redactor, token_forms


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


def test_the_response_header_pass_filters_redacts_and_rewrites_in_one_go() -> None:
    """Allowed headers only, raw bytes kept, the token redacted, Link and Location rewritten to the proxy
    root, a Link target on another host removed, a value that is not UTF-8 dropped."""
    base, root, token = "https://api.example.com/v1/", "https://broker.example/api/proxy/ilevel/", "tok-" + "x" * 20
    raw = [
        (b"Content-Type", b"application/json"),
        (b"Set-Cookie", b"s=1"),
        (b"Content-Disposition", 'attachment; filename="\u20ac.csv"'.encode()),
        (b"Location", f"{base}jobs/1?t={token}".encode()),
        (b"Link", f'<{base}e?page=2>; rel="next", <https://elsewhere.example/x>; rel="help"'.encode()),
        (b"Link", b'<https://elsewhere.example/only>; rel="help"'),
        (b"ETag", b'"\xff"'),
    ]
    headers = passed_back(
        raw,
        status=200,
        request_url=base + "e",
        rewriter=Rewriter(base, root),
        redactor=Redactor(token_forms(token)),
        host="api.example.com",
        base_setting="BROKER_ILEVEL_API_BASE_URL",
    )
    assert headers == [
        (b"content-type", b"application/json"),
        (b"content-disposition", 'attachment; filename="\u20ac.csv"'.encode()),
        (b"location", f"{root}jobs/1?t=".encode() + REDACTED),
        (b"link", f'<{root}e?page=2>; rel="next"'.encode()),
    ]


@pytest.mark.parametrize(
    ("name", "value", "status"),
    [
        ("Link", '<https://api.example.com/v2/x>; rel="next"', 200),
        ("Location", "https://api.example.com/v1/../../api/token/ilevel", 201),
        ("Location", "https://elsewhere.example/v1/", 302),
    ],
)
def test_the_response_header_pass_refuses_links_out_of_the_api_root(name: str, value: str, status: int) -> None:
    """On the API's origin outside the base (after dot segments), or a redirect to another host: 502."""
    with pytest.raises(InvalidUpstreamResponse):
        passed_back(
            [(name.encode(), value.encode())],
            status=status,
            request_url="https://api.example.com/v1/e",
            rewriter=Rewriter("https://api.example.com/v1/", "https://b.example/api/proxy/ilevel/"),
            redactor=Redactor(token_forms("tok-" + "y" * 20)),
            host="api.example.com",
            base_setting="BROKER_ILEVEL_API_BASE_URL",
        )
