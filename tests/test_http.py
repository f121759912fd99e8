"""The HTTP surface end to end, in process: real Key Vault, managed identity, token endpoint and Entra stand-ins."""

from __future__ import annotations

import asyncio
import base64
import time

import httpx
import pytest

from broker.config import log_warnings
from broker.routes.token import STALE_HEADER
from tests.conftest import Api, Stack
from tests.hosts import open_host


async def test_returns_a_token_to_an_authorised_caller(api: Api, stack: Stack) -> None:
    """A caller with the provider's app role gets the upstream token with Bearer type and expiry fields."""
    response = await api.get("/api/token/ilevel", token=stack.caller())
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "expires_on"}
    assert body["access_token"] == stack.tokens.issued_tokens[-1]
    assert body["token_type"] == "Bearer"
    assert 3590 <= body["expires_in"] <= 3600
    assert abs(body["expires_on"] - (time.time() + body["expires_in"])) <= 2
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert response.headers["x-request-id"]


async def test_sends_raw_basic_credentials_by_default(api: Api, stack: Stack) -> None:
    """client_secret_basic sends base64(id:secret) of the stored values and only grant_type in the form."""
    await api.get("/api/token/ilevel", token=stack.caller())
    request = stack.tokens.requests[-1]
    expected = base64.b64encode(f"{stack.client_id}:{stack.client_secret}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"
    assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert request.form == {"grant_type": "client_credentials"}
    assert request.variant == "basic_raw"


@pytest.mark.parametrize(
    ("settings", "variant"),
    [
        ({"BROKER_ILEVEL_BASIC_ENCODING": "form"}, "basic_form"),
        ({"BROKER_ILEVEL_AUTH_METHOD": "client_secret_post"}, "post"),
    ],
)
async def test_each_client_auth_method_is_sent_as_configured(
    stack: Stack, settings: dict[str, str], variant: str
) -> None:
    """Form-encoded Basic and client_secret_post reach a server that accepts only that variant."""
    stack.tokens.variants = {variant}  # type: ignore[assignment]
    broker = stack.broker(stack.settings(**settings))
    caller = await broker.authenticate(f"Bearer {stack.caller()}")
    served = await broker.token(caller, "ilevel", min_validity=300, force=False)
    assert served.outcome == "fetched"
    request = stack.tokens.requests[-1]
    assert request.variant == variant
    if variant == "post":
        assert "authorization" not in request.headers
        assert request.form["client_id"] == stack.client_id
    await broker.aclose()


async def test_extra_parameters_are_sent_only_when_set(stack: Stack) -> None:
    """BROKER_<NAME>_SCOPE/AUDIENCE/RESOURCE join the form body; unset ones are absent."""
    broker = stack.broker(stack.settings(BROKER_ILEVEL_SCOPE="read", BROKER_ILEVEL_RESOURCE="https://api.test/"))
    caller = await broker.authenticate(f"Bearer {stack.caller()}")
    await broker.token(caller, "ilevel", min_validity=300, force=False)
    assert stack.tokens.requests[-1].form == {
        "grant_type": "client_credentials",
        "scope": "read",
        "resource": "https://api.test/",
    }
    await broker.aclose()


async def test_hundred_concurrent_cold_requests_make_one_token_request_and_one_read_per_secret(
    api: Api, stack: Stack
) -> None:
    """Single-flight through the whole stack: 100 callers, 1 token request, 1 Key Vault read of each secret."""
    stack.tokens.latency_s = 0.05
    callers = [stack.caller() for _ in range(5)]
    responses = await asyncio.gather(*(api.get("/api/token/ilevel", token=callers[i % 5]) for i in range(100)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["access_token"] for r in responses}) == 1
    assert stack.tokens.request_count == 1
    assert dict(stack.kv.reads) == {"ilevel-client-id": 1, "ilevel-client-secret": 1}


async def test_a_rotated_secret_is_used_from_the_next_fetch_without_restart(api: Api, stack: Stack) -> None:
    """Secrets are re-read on every fetch: a new version in Key Vault is what the next fetch sends."""
    await api.get("/api/token/ilevel", token=stack.caller())
    new_secret = stack.rotate_secret()
    response = await api.get("/api/token/ilevel?force_refresh=true", token=stack.caller())
    assert response.status_code == 200
    expected = base64.b64encode(f"{stack.client_id}:{new_secret}".encode()).decode()
    assert stack.tokens.requests[-1].headers["authorization"] == f"Basic {expected}"


async def test_secrets_with_surrounding_whitespace_are_stripped_and_named_in_a_warning(
    api: Api, stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """A secret stored with a trailing newline still works; the warning names the secret, not the value."""
    stack.kv.set_secret("ilevel-client-secret", stack.client_secret + "\n")
    response = await api.get("/api/token/ilevel", token=stack.caller())
    assert response.status_code == 200
    assert any("'ilevel-client-secret' had surrounding whitespace" in r.getMessage() for r in caplog.records)


async def test_min_validity_above_what_is_left_gets_a_fresh_token(api: Api, stack: Stack) -> None:
    """A token with 600 s left is served for min_validity=300 but refetched for min_validity=900."""
    stack.tokens.expires_in = 600
    first = await api.get("/api/token/ilevel", token=stack.caller())
    again = await api.get("/api/token/ilevel?min_validity=200", token=stack.caller())
    fresh = await api.get("/api/token/ilevel?min_validity=900", token=stack.caller())
    assert first.json()["access_token"] == again.json()["access_token"]
    # 900 s exceeds half the 600 s life, so it is capped at 300 s: still served from cache.
    assert fresh.json()["access_token"] == first.json()["access_token"]
    assert stack.tokens.request_count == 1


async def test_health_is_anonymous_and_touches_nothing_upstream(api: Api, stack: Stack) -> None:
    """GET /api/health answers {"status": "ok"} without a caller token and without any upstream call."""
    response = await api.get("/api/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert stack.tokens.request_count == 0
    assert sum(stack.kv.reads.values()) == 0


async def test_lowercase_bearer_from_upstream_is_normalised(api: Api, stack: Stack) -> None:
    """An upstream token_type of 'bearer' is returned as 'Bearer'."""
    stack.tokens.token_type = "bearer"
    response = await api.get("/api/token/ilevel", token=stack.caller())
    assert response.json()["token_type"] == "Bearer"


async def test_another_token_type_is_a_bad_gateway(api: Api, stack: Stack) -> None:
    """Only Bearer tokens are brokered; a MAC token from upstream is a 502 invalid_response."""
    stack.tokens.token_type = "mac"
    response = await api.get("/api/token/ilevel", token=stack.caller())
    assert response.status_code == 502
    assert response.json()["error"] == "invalid_response"


async def test_stale_header_is_absent_on_normal_answers(api: Api, stack: Stack) -> None:
    """Only a stale-but-valid answer carries the stale header."""
    response = await api.get("/api/token/ilevel", token=stack.caller())
    assert STALE_HEADER.lower() not in response.headers


async def test_switching_caller_auth_off_locally_serves_without_a_token_and_says_so_loudly(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """BROKER_INSECURE_DISABLE_CALLER_AUTH (local only) answers without a caller token and logs a warning."""
    settings = stack.settings(BROKER_INSECURE_DISABLE_CALLER_AUTH="true")
    log_warnings(settings)
    broker = stack.broker(settings)
    async with open_host("serve", broker) as client:
        response = await client.get("/api/token/ilevel")
    assert response.status_code == 200
    assert any("CALLER AUTHENTICATION IS OFF" in r.getMessage() for r in caplog.records)
    await broker.aclose()


async def test_a_simulated_hour_of_steady_traffic_waits_on_the_token_endpoint_only_once(stack: Stack) -> None:
    """One request every 5 s for an hour (injected clock, real servers): only the first waits for iLevel."""
    clock = [time.time()]
    broker = stack.broker(clock=lambda: clock[0])
    caller = await broker.authenticate(f"Bearer {stack.caller()}")
    outcomes = []
    for _ in range(3600 // 5):
        outcomes.append((await broker.token(caller, "ilevel", min_validity=300, force=False)).outcome)
        # 5 s pass between requests: a background refresh started by this one completes before the next.
        while broker.providers["ilevel"].cache.fetching:
            await asyncio.sleep(0.002)
        clock[0] += 5
    waited = sum(o in ("fetched", "refreshed") for o in outcomes)
    assert outcomes[0] == "fetched"
    assert waited == 1
    assert stack.tokens.request_count == 2  # the first fetch and one refresh-ahead ~330 s before expiry
    assert dict(stack.kv.reads) == {"ilevel-client-id": 2, "ilevel-client-secret": 2}
    await broker.aclose()


# --- every response is well-formed, on both hosts ------------------------------------------------
def assert_well_formed(response: httpx.Response) -> None:
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-request-id"]
    if response.request.method == "HEAD":
        assert response.content == b""
    else:
        body = response.json()
        assert set(body) >= ({"status"} if response.status_code == 200 else {"error", "error_description"})


async def test_head_answers_carry_no_body(api: Api, stack: Stack) -> None:
    """HEAD /api/health is 200 with headers only; HEAD on the token route is a 405 with headers only."""
    health = await api.get("/api/health", method="HEAD")
    token = await api.get("/api/token/ilevel", method="HEAD", token=stack.caller())
    assert (health.status_code, token.status_code) == (200, 405)
    for response in (health, token):
        assert_well_formed(response)
    assert token.headers["allow"] == "GET, POST"


@pytest.mark.parametrize(
    ("method", "path", "status", "authenticated"),
    [
        ("GET", "/api/health", 200, False),
        ("POST", "/api/health", 405, False),
        ("TRACE", "/api/health", 405, False),
        ("TRACE", "/api/token/ilevel", 405, True),
        ("DELETE", "/api/token/ilevel", 405, True),
        ("PROPFIND", "/api/token/ilevel", 405, True),
        ("GET", "/api/nothing-here", 404, True),
        ("GET", "/api/nothing-here", 401, False),
        ("GET", "/", 401, False),
    ],
)
async def test_every_answer_has_a_request_id_no_store_and_a_json_body(
    api: Api, stack: Stack, method: str, path: str, status: int, authenticated: bool
) -> None:
    """Framework-level replies included (405s, unknown methods, 404s): X-Request-Id, no-store, JSON errors."""
    response = await api.get(path, method=method, token=stack.caller() if authenticated else None)
    assert response.status_code == status, response.text
    assert_well_formed(response)
    assert response.headers["content-type"] == "application/json"


async def test_a_caller_request_id_is_echoed(api: Api, stack: Stack) -> None:
    """A sane X-Request-Id from the caller comes back as is, for correlation."""
    response = await api.get("/api/health", headers={"X-Request-Id": "adf-run-0123456789"})
    assert response.headers["x-request-id"] == "adf-run-0123456789"
