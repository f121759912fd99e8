"""The proxy route over HTTP, on both hosts (uvicorn and the Functions entry point), against the stand-ins.

The contract: README, ``/api/proxy/{provider}/{path}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re

import httpx
import pytest

from broker import __version__
from broker.routes.proxy import ResponseAborted
from broker.standin.dataapi import DataApi, Reply, assets_csv, pattern_bytes
from tests.conftest import Stack
from tests.hosts import FUNCTIONS_BASE_URL
from tests.proxy.conftest import ProxyApi, Rig
from tests.worker.driver import FunctionsTransport

ASSETS = "/api/proxy/ilevel/entities/assets"
BROKER_ERROR = "X-Broker-Error"


def broker_error(response: httpx.Response, status: int, code: str) -> None:
    """The broker's own error: its status, its JSON body, and X-Broker-Error naming the code."""
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert response.headers.get(BROKER_ERROR) == code, (response.status_code, dict(response.headers))
    assert response.headers["X-Request-Id"]


# --- forwarding and rewriting ------------------------------------------------------------


async def test_json_links_are_rewritten_to_the_broker_root_the_caller_used(
    proxy: ProxyApi, stack: Stack, data_api: DataApi
) -> None:
    """Every JSON string under API_BASE_URL, and the Link header, now points at <caller's host>/api/proxy/ilevel/."""
    response = await proxy.get(ASSETS + "?page%5Bsize%5D=5", token=stack.caller())
    assert response.status_code == 200
    root = str(proxy.client.base_url).rstrip("/") + "/api/proxy/ilevel/"
    body = response.json()
    assert [item["id"] for item in body["data"]] == ["A0001", "A0002", "A0003", "A0004", "A0005"]
    assert body["links"]["next"] == root + "entities/assets?page%5Bsize%5D=5&page%5Bnumber%5D=2"
    assert body["links"]["self"].startswith(root)
    assert data_api.base_url not in response.text
    assert response.headers["Link"] == f'<{body["links"]["next"]}>; rel="next"'
    assert response.headers["Content-Type"] == "application/vnd.api+json"
    assert response.headers["Cache-Control"] == "no-store"


async def test_a_csv_download_passes_byte_for_byte_with_its_allowed_headers(proxy: ProxyApi, stack: Stack) -> None:
    """Non-JSON bodies are not touched: BOM, CRLF and all; Content-Disposition and ETag come along."""
    response = await proxy.get("/api/proxy/ilevel/exports/assets.csv", token=stack.caller())
    assert response.status_code == 200
    assert response.content == assets_csv()
    assert response.headers["Content-Type"].startswith("text/csv")
    assert response.headers["Content-Disposition"] == 'attachment; filename="assets.csv"'
    assert response.headers["ETag"] == '"assets-v1"'
    assert BROKER_ERROR not in response.headers


async def test_a_large_body_passes_byte_for_byte(proxy: ProxyApi, stack: Stack) -> None:
    """3 MiB of every byte value arrive exactly as sent."""
    size = 3 * 1024 * 1024 + 7
    response = await proxy.get(f"/api/proxy/ilevel/large?bytes={size}", token=stack.caller())
    assert response.status_code == 200
    assert response.content == pattern_bytes(size)


async def test_the_target_is_the_api_root_plus_the_path_with_the_query_minus_code(
    proxy: ProxyApi, stack: Stack, data_api: DataApi
) -> None:
    """Percent-encoding is kept as received; only the Functions key 'code' is dropped from the query."""
    response = await proxy.get(ASSETS + "?page%5Bsize%5D=2&code=functions-key&page%5Bnumber%5D=3", token=stack.caller())
    assert response.status_code == 200
    seen = data_api.authorized_requests[-1]
    assert seen.raw_path == "/v1/entities/assets"
    assert seen.query == "page%5Bsize%5D=2&page%5Bnumber%5D=3"
    assert [item["id"] for item in response.json()["data"]] == ["A0005", "A0006"]


