"""``python -m broker check``: every diagnosis against local servers, never a secret or token value printed."""

from __future__ import annotations

import json

import pytest

from broker.__main__ import main
from broker.standin.faults import Reply
from broker.standin.serve import blackhole_listener, closed_port
from tests.conftest import Stack, leaks


@pytest.fixture
def env(stack: Stack) -> Stack:
    stack.export_environment()
    return stack


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object], str]:
    code = main(["check", *args, "--json"])
    out = capsys.readouterr().out
    assert not leaks(out), "check printed a secret or token"
    human = main(["check", *args])
    text = capsys.readouterr().out
    assert not leaks(text)
    assert human == code
    return code, json.loads(out), text


def test_success_shows_lifetime_type_and_safe_jwt_claims_but_never_the_token(
    env: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """With working credentials: exit 0, token type and lifetime, JWT header and non-sensitive claims only."""
    code, report, text = check(capsys)
    assert code == 0 and report["ok"] is True
    token = report["token"]
    assert isinstance(token, dict)
    assert token["token_type"] == "Bearer" and token["lifetime_s"] == 3600
    assert token["jwt_header"]["alg"] == "HS256"
    assert set(token["jwt_claims"]) <= {"iss", "aud", "exp", "scope", "client_id"}
    assert "provider ilevel: OK" in text
    for issued in env.tokens.issued_tokens:
        assert issued not in text


@pytest.mark.parametrize(
    ("accepted", "settings", "advice"),
    [
        ({"basic_form"}, {}, "BROKER_ILEVEL_BASIC_ENCODING=form"),
        ({"post"}, {}, "BROKER_ILEVEL_AUTH_METHOD=client_secret_post"),
        (
            {"basic_raw"},
            {"BROKER_ILEVEL_AUTH_METHOD": "client_secret_post"},
            "BROKER_ILEVEL_AUTH_METHOD=client_secret_basic",
        ),
    ],
)
def test_finds_the_client_auth_variant_the_server_accepts_and_names_the_setting(
    env: Stack, capsys: pytest.CaptureFixture[str], accepted: set[str], settings: dict[str, str], advice: str
) -> None:
    """A server accepting only one variant (not the configured one): the check says which works and what to set."""
    env.tokens.variants = accepted  # type: ignore[assignment]
    for key, value in settings.items():
        env.monkeypatch.setenv(key, value)
    code, report, _ = check(capsys)
    assert code == 1
    attempts = report["attempts"]
    assert isinstance(attempts, list)
    assert attempts[0]["result"].startswith("invalid_client")
    assert attempts[-1]["result"] == "accepted"
    assert any(advice in a for a in report["advice"])  # type: ignore[union-attr]


def test_wrong_credentials_fail_every_variant_and_show_fingerprints(
    env: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """When no variant works the credentials themselves are wrong: names, lengths and fingerprints, no values."""
    env.tokens.revoke(env.client_id, env.client_secret)
    code, report, text = check(capsys)
    assert code == 1
    assert len(report["attempts"]) == 3  # type: ignore[arg-type]
    assert "HTTP 401" in report["attempts"][0]["result"]  # type: ignore[index]
    secret = report["secrets"][1]  # type: ignore[index]
    assert secret["name"] == "ilevel-client-secret" and secret["length"] == len(env.client_secret)
    assert len(secret["sha256"]) == 8
    assert "rejected every client authentication variant" in text


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        ('"{v}"', "wrapping quotes"),
        ("{v}\n", "a newline"),
        ("  {v}", "surrounding whitespace"),
        ("\ufeff{v}", "byte-order mark"),
    ],
)
def test_reports_paste_accidents_in_the_stored_secrets(
    env: Stack, capsys: pytest.CaptureFixture[str], stored: str, problem: str
) -> None:
    """Quotes, newlines, whitespace and a BOM are reported by secret name, never by value."""
    env.kv.set_secret("ilevel-client-secret", stored.format(v=env.client_secret))
    _, report, _ = check(capsys)
    assert any(problem in p and "ilevel-client-secret" in p for p in report["problems"])  # type: ignore[union-attr]


def test_an_empty_secret_is_named(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty or whitespace-only secret is a failure naming the secret."""
    env.kv.set_secret("ilevel-client-id", "   ")
    code, report, _ = check(capsys)
    assert code == 1
    assert any("'ilevel-client-id' is empty" in p for p in report["problems"])  # type: ignore[union-attr]


def test_network_failures_name_the_host(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """DNS, connection refused and connect timeout are each diagnosed with the host they concern."""
    cases = {
        "https://broker-check.invalid/oauth/token": "DNS lookup failed",
        f"http://127.0.0.1:{closed_port()}/oauth/token": "connection refused",
    }
    for url, reason in cases.items():
        env.monkeypatch.setenv("BROKER_ILEVEL_TOKEN_URL", url)
        code, report, _ = check(capsys)
        assert code == 1
        problem = report["problems"][-1]  # type: ignore[index]
        assert reason in problem and url.split("/")[2] in problem
    with blackhole_listener() as (host, port):
        env.monkeypatch.setenv("BROKER_ILEVEL_TOKEN_URL", f"http://{host}:{port}/oauth/token")
        env.monkeypatch.setenv("BROKER_TOKEN_BUDGET_SECONDS", "2")
        code, report, _ = check(capsys)
    assert code == 1
    problem = report["problems"][-1]  # type: ignore[index]
    assert "Timed out connecting to" in problem or "did not answer within the budget" in problem
    assert f"{host}:{port}" in problem


def test_a_tls_failure_is_diagnosed(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """A token endpoint whose certificate is not trusted is reported as a TLS failure naming the host."""
    vault = env.servers.url("key_vault")  # a TLS server whose CA the broker's httpx client does not trust
    env.monkeypatch.setenv("BROKER_ILEVEL_TOKEN_URL", f"{vault}/oauth/token")
    code, report, _ = check(capsys)
    assert code == 1
    assert "TLS handshake" in report["problems"][-1]  # type: ignore[index]


def test_an_http_error_status_is_reported(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """A 500 from the token endpoint is reported with its status, without trying other variants."""
    env.tokens.default_reply = Reply(status=500, body=b"<html>oops</html>", content_type="text/html")
    code, report, _ = check(capsys)
    assert code == 1
    assert len(report["attempts"]) == 1  # type: ignore[arg-type]
    assert "answered 500" in report["problems"][-1]  # type: ignore[index]


def test_an_unknown_provider_is_reported(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """Asking for a provider that is not configured names BROKER_PROVIDERS."""
    code, report, _ = check(capsys, "nope")
    assert code == 1
    assert any("BROKER_PROVIDERS" in a for a in report["advice"])  # type: ignore[union-attr]
