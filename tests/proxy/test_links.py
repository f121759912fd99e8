"""Link rewriting: URLs under the API root become the broker's proxy root; everything else is left alone."""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.proxy.links import Rewriter, canonical_path, is_json, public_root, remove_dot_segments
from broker.proxy.stream import REDACTED, JsonLinks, Redactor, token_forms
from tests.conftest import examples

BASE = "https://api.ilevelsolutions.com/v1/"
ROOT = "https://func-broker.azurewebsites.net/api/proxy/ilevel/"


def test_every_json_string_beginning_with_the_base_is_rewritten_at_any_depth() -> None:
    """Values in objects and arrays, nested or not; keys, other hosts and look-alikes stay as they are."""
    body = {
        "links": {"next": BASE + "entities/assets?page%5Bnumber%5D=2", "self": BASE + "entities/assets"},
        "data": [{"id": 1, "href": BASE + "entities/assets/1", "other": "https://example.com/v1/x"}],
        "note": "see " + BASE,
        "lookalike": "https://api.ilevelsolutions.com/v10/x",
        BASE: "key",
        "n": 1.5,
        "t": True,
        "z": None,
    }
    out = json.loads(Rewriter(BASE, ROOT).json_body(json.dumps(body).encode()))
    assert out["links"] == {"next": ROOT + "entities/assets?page%5Bnumber%5D=2", "self": ROOT + "entities/assets"}
    assert out["data"][0]["href"] == ROOT + "entities/assets/1"
    assert out["data"][0]["other"] == "https://example.com/v1/x"
    assert out["note"] == "see " + BASE
    assert out["lookalike"] == "https://api.ilevelsolutions.com/v10/x"
    assert out[BASE] == "key"
    assert (out["n"], out["t"], out["z"]) == (1.5, True, None)


def test_json_with_escaped_slashes_is_rewritten_too() -> None:
    """JSON may write '/' as '\\/'; the value is the same and is rewritten."""
    body = b'{"next": "https:\\/\\/api.ilevelsolutions.com\\/v1\\/entities"}'
    assert json.loads(Rewriter(BASE, ROOT).json_body(body)) == {"next": ROOT + "entities"}


def test_a_body_without_the_base_passes_byte_for_byte() -> None:
    """Nothing to rewrite means the exact bytes received, whitespace and key order included."""
    body = b'{ "b" : 1,\n "a" : "https://example.com/" }'
    assert Rewriter(BASE, ROOT).json_body(body) == body


def test_a_body_labelled_json_that_is_not_passes_unchanged() -> None:
    """Broken JSON is the upstream's business: passed on as received."""
    body = b"not json " + BASE.encode()
    assert Rewriter(BASE, ROOT).json_body(body) == body


def test_link_headers_are_rewritten_inside_their_angle_brackets() -> None:
    """Link: <base...>; rel=next → <root...>; rel=next; targets on other hosts are removed."""
    value = f'<{BASE}entities?page=2>; rel="next", <https://example.com/x>; rel="help, or not"'
    assert Rewriter(BASE, ROOT).link_header(value) == (f'<{ROOT}entities?page=2>; rel="next"', False)
    assert Rewriter(BASE, ROOT).link_header('<https://example.com/x>; rel="help"') == ("", False)


def test_relative_link_targets_are_resolved_against_the_request_then_rewritten() -> None:
    """<?page=2> on /v1/entities is <root>entities?page=2; <../../x> leaves the base and is reported."""
    rewriter = Rewriter(BASE, ROOT)
    request = BASE + "entities"
    assert rewriter.link_header('<?page=2>; rel="next"', request) == (f'<{ROOT}entities?page=2>; rel="next"', False)
    assert rewriter.link_header('<../../x>; rel="next"', request)[1] is True


@pytest.mark.parametrize(
    "link",
    [BASE + "../../api/token/ilevel", BASE + "a/../../x", BASE + "%2e%2e/x", BASE + "a\\..\\..\\x", BASE + ".."],
)
def test_a_link_that_leaves_the_base_after_resolving_dot_segments_is_outside(link: str) -> None:
    """Never <root>../../x, which a client resolves to another broker route: outside in headers, as
    written in bodies (like any link off the base)."""
    rewriter = Rewriter(BASE, ROOT)
    assert rewriter.place(link) == (link, "outside_base")
    assert rewriter.link_header(f'<{link}>; rel="next"')[1] is True
    assert rewriter.location(link, BASE + "e") == (link, "outside_base")
    assert json.loads(rewriter.json_body(json.dumps({"next": link}).encode())) == {"next": link}
    escaped = json.dumps({"next": link}).replace("/", "\\/").replace("..", "\\u002e.").encode()
    assert json.loads(rewriter.json_body(escaped)) == {"next": link}


