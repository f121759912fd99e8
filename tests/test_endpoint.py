"""The token endpoint client against hostile upstream answers: echoed secrets and odd Retry-After values."""

from __future__ import annotations

import base64
import re
import secrets
from urllib.parse import quote, quote_plus

import pytest

from broker import __version__
from broker.retry_after import MAX_RETRY_AFTER_S, parse_retry_after
from broker.runtime import Broker
from broker.standin.faults import Reply
from tests.conftest import Api, Stack, sensitive

NOW = 1_800_000_000.0


def every_form(client_id: str, client_secret: str) -> set[str]:
    """What an upstream could echo back of what the broker sent."""
    forms = {client_id, client_secret}
    for value in (client_id, client_secret):
        forms |= {quote_plus(value), quote(value, safe="")}
        forms.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(value, safe="")))
    for pair in (f"{client_id}:{client_secret}", f"{quote_plus(client_id)}:{quote_plus(client_secret)}"):
        encoded = base64.b64encode(pair.encode()).decode()
        forms |= {encoded, encoded.rstrip("=")}
    return {sensitive(form) for form in forms if len(form) >= 8}


@pytest.fixture(params=["client_secret_basic", "client_secret_post"])
def echoing(request: pytest.FixtureRequest, stack: Stack) -> Stack:
    """The token endpoint echoes the Authorization header and the form body into error_description."""
    # A secret with characters that form- and percent-encoding change, so every form differs.
    stack.client_secret = stack.rotate_secret(secrets.token_urlsafe(18) + "+/=%&:", accept=False)
    stack.env["BROKER_ILEVEL_AUTH_METHOD"] = request.param
    stack.tokens.variants = {"basic_raw", "post"}
    stack.tokens.echo_request = True
    return stack


async def test_an_upstream_echo_of_the_credentials_is_scrubbed_in_every_form(echoing: Stack, api: Api) -> None:
    """Raw, base64 Basic, form-encoded and percent-encoded forms never reach the caller's 502 or the log."""
    response = await api.get("/api/token/ilevel", token=echoing.caller())
    assert response.status_code == 502
    description = response.json()["error_description"]
    assert "received Authorization" in description, "the stand-in did echo"
    for form in every_form(echoing.client_id, echoing.client_secret):
        assert form not in description
        assert form.lower() not in description.lower()


@pytest.mark.parametrize("encode", [quote, lambda v: quote(v, safe=""), quote_plus, str.lower])
async def test_percent_encoded_echoes_are_scrubbed_in_either_hex_case(stack: Stack, api: Api, encode: object) -> None:
    """An upstream quoting the client id percent-encoded, upper- or lower-case hex, is masked too."""
    assert callable(encode)
    echoed = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), encode(stack.client_id))
    stack.tokens.script(Reply(status=401, json={"error": "invalid_client", "error_description": f"who is {echoed}?"}))
    response = await api.get("/api/token/ilevel", token=stack.caller())
    assert response.status_code == 502
    assert "who is ***?" in response.json()["error_description"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("99999999999999999999", float(MAX_RETRY_AFTER_S)),
        ("7200", float(MAX_RETRY_AFTER_S)),
        ("²", None),
        ("１２", None),
        ("-5", None),
        ("1e3", None),
        ("nan", None),
        ("inf", None),
        ("Thu, 15 Jan 2027 08:00:10 GMT", 10.0),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", float(MAX_RETRY_AFTER_S)),
        ("Fri, 31 Dec 99999 23:59:59 GMT", None),
        ("tomorrow", None),
        (None, None),
    ],
)
def test_retry_after_is_ascii_delta_seconds_or_an_http_date_capped(value: str | None, expected: float | None) -> None:
    """Only ASCII digits or an HTTP-date count; the result never exceeds an hour."""
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize("value", ["²", "99999999999999999999", "nan"])
async def test_an_odd_retry_after_on_a_503_is_still_a_503_with_a_sane_retry_after(
    stack: Stack, api: Api, value: str
) -> None:
    """A Unicode digit or a 20-digit Retry-After from the token endpoint gives the caller a 503, never a 500."""
    stack.tokens.default_reply = Reply(status=503, json={"error": "busy"}, headers={"Retry-After": value})
    response = await api.get("/api/token/ilevel", token=stack.caller())
    assert (response.status_code, response.json()["error"]) == (503, "upstream_unavailable")
    retry_after = response.headers["retry-after"]
    assert retry_after.isascii() and retry_after.isdigit() and 1 <= int(retry_after) <= MAX_RETRY_AFTER_S


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "²"])
async def test_an_odd_retry_after_from_key_vault_is_still_a_503_with_a_sane_retry_after(
    stack: Stack, api: Api, value: str
) -> None:
    """Key Vault throttling with a non-numeric or infinite Retry-After gives the caller a 503, never a 500."""
    stack.kv.faults.default_reply = Reply(
        status=429, json={"error": {"code": "Throttled", "message": "slow down"}}, headers={"Retry-After": value}
    )
    response = await api.get("/api/token/ilevel", token=stack.caller())
    assert (response.status_code, response.json()["error"]) == (503, "key_vault_unavailable")
    retry_after = response.headers["retry-after"]
    assert retry_after.isascii() and retry_after.isdigit() and 1 <= int(retry_after) <= MAX_RETRY_AFTER_S


async def test_the_token_request_names_the_broker_as_the_proxy_does(broker: Broker, stack: Stack) -> None:
    """One User-Agent upstream: the token request carries the broker's name and version, as proxied calls do."""
    await broker.providers["ilevel"].source.fetch()
    assert stack.tokens.requests[-1].headers["user-agent"] == f"ilevel-token-broker/{__version__}"
