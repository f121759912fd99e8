"""Link rewriting: URLs under the API root become the broker's proxy root; everything else is left alone."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.proxy.links import Rewriter, is_json, public_root

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
    """Link: <base...>; rel=next → <root...>; rel=next, other targets untouched."""
    value = f'<{BASE}entities?page=2>; rel="next", <https://example.com/x>; rel="help"'
    assert (
        Rewriter(BASE, ROOT).link_header(value)
        == f'<{ROOT}entities?page=2>; rel="next", <https://example.com/x>; rel="help"'
    )


def test_locations_are_resolved_then_rewritten_or_reported_outside() -> None:
    """Absolute and relative Locations under the base are rewritten; others are reported as outside."""
    rewriter = Rewriter(BASE, ROOT)
    request = BASE + "entities/assets"
    assert rewriter.location(BASE + "jobs/1", request) == (ROOT + "jobs/1", True)
    assert rewriter.location("/v1/jobs/1", request) == (ROOT + "jobs/1", True)
    assert rewriter.location("assets/2", request) == (ROOT + "entities/assets/2", True)
    assert rewriter.location("https://evil.example/v1/", request) == ("https://evil.example/v1/", False)
    assert rewriter.location("/v2/x", request) == ("/v2/x", False)


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


@settings(max_examples=1500, deadline=None)
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
    from broker.http import _caller_host

    assert _caller_host({"headers": [(b"host", b"func-broker.azurewebsites.net")], "server": ("10.0.0.4", 8080)}) == (
        "func-broker.azurewebsites.net"
    )
    assert _caller_host({"headers": [], "server": ("func-broker.azurewebsites.net", 80)}) == (
        "func-broker.azurewebsites.net"
    )
    assert _caller_host({"headers": [], "server": ("localhost", 7071)}) == "localhost:7071"
    assert _caller_host({"headers": [], "server": None}) == ""