def test_a_json_escape_in_an_earlier_segment_does_not_hide_a_later_dot_segment() -> None:
    """<base>a\u0041b/../../x in a body: the escape does not stop the search, so the link stays as written."""
    body = b'{"next": "' + BASE.encode() + rb'a\u0041b/../../x"}'
    assert json.loads(Rewriter(BASE, ROOT).json_body(body)) == {"next": BASE + "aAb/../../x"}


def test_a_link_whose_dot_segments_stay_inside_is_rewritten_resolved_in_headers() -> None:
    """<base>a/../b is <root>b; dots in the query are not segments."""
    rewriter = Rewriter(BASE, ROOT)
    assert rewriter.place(BASE + "a/./../b?x=../..") == (ROOT + "b?x=../..", "inside")
    body = json.dumps({"next": BASE + "b?x=../.."}).encode()
    assert json.loads(rewriter.json_body(body)) == {"next": ROOT + "b?x=../.."}


def test_locations_are_resolved_then_rewritten_or_reported_outside() -> None:
    """Absolute and relative Locations under the base are rewritten; others say where they point."""
    rewriter = Rewriter(BASE, ROOT)
    request = BASE + "entities/assets"
    assert rewriter.location(BASE + "jobs/1", request) == (ROOT + "jobs/1", "inside")
    assert rewriter.location("/v1/jobs/1", request) == (ROOT + "jobs/1", "inside")
    assert rewriter.location("assets/2", request) == (ROOT + "entities/assets/2", "inside")
    assert rewriter.location("https://evil.example/v1/", request) == ("https://evil.example/v1/", "elsewhere")
    assert rewriter.location("/v2/x", request) == ("/v2/x", "outside_base")


@pytest.mark.parametrize(
    "written",
    [
        "https://API.ilevelsolutions.com/v1/",
        "HTTPS://api.ILEVELSOLUTIONS.com/v1/",
        "https://api.ilevelsolutions.com:443/v1/",
        "https://API.ilevelsolutions.com:443/v1/",
    ],
)
def test_origins_are_compared_after_normalisation_in_urls_headers_and_bodies(written: str) -> None:
    """Scheme and host in any case, the default port implicit: the same origin, so rewritten everywhere."""
    rewriter = Rewriter(BASE, ROOT)
    assert rewriter.url(written + "entities?x=1") == ROOT + "entities?x=1"
    assert rewriter.link_header(f'<{written}e>; rel="next"') == (f'<{ROOT}e>; rel="next"', False)
    body = json.dumps({"next": written + "entities", "other": "https://api.ilevelsolutions.com:8443/v1/x"})
    assert json.loads(rewriter.json_body(body.encode())) == {
        "next": ROOT + "entities",
        "other": "https://api.ilevelsolutions.com:8443/v1/x",
    }


def test_an_idna_host_matches_its_unicode_form() -> None:
    """IDNA is applied to the host before comparing: the Unicode and punycode forms are one origin."""
    rewriter = Rewriter("https://xn--bcher-kva.example/v1/", ROOT)
    assert rewriter.url("https://bücher.example/v1/a") == ROOT + "a"
    body = json.dumps({"next": "https://BÜCHER.example/v1/a"}, ensure_ascii=False).encode()
    assert json.loads(rewriter.json_body(body)) == {"next": ROOT + "a"}


def test_a_link_on_the_apis_origin_outside_the_base_is_reported() -> None:
    """A Link target on the API's host but outside the base path is flagged (the proxy answers 502)."""
    assert Rewriter(BASE, ROOT).link_header('<https://api.ilevelsolutions.com/v2/x>; rel="next"')[1] is True


def test_json_is_application_json_or_any_plus_json_type() -> None:
    """JSON:API's application/vnd.api+json counts; text/csv and absent types do not."""
    assert is_json("application/json; charset=utf-8")
    assert is_json("application/vnd.api+json")
    assert not is_json("text/csv")
    assert not is_json("application/jsonp")
    assert not is_json(None)