async def test_head_and_post_are_forwarded_and_other_methods_refused(
    proxy: ProxyApi, stack: Stack, data_api: DataApi
) -> None:
    """HEAD gets the headers without a body; POST carries its body and Content-Type; PUT is a 405."""
    caller = stack.caller()
    head = await proxy.get(ASSETS, token=caller, method="HEAD")
    assert head.status_code == 200
    assert head.content == b""
    body = json.dumps({"filter": "x" * 1000}).encode()
    post = await proxy.get(
        "/api/proxy/ilevel/echo",
        token=caller,
        method="POST",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert post.status_code == 200
    assert post.json()["method"] == "POST"
    assert post.json()["body_bytes"] == len(body)
    assert post.json()["content_type"] == "application/json"
    before = len(data_api.requests)
    put = await proxy.get("/api/proxy/ilevel/echo", token=caller, method="PUT", content=b"{}")
    assert put.status_code == 405
    assert put.headers[BROKER_ERROR] == "method_not_allowed"
    assert len(data_api.requests) == before


# --- headers ---------------------------------------------------------------------------


async def test_only_allowed_request_headers_reach_the_api_plus_the_brokers_own(
    proxy: ProxyApi, stack: Stack, data_api: DataApi
) -> None:
    """Caller Authorization, cookies and X-Forwarded-* stay behind; the iLevel token, User-Agent, request id go."""
    caller = stack.caller()
    response = await proxy.get(
        "/api/proxy/ilevel/echo",
        token=caller,
        headers={
            "Accept": "application/json",
            "Accept-Language": "en",
            "If-None-Match": '"x"',
            "Prefer": "return=minimal",
            "Cookie": "session=caller",
            "X-Forwarded-For": "10.1.2.3",
            "X-Forwarded-Host": "evil.example",
            "X-Custom": "no",
            "X-Request-Id": "req-0123456789abcdef",
        },
    )
    assert response.status_code == 200
    seen = data_api.authorized_requests[-1]
    assert seen.headers["authorization"] == f"Bearer {stack.tokens.issued_tokens[-1]}"
    assert caller not in json.dumps(seen.headers)
    assert seen.headers["user-agent"] == f"ilevel-token-broker/{__version__}"
    assert seen.headers["x-request-id"] == response.headers["X-Request-Id"] == "req-0123456789abcdef"
    assert (seen.headers["accept"], seen.headers["accept-language"]) == ("application/json", "en")
    assert (seen.headers["if-none-match"], seen.headers["prefer"]) == ('"x"', "return=minimal")
    for name in ("cookie", "x-forwarded-for", "x-forwarded-host", "x-custom"):
        assert name not in seen.headers
    assert seen.headers["host"] == data_api.base_url.split("/")[2]


async def test_only_allowed_response_headers_come_back(proxy: ProxyApi, stack: Stack, data_api: DataApi) -> None:
    """Set-Cookie, Server, WWW-Authenticate and the like never reach the caller; the listed ones do."""
    data_api.script(
        Reply(
            status=429,
            json={"errors": [{"status": "429"}]},
            headers={
                "Retry-After": "7",
                "Set-Cookie": "s=1",
                "Server": "ilevel-internal",
                "X-Internal-Trace": "abc",
                "WWW-Authenticate": 'Bearer realm="ilevel"',
                "Content-Language": "en",
                "Last-Modified": "Sun, 01 Nov 2026 00:00:00 GMT",
            },
        )
    )
    response = await proxy.get(ASSETS, token=stack.caller())
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.headers["Content-Language"] == "en"
    assert response.headers["Last-Modified"] == "Sun, 01 Nov 2026 00:00:00 GMT"
    for name in ("Set-Cookie", "X-Internal-Trace", "WWW-Authenticate", BROKER_ERROR):
        assert name not in response.headers
    assert response.headers.get("Server", "") != "ilevel-internal"
    assert response.json() == {"errors": [{"status": "429"}]}


async def test_cookies_set_by_the_api_are_never_kept_for_later_requests(
    proxy: ProxyApi, stack: Stack, data_api: DataApi
) -> None:
    """The proxy's HTTP client stores no cookie: what one caller's answer set never rides along for the next."""
    caller = stack.caller()
    first = await proxy.get("/api/proxy/ilevel/cookie", token=caller)
    second = await proxy.get("/api/proxy/ilevel/cookie", token=caller)
    assert first.status_code == second.status_code == 200
    assert "set-cookie" not in first.headers
    assert second.json() == {"cookie": None}
    assert "cookie" not in data_api.authorized_requests[-1].headers


# --- the iLevel token ----------------------------------------------------------------------


async def test_a_token_rejected_upstream_is_renewed_once_and_the_request_retried(
    proxy: ProxyApi, stack: Stack, data_api: DataApi
) -> None:
    """401 from the API: one fresh token (a forced refresh), one retry, 200 to the caller."""
    caller = stack.caller()
    assert (await proxy.get(ASSETS, token=caller)).status_code == 200
    data_api.revoke_issued()
    response = await proxy.get(ASSETS, token=caller)
    assert response.status_code == 200
    assert stack.tokens.request_count == 2
    assert [r.status for r in data_api.requests] == [200, 401, 200]


async def test_concurrent_401s_share_one_renewed_token(proxy: ProxyApi, stack: Stack, data_api: DataApi) -> None:
    """Ten requests rejected at once: they join one fetch, so one new token request, and all get 200."""
    caller = stack.caller()
    assert (await proxy.get(ASSETS, token=caller)).status_code == 200
    data_api.revoke_issued()
    responses = await asyncio.gather(*(proxy.get(ASSETS, token=caller) for _ in range(10)))
    assert [r.status_code for r in responses] == [200] * 10
    assert stack.tokens.request_count == 2


async def test_a_second_401_is_passed_through_and_the_forced_refresh_keeps_its_30_s_limit(
    proxy: ProxyApi, stack: Stack, data_api: DataApi
) -> None:
    """Two 401s: the upstream's 401 reaches the caller as it is; within 30 s no further forced refresh."""
    caller = stack.caller()
    data_api.script(*[Reply(status=401, json={"errors": [{"status": "401"}]})] * 3)
    first = await proxy.get(ASSETS, token=caller)
    assert first.status_code == 401
    assert BROKER_ERROR not in first.headers
    assert first.json() == {"errors": [{"status": "401"}]}
    assert stack.tokens.request_count == 2
    second = await proxy.get(ASSETS, token=caller)
    assert second.status_code == 401
    assert stack.tokens.request_count == 2
    assert len(data_api.requests) == 3


async def test_concurrent_requests_on_a_cold_cache_make_one_token_request(
    proxy: ProxyApi, stack: Stack, data_api: DataApi
) -> None:
    """Single-flight is shared with the token route: 30 proxied requests at once, 1 token request."""
    caller = stack.caller()
    responses = await asyncio.gather(*(proxy.get(ASSETS, token=caller) for _ in range(30)))
    assert [r.status_code for r in responses] == [200] * 30
    assert stack.tokens.request_count == 1


async def test_token_failures_are_the_token_routes_errors_with_x_broker_error(proxy: ProxyApi, stack: Stack) -> None:
    """Credentials refused at the token endpoint: 502 invalid_client, as on the token route, plus X-Broker-Error."""
    stack.tokens.revoke(stack.client_id, stack.client_secret)
    response = await proxy.get(ASSETS, token=stack.caller())
    broker_error(response, 502, "invalid_client")


# --- limits ------------------------------------------------------------------------------


async def test_a_post_body_over_1_mib_is_refused_with_413_and_nothing_sent(
    proxy: ProxyApi, stack: Stack, data_api: DataApi
) -> None:
    """1 MiB + 1 byte → 413 payload_too_large; exactly 1 MiB is forwarded."""
    caller = stack.caller()
    over = await proxy.get("/api/proxy/ilevel/echo", token=caller, method="POST", content=b"x" * (1024 * 1024 + 1))
    broker_error(over, 413, "payload_too_large")
    assert data_api.requests == []
    exact = await proxy.get("/api/proxy/ilevel/echo", token=caller, method="POST", content=b"x" * (1024 * 1024))
    assert exact.status_code == 200
    assert exact.json()["body_bytes"] == 1024 * 1024


async def test_a_declared_length_over_the_cap_is_a_502_before_anything_is_sent(rig: Rig) -> None:
    """BROKER_PROXY_MAX_RESPONSE_MB=1: a Content-Length of 1 MiB + 1 is refused; exactly 1 MiB passes."""
    async with rig.open(BROKER_PROXY_MAX_RESPONSE_MB="1") as api:
        caller = rig.stack.caller()
        over = await api.get(f"/api/proxy/ilevel/large?bytes={1024 * 1024 + 1}", token=caller)
        broker_error(over, 502, "invalid_response")
        assert "BROKER_PROXY_MAX_RESPONSE_MB" in over.json()["error_description"]
        at_cap = await api.get(f"/api/proxy/ilevel/large?bytes={1024 * 1024}&length=0", token=caller)
        assert at_cap.status_code == 200
        assert at_cap.content == pattern_bytes(1024 * 1024)


async def test_an_undeclared_body_past_the_cap_aborts_the_answer_and_says_truncated(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Without Content-Length the status is already sent: the first byte past the cap aborts the response
    (serve closes the connection mid-body; the Functions invocation fails and the host answers a bare 500),
    and the access line says so."""
    caplog.set_level(logging.INFO, logger="broker.access")
    async with rig.open(BROKER_PROXY_MAX_RESPONSE_MB="1") as api:
        url = f"/api/proxy/ilevel/large?bytes={4 * 1024 * 1024}&length=0"
        caller = {"Authorization": f"Bearer {rig.stack.caller()}"}
        worker = getattr(api.client, "worker", None)
        if worker is None:
            with pytest.raises(httpx.HTTPError):
                await api.client.get(url, headers=caller)
        else:
            response = await api.client.get(url, headers=caller)
            assert (response.status_code, response.content) == (500, b"")
            assert [failure.split(": ")[1] for failure in worker.failures] == [ResponseAborted.__name__]
            worker.failures.clear()
    lines = [r.getMessage() for r in caplog.records if r.name == "broker.access" and "proxy id=" in r.getMessage()]
    assert lines and "body=truncated" in lines[-1]
    assert re.search(r"bytes=(\d+)", lines[-1]) and int(re.search(r"bytes=(\d+)", lines[-1])[1]) <= 1024 * 1024


@pytest.mark.slow
async def test_an_api_slower_than_the_proxy_timeout_is_a_504(rig: Rig) -> None:
    """BROKER_PROXY_TIMEOUT_SECONDS=1 and an answer after 3 s: 504 upstream_timeout naming the setting."""
    async with rig.open(BROKER_PROXY_TIMEOUT_SECONDS="1") as api:
        response = await api.get("/api/proxy/ilevel/slow?seconds=3", token=rig.stack.caller())
        broker_error(response, 504, "upstream_timeout")
        assert "BROKER_PROXY_TIMEOUT_SECONDS" in response.json()["error_description"]


@pytest.mark.slow
async def test_requests_beyond_the_concurrency_limit_wait_their_turn(rig: Rig, data_api: DataApi) -> None:
    """BROKER_ILEVEL_PROXY_CONCURRENCY=2: 6 slow requests at once, never more than 2 at the API, all answered."""
    async with rig.open(BROKER_ILEVEL_PROXY_CONCURRENCY="2") as api:
        caller = rig.stack.caller()
        responses = await asyncio.gather(
            *(api.get(f"/api/proxy/ilevel/slow?seconds=0.2&tag={rig.host}", token=caller) for _ in range(6))
        )
    assert [r.status_code for r in responses] == [200] * 6
    assert data_api.max_in_flight(rig.host) <= 2
    assert len([r for r in data_api.authorized_requests if f"tag={rig.host}" in r.query]) == 6


async def test_an_unreachable_api_is_a_503(rig: Rig) -> None:
    """Nothing listening at API_BASE_URL: 503 upstream_unavailable with Retry-After."""
    from broker.standin.serve import closed_port

    async with rig.open(BROKER_ILEVEL_API_BASE_URL=f"http://127.0.0.1:{closed_port()}/v1/") as api:
        response = await api.get(ASSETS, token=rig.stack.caller())
        broker_error(response, 503, "upstream_unavailable")
        assert response.headers["Retry-After"]


# --- redirects -------------------------------------------------------------------------------


async def test_redirects_are_not_followed_and_stay_inside_the_api_root(
    proxy: ProxyApi, stack: Stack, data_api: DataApi
) -> None:
    """A 302 inside the root comes back with Location rewritten; one outside it is a 502 invalid_response."""
    caller = stack.caller()
    inside = await proxy.get("/api/proxy/ilevel/redirect?to=/v1/entities/assets", token=caller)
    assert inside.status_code == 302
    assert inside.headers["Location"] == str(proxy.client.base_url).rstrip("/") + ASSETS
    outside = await proxy.get("/api/proxy/ilevel/redirect?to=https://evil.example/v1/", token=caller)
    broker_error(outside, 502, "invalid_response")
    assert len(data_api.requests) == 2


# --- the broker's own errors, in the contract's order ------------------------------------------


async def test_errors_come_in_the_contracts_order(rig: Rig, stack: Stack, data_api: DataApi) -> None:
    """431 → 401 → 405 → 404 unknown_provider → 403 → mode → 400 path → 413, each with X-Broker-Error."""
    async with rig.open() as api:
        broker_error(await api.get(ASSETS, headers={"X-Padding": "a" * 16500}, method="PUT"), 431, "invalid_request")
        broker_error(await api.get("/api/proxy/nope/x", method="PUT"), 401, "invalid_token")
        broker_error(await api.get("/api/proxy/nope/x", token=stack.caller(roles=()), method="PUT"), 405,
                     "method_not_allowed")  # fmt: skip
        broker_error(await api.get("/api/proxy/nope/x", token=stack.caller(roles=())), 404, "unknown_provider")
        broker_error(await api.get("/api/proxy/ilevel/%2e%2e", token=stack.caller(roles=())), 403, "insufficient_scope")
        big = b"x" * (2 * 1024 * 1024)
        broker_error(await api.get("/api/proxy/ilevel/a//b", token=stack.caller(), method="POST", content=big), 400,
                     "invalid_request")  # fmt: skip
        broker_error(await api.get("/api/proxy/ilevel/echo", token=stack.caller(), method="POST", content=big), 413,
                     "payload_too_large")  # fmt: skip
    async with rig.open(BROKER_ILEVEL_MODE="token") as api:
        broker_error(await api.get("/api/proxy/ilevel/%2e%2e", token=stack.caller()), 404, "proxy_disabled")
    assert data_api.requests == []
    assert stack.tokens.request_count == 0


@pytest.mark.parametrize(
    "path",
    ["%2e%2e/oauth", "a/.%2E/.%2e/oauth/token", "%252e%252e", "a/%5c..", "a//b", "a/", "a%00b", "x@evil.example",
     "http:%2F%2Fevil.example"],
)  # fmt: skip
async def test_paths_that_could_leave_the_api_root_are_refused_and_nothing_is_sent(
    proxy: ProxyApi, stack: Stack, data_api: DataApi, path: str
) -> None:
    """400 invalid_request, no token request, no request to the API."""
    response = await proxy.get(f"/api/proxy/ilevel/{path}", token=stack.caller())
    broker_error(response, 400, "invalid_request")
    assert data_api.requests == []
    assert stack.tokens.request_count == 0


async def test_an_encoded_slash_is_refused_or_at_worst_a_plain_slash_inside_the_root(
    proxy: ProxyApi, stack: Stack, data_api: DataApi
) -> None:
    """%2F: refused where the raw path is visible (serve); the Functions host decodes it first, so there it is
    forwarded as a plain '/', which stays inside the API root (README, the deviation)."""
    response = await proxy.get("/api/proxy/ilevel/entities%2Fassets", token=stack.caller())
    if response.status_code == 400:
        assert response.headers[BROKER_ERROR] == "invalid_request"
        assert data_api.requests == []
    else:
        assert response.status_code == 200
        assert [r.raw_path for r in data_api.requests] == ["/v1/entities/assets"]


async def raw_path_status(api: ProxyApi, path: str, token: str) -> tuple[int, str | None]:
    """GET a path exactly as written, dot segments included (HTTP clients remove them before sending)."""
    transport = api.client._transport
    if isinstance(transport, FunctionsTransport):
        answer = await transport.send_raw("GET", FUNCTIONS_BASE_URL + path, [("authorization", f"Bearer {token}")])
        return answer.status_code, answer.headers.get(BROKER_ERROR)
    url = api.client.base_url
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nAuthorization: Bearer {token}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    head = (await reader.read()).split(b"\r\n\r\n", 1)[0].decode("latin-1")
    writer.close()
    error = re.search(r"(?im)^x-broker-error: *(\S+)", head)
    return int(head[9:12]), error[1] if error else None


@pytest.mark.parametrize("path", ["..", "a/../../oauth/token", "./entities/assets", "a/./b"])
async def test_plain_dot_segments_sent_as_written_are_refused(
    proxy: ProxyApi, stack: Stack, data_api: DataApi, path: str
) -> None:
    """A client that sends '..' as written (curl --path-as-is) gets 400 invalid_request, and nothing is sent."""
    status, error = await raw_path_status(proxy, f"/api/proxy/ilevel/{path}", stack.caller())
    assert (status, error) == (400, "invalid_request")
    assert data_api.requests == []
    assert stack.tokens.request_count == 0


async def test_in_proxy_mode_the_token_route_is_closed(proxy: ProxyApi, stack: Stack) -> None:
    """/api/token/ilevel answers 403 token_route_disabled: the token never leaves the broker."""
    response = await proxy.get("/api/token/ilevel", token=stack.caller())
    assert response.status_code == 403
    assert response.json()["error"] == "token_route_disabled"
    assert "BROKER_ILEVEL_MODE" in response.json()["error_description"]
    assert stack.tokens.request_count == 0


async def test_in_both_mode_token_and_proxy_routes_answer(rig: Rig, stack: Stack) -> None:
    """BROKER_ILEVEL_MODE=both: the token route and the proxy route share one cached token."""
    async with rig.open(BROKER_ILEVEL_MODE="both") as api:
        caller = stack.caller()
        # The token route's 200 carries the token by design: asked for outside the leak-checking helper.
        token_route = await api.client.get("/api/token/ilevel", headers={"Authorization": f"Bearer {caller}"})
        assert token_route.status_code == 200
        assert (await api.get(ASSETS, token=caller)).status_code == 200
    assert stack.tokens.request_count == 1


# --- logs ------------------------------------------------------------------------------------


async def test_one_access_line_per_proxied_request_without_the_token(
    proxy: ProxyApi, stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """request id, provider, caller, method, path without the query, status, bytes, upstream latency, fingerprint."""
    caplog.set_level(logging.INFO, logger="broker.access")
    response = await proxy.get(
        ASSETS + "?page%5Bsize%5D=3", token=stack.caller(), headers={"X-Request-Id": "req-abcdef012345"}
    )
    assert response.status_code == 200
    lines = [
        r.getMessage() for r in caplog.records if r.name == "broker.access" and "req-abcdef012345" in r.getMessage()
    ]
    assert len(lines) == 1
    line = lines[0]
    for part in (
        "provider=ilevel",
        "method=GET",
        "path=/entities/assets ",
        "status=200",
        f"bytes={len(response.content)}",
    ):
        assert part in line
    assert re.search(r"upstream_ms=\d+\.\d", line)
    from broker.tokens import fingerprint

    assert f"token={fingerprint(stack.tokens.issued_tokens[-1])}" in line
    assert "page" not in line
    assert stack.tokens.issued_tokens[-1] not in line
