"""Callers learn what to do from the answer: refused force_refresh, unknown provider, POST bodies, request ids."""

from __future__ import annotations

import re

import pytest

from tests.conftest import Api, Stack

FORCE = re.compile(r"^refused; retry-after=([0-9]+)$")


async def test_a_refused_force_refresh_is_200_with_the_cached_token_and_says_when(api: Api, stack: Stack) -> None:
    """A rate-limited force_refresh gets the cached token and X-Broker-Force-Refresh: refused; retry-after=<s>."""
    token = stack.caller()
    honoured = await api.get("/api/token/ilevel?force_refresh=true", token=token)
    assert honoured.status_code == 200 and "x-broker-force-refresh" not in honoured.headers
    refused = await api.get("/api/token/ilevel?force_refresh=true", token=token)
    assert refused.status_code == 200
    assert refused.json()["access_token"] == honoured.json()["access_token"]
    match = FORCE.fullmatch(refused.headers["x-broker-force-refresh"])
    assert match is not None and 1 <= int(match.group(1)) <= 30
    assert stack.tokens.request_count == 1


async def test_an_unknown_provider_tells_the_caller_to_ask_the_operator(api: Api, stack: Stack) -> None:
    """404 unknown_provider points the caller at the operator, never at a setting only operators can see."""
    response = await api.get("/api/token/nope", token=stack.caller())
    assert (response.status_code, response.json()["error"]) == (404, "unknown_provider")
    description = response.json()["error_description"]
    assert "operator" in description
    assert "BROKER_" not in description and "setting" not in description


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"min_validity=0&force_refresh=true", "application/x-www-form-urlencoded"),
        (b'{"force_refresh": true, "provider": "other"}', "application/json"),
    ],
)
async def test_a_post_body_is_ignored_parameters_come_from_the_query_only(
    api: Api, stack: Stack, content: bytes, content_type: str
) -> None:
    """ADF's Web activity must POST a body; whatever it holds, it changes nothing."""
    token = stack.caller()
    first = await api.get("/api/token/ilevel", token=token)
    posted = await api.get(
        "/api/token/ilevel", token=token, method="POST", content=content, headers={"Content-Type": content_type}
    )
    assert posted.status_code == 200
    assert posted.json()["access_token"] == first.json()["access_token"]
    assert stack.tokens.request_count == 1, "no forced fetch from the body"


async def test_a_caller_chosen_request_id_is_kept_and_the_broker_logs_its_own_beside_it(
    api: Api, stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """Two requests with the same X-Request-Id: both echoed, each logged with a distinct broker id beside it.

    Both ask for an unknown provider (404): a cached token (``hit``) writes no access line."""
    chosen = "adf-run-0001-retry"
    for _ in range(2):
        response = await api.get("/api/token/nowhere", token=stack.caller(), headers={"X-Request-Id": chosen})
        assert response.headers["x-request-id"] == chosen
    lines = [r.getMessage() for r in caplog.records if r.name == "broker.access"]
    own = [re.search(rf"id={chosen} broker_id=([0-9a-f]{{32}}) ", line) for line in lines]
    ids = {m.group(1) for m in own if m is not None}
    assert len(ids) == 2, lines