def test_the_public_root_uses_the_host_the_caller_used() -> None:
    """scheme://host/api/proxy/<name>/; a host header that is not a host name is not echoed."""
    assert public_root("https", "func-broker.azurewebsites.net", "ilevel") == ROOT
    assert public_root("http", "127.0.0.1:7071", "ilevel") == "http://127.0.0.1:7071/api/proxy/ilevel/"
    assert public_root("https", "evil.example/x?", "ilevel") is None
    assert public_root("https", "a\r\nb", "ilevel") is None


def reference(node: Any) -> Any:
    """The contract read literally: parse, replace the prefix of every string value, keep keys."""
    if isinstance(node, str):
        return ROOT + node[len(BASE) :] if node.startswith(BASE) else node
    if isinstance(node, list):
        return [reference(item) for item in node]
    if isinstance(node, dict):
        return {key: reference(value) for key, value in node.items()}
    return node


TEXT = st.lists(
    st.sampled_from(
        [BASE, "https://api.ilevelsolutions.com/v1", "x", '"', "\\", ":", ",", "[", "/", " ", "\u00e9", "\n"]
    ),
    max_size=4,
).map("".join)
DOCUMENTS = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=examples(1500), deadline=None)
@given(DOCUMENTS, st.sampled_from([None, 0, 2]), st.booleans(), st.booleans())
def test_rewriting_the_text_equals_rewriting_the_parsed_document(
    document: Any, indent: int | None, ascii_only: bool, escape_slashes: bool
) -> None:
    """Property: whatever the formatting (indent, \\u escapes, \\/ slashes), the result parses to the reference."""
    text = json.dumps(document, indent=indent, ensure_ascii=ascii_only)
    if escape_slashes:
        text = text.replace("/", "\\/")
    out = Rewriter(BASE, ROOT).json_body(text.encode("utf-8"))
    assert json.loads(out) == reference(document)


def test_the_host_is_the_host_header_else_the_request_urls() -> None:
    """Host header first; without one, the scope's server (the Functions bridge takes it from the request URL)."""
    from broker.routes.proxy import _caller_host

    assert _caller_host({"headers": [(b"host", b"func-broker.azurewebsites.net")], "server": ("10.0.0.4", 8080)}) == (
        "func-broker.azurewebsites.net"
    )
    assert _caller_host({"headers": [], "server": ("func-broker.azurewebsites.net", 80)}) == (
        "func-broker.azurewebsites.net"
    )
    assert _caller_host({"headers": [], "server": ("localhost", 7071)}) == "localhost:7071"
    assert _caller_host({"headers": [], "server": None}) == ""


@settings(max_examples=examples(800), deadline=None)
@given(DOCUMENTS, st.sampled_from([None, 2]), st.booleans(), st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_rewriting_in_chunks_equals_rewriting_the_whole_text(
    document: Any, indent: int | None, escape_slashes: bool, sizes: list[int]
) -> None:
    """Property: wherever chunks split the text (a base cut in two, a key's ':' in the next chunk), same result."""
    text = json.dumps(document, indent=indent, ensure_ascii=False)
    if escape_slashes:
        text = text.replace("/", "\\/")
    data = text.encode("utf-8")
    links = JsonLinks(BASE, ROOT)
    out, position, index = [], 0, 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        out.append(links.feed(data[position : position + size]))
        position += size
        index += 1
    out.append(links.finish())
    assert json.loads(b"".join(out)) == reference(document)


def test_a_long_string_is_passed_on_without_holding_it_whole() -> None:
    """A string far longer than any URL streams through; what is held stays bounded."""
    links = JsonLinks(BASE, ROOT)
    body = json.dumps({"blob": "x" * 1_000_000, "next": BASE + "a"}).encode()
    out = [links.feed(body[i : i + 65536]) for i in range(0, len(body), 65536)] + [links.finish()]
    assert max(len(piece) for piece in out) < 200_000
    assert json.loads(b"".join(out))["next"] == ROOT + "a"


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(st.sampled_from(["tok", "enc", "x", "%", "/", "a.b-c_d"]), max_size=20), st.integers(1, 9))
def test_the_token_is_redacted_wherever_the_chunks_split_it(parts: list[str], size: int) -> None:
    """Raw and percent-encoded forms become the marker, split across chunks or not, as in the whole text."""
    token = "ab/c+d=e.f"
    forms = {"tok": token, "enc": quote(token, safe="")}
    data = "".join(forms.get(p, p) for p in parts).encode()
    redactor = Redactor(token_forms(token))
    out = b"".join(redactor.feed(data[i : i + size]) for i in range(0, len(data), size)) + redactor.finish()
    assert token.encode() not in out and quote(token, safe="").encode() not in out
    assert out == Redactor(token_forms(token)).value(data)
    assert out.count(REDACTED) == parts.count("tok") + parts.count("enc")


