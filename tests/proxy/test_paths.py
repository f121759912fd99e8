"""Path safety: a proxied path that could leave the API root is refused, and nothing accepted ever does."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.errors import InvalidRequest
from broker.proxy.paths import forwarded_query, safe_path
from tests.conftest import examples

BASE = "https://api.ilevelsolutions.com/v1/"


@pytest.mark.parametrize(
    "raw",
    [
        b"..",
        b"entities/../../token",
        b"entities/./assets",
        b"%2e%2e/token",
        b"%2E%2e",
        b"%252e%252e/token",
        b".%2e",
        b"..;x/token",
        b"a%2Fb",
        b"a%2f..%2fb",
        b"a%5Cb",
        b"a\\b",
        b"entities//assets",
        b"/entities",
        b"entities/",
        b"",
        b"a%00b",
        b"a%0d%0aX-Injected:1",
        b"a\tb",
        b"https:/evil.example",
        b"javascript:alert(1)",
        b"user@evil.example",
        b"a%40b",
        b"%25252525252e",
    ],
)
def test_paths_that_could_leave_the_base_are_refused(raw: bytes) -> None:
    """Dot segments (plain or encoded), encoded slashes/backslashes, empty segments, controls, schemes, '@'."""
    with pytest.raises(InvalidRequest) as caught:
        safe_path(raw)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_request"


@pytest.mark.parametrize(
    ("raw", "forwarded"),
    [
        (b"entities/assets", "entities/assets"),
        (b"entities/assets%20list", "entities/assets%20list"),
        (b"periodicData", "periodicData"),
        (b"a%2Cb", "a%2Cb"),
        (b"...", "..."),
        (b"a.b/c..d", "a.b/c..d"),
        ("caf\u00e9 x".encode(), "caf%C3%A9%20x"),
        (b"100%", "100%25"),
    ],
)
def test_safe_paths_keep_their_encoding_and_escape_only_what_is_invalid(raw: bytes, forwarded: str) -> None:
    """Percent-escapes stay as received; characters not allowed in a URL path are escaped."""
    assert safe_path(raw) == forwarded


def test_the_query_is_forwarded_unchanged_except_code() -> None:
    """code (the Functions key) is dropped; everything else stays as received, order and encoding kept."""
    raw = b"page%5Bsize%5D=500&code=abc&filter=a%20b&code&x=%2F&page[number]=2"
    assert forwarded_query(raw) == "page%5Bsize%5D=500&filter=a%20b&x=%2F&page%5Bnumber%5D=2"
    assert forwarded_query(b"") == ""


def resolved_path(url: str) -> str:
    """What an upstream that percent-decodes (as often as it likes) and resolves dot segments would serve."""
    path = urlsplit(url).path
    for _ in range(6):
        path = unquote(path)
    return posixpath.normpath(path.replace("\\", "/"))


PIECES = [*"abc.%/\\@:;?#2eEfF5cC0Dd~-_ ", "%2e", "%2f", "%5c", "%25", "\x00", "\u00e9", "..", "http:"]
SEGMENT_TEXT = st.lists(st.sampled_from(PIECES), max_size=10).map("".join)


@settings(max_examples=examples(3000), deadline=None)
@given(st.lists(SEGMENT_TEXT, min_size=1, max_size=5).map("/".join))
def test_no_accepted_path_leaves_the_base(path: str) -> None:
    """Property: for every accepted path, the target stays on the API host, under the API root, after any decoding."""
    try:
        forwarded = safe_path(path.encode("utf-8"))
    except InvalidRequest:
        return
    target = BASE + forwarded
    parsed = httpx.URL(target)
    assert parsed.host == "api.ilevelsolutions.com"
    assert parsed.scheme == "https"
    assert not parsed.userinfo
    assert "?" not in forwarded and "#" not in forwarded
    assert resolved_path(target).startswith("/v1/")
    assert resolved_path(target) != "/v1"
    assert urlsplit(target).netloc == "api.ilevelsolutions.com"


@settings(max_examples=examples(300), deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from([b"a", b"Z", b"9", b"-", b".", b"~", b"=", b"&", b"/", b"?", b":", b"@", b"+", b";"]),
            st.sampled_from([b"%", b"%2", b"%2F", b"%zz", b"%aF", b" ", b"#", b"[", b"\x00", b"\xff", b"\\"]),
            st.binary(max_size=3),
        ),
        max_size=30,
    ).map(b"".join)
)
def test_the_one_pass_escape_agrees_with_the_byte_by_byte_one(data: bytes) -> None:
    """Path and query escaping: the fast whole-string check gives exactly what the per-byte walk gives."""
    from broker.proxy.paths import _PCHAR, _QUERY_SAFE, _escape, _escape_each

    for safe in (_PCHAR, _QUERY_SAFE):
        assert _escape(data, safe) == _escape_each(data, safe)