@pytest.mark.parametrize(
    ("path", "resolved"),
    [
        ("/v1/../../x", "/x"),
        ("/v1/a/./b/../c", "/v1/a/c"),
        ("/v1/a/..", "/v1/"),
        ("/v1/%2e%2E/x", "/x"),
        ("/..", "/"),
        ("a/../b", "b"),
    ],
)
def test_dot_segments_are_removed_as_rfc_3986_says(path: str, resolved: str) -> None:
    """§5.2.4, with an encoded dot read as a dot (as a client that decodes it first would)."""
    assert remove_dot_segments(path) == resolved


@pytest.mark.parametrize(
    "path",
    ["/oauth/token;x", "/oauth/token.", "/oauth/token%20", "/OAUTH/TOKEN", "/oauth/t%6fken", "/oauth/x/../token"],
)
def test_the_canonical_path_ignores_what_lenient_servers_ignore(path: str) -> None:
    """Parameters, trailing dots and spaces, case, percent-encoding and dot segments all fall away."""
    assert canonical_path(path) == "/oauth/token"
    assert canonical_path("/oauth/tokens") != "/oauth/token"


_TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~+/"


def _each_char(token: str, encode: Any) -> str:
    return "".join(encode(char) for char in token)


def _every_way(token: str, mix: list[int]) -> list[str]:
    """The token as echoing servers write it: every form the redactor must catch."""
    bearer = base64.b64encode(f"Bearer {token}".encode()).decode()
    alone = base64.b64encode(token.encode()).decode()
    per_char = [
        lambda c: c,
        lambda c: f"%{ord(c):02X}",
        lambda c: f"%{ord(c):02x}",
        lambda c: f"\\u{ord(c):04X}",
        lambda c: f"\\u{ord(c):04x}",
        lambda c: f"&#{ord(c)};",
        lambda c: f"&#x{ord(c):x};",
        lambda c: f"&#X{ord(c):02X};",
    ]
    return [
        token,
        quote(token, safe=""),
        re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(token, safe="")),
        _each_char(token, lambda c: f"%{ord(c):02x}" if not c.isalnum() else c),
        quote_plus(token, safe=""),
        token.replace("/", "\\/"),
        _each_char(token, lambda c: f"\\u{ord(c):04X}" if c in "+/" else c),
        _each_char(token, lambda c: f"\\u{ord(c):04x}"),
        _each_char(token, lambda c: f"&#{ord(c)};" if c in "+/" else c),
        _each_char(token, lambda c: f"&#x{ord(c):x};"),
        "".join(per_char[mix[i % len(mix)] % len(per_char)](c) for i, c in enumerate(token)),
        bearer,
        bearer.rstrip("="),
        bearer.replace("+", "-").replace("/", "_").rstrip("="),
        quote(bearer, safe=""),
        alone,
        alone.replace("+", "-").replace("/", "_"),
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.text(_TOKEN_CHARS, min_size=16, max_size=300),
    st.lists(st.integers(0, 7), min_size=1, max_size=8),
    st.lists(st.tuples(st.integers(0, 16), st.sampled_from(["", " ", '", "', ":[", "}\n{", "x="])), max_size=12),
    st.integers(1, 97),
)
def test_a_token_encoded_every_way_is_redacted_wherever_the_chunks_split_it(
    token: str, mix: list[int], picks: list[tuple[int, str]], size: int
) -> None:
    """Upper- and lower-case %XX, form encoding, JSON \\u escapes and \\/, HTML numeric references
    (decimal and hex), any mix per character, and the base64 of 'Bearer <token>' or of the token:
    each becomes the marker once, split across chunks or not, and nothing of them is left."""
    forms = _every_way(token, mix)
    chosen = [forms[index % len(forms)] for index, _ in picks]
    data = "".join(form + filler for form, (_, filler) in zip(chosen, picks, strict=True)).encode()
    redactor = Redactor(token_forms(token))
    out = b"".join(redactor.feed(data[i : i + size]) for i in range(0, len(data), size)) + redactor.finish()
    for form in chosen:
        assert form.encode() not in out
    assert out.count(REDACTED) == len(chosen) == redactor.found
    assert out == Redactor(token_forms(token)).value(data)
