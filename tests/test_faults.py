"""The fault matrix: every token-endpoint and Key Vault fault of issue 3, driven through the HTTP surface.

Each row of ``FAULTS`` is one fault on a real local server, with what the caller gets (status, error
code, Retry-After), how many token requests the broker made, and what the operator sees in the log.
Each row runs twice: on a cold cache (the caller gets the error, and the next successful fetch
restores service) and with a valid token cached (the caller gets that token, flagged stale, or a
fresh one). ``markdown_table()`` renders the rows as the README's fault table.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import email.utils
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker.endpoint import MAX_LIFETIME_S
from broker.routes.token import STALE_HEADER
from broker.standin.faults import OMIT, Reply
from broker.standin.oauth import TokenServer
from broker.standin.serve import RunningServer, blackhole_listener, closed_port, run_server
from broker.standin.tls import PKIFiles, TestPKI
from tests.conftest import FAST_RETRY, Servers, Stack, sensitive
from tests.faults_support import Rig, report, rig_on

SECRET = "ilevel-client-secret"
# FAST_RETRY's three attempts with shorter timeouts, so the timeout rows take about a second each;
# the broker's 5 s budget comes from the test settings.
MATRIX_RETRY = dataclasses.replace(FAST_RETRY, connect_timeout_s=0.3, read_timeout_s=0.4)
ATTEMPTS = MATRIX_RETRY.max_attempts
BUDGET_S = 5.0
LATENCIES: dict[str, float] = {}


@dataclass
class Context:
    """What a row's set-up may need besides the rig: extra servers and things to close afterwards."""

    rig: Rig
    exits: contextlib.ExitStack
    tls_url: str
    pki: PKIFiles
    tmp: Path


Action = Callable[[Context], None]


def nothing(ctx: Context) -> None:
    """No set-up."""


@dataclass(frozen=True)
class Fault:
    """One row of the fault table."""

    id: str
    fault: str
    arrange: Action
    status: int
    code: str | None
    retry_after: int | None
    attempts: int
    log: str
    heal: Action | None = None
    settings: Callable[[Context], dict[str, str]] | None = None
    overrides: Callable[[Context], dict[str, Any]] | None = None
    # With a valid token cached: ("stale", attempts) serves it flagged, ("fresh", attempts) a new one.
    warm: tuple[str, int] | None = None
    check: Callable[[Context, dict[str, Any]], None] | None = field(default=None, compare=False)


# --- set-ups ----------------------------------------------------------------------------------
def tokens_always(reply: Reply) -> Action:
    def arrange(ctx: Context) -> None:
        ctx.rig.stack.tokens.default_reply = reply

    return arrange


def tokens_once(*replies: Reply) -> Action:
    def arrange(ctx: Context) -> None:
        ctx.rig.stack.tokens.script(*replies)

    return arrange


def tokens_heal(ctx: Context) -> None:
    ctx.rig.stack.tokens.faults.clear()


def expires_in(value: object) -> Action:
    def arrange(ctx: Context) -> None:
        ctx.rig.stack.tokens.expires_in = value

    return arrange


def revoke(ctx: Context) -> None:
    ctx.rig.stack.tokens.revoke(ctx.rig.stack.client_id, ctx.rig.stack.client_secret)


def accept(ctx: Context) -> None:
    ctx.rig.stack.tokens.accept(ctx.rig.stack.client_id, ctx.rig.stack.client_secret)


def retry_after_date(seconds: float) -> Action:
    def arrange(ctx: Context) -> None:
        when = email.utils.formatdate(ctx.rig.clock() + seconds, usegmt=True)
        ctx.rig.stack.tokens.script(Reply(429, headers={"Retry-After": when}))

    return arrange


def kv_always(reply: Reply) -> Action:
    def arrange(ctx: Context) -> None:
        ctx.rig.stack.kv.default_reply = reply

    return arrange


def kv_once(*replies: Reply) -> Action:
    def arrange(ctx: Context) -> None:
        ctx.rig.stack.kv.script(*replies)

    return arrange


def kv_heal(ctx: Context) -> None:
    ctx.rig.stack.kv.faults.clear()
    ctx.rig.stack.kv.allow()


def kv_forbid(ctx: Context) -> None:
    ctx.rig.stack.kv.forbid()


def kv_delete_secret(ctx: Context) -> None:
    ctx.rig.stack.kv.delete(SECRET)


def kv_restore_secret(ctx: Context) -> None:
    ctx.rig.stack.kv.set_secret(SECRET, ctx.rig.stack.client_secret)


def kv_set_value(value: str) -> Action:
    def arrange(ctx: Context) -> None:
        ctx.rig.stack.kv.set_secret(SECRET, value)

    return arrange


def kv_disable_latest(ctx: Context) -> None:
    newer = sensitive(secrets.token_urlsafe(24))
    version = ctx.rig.stack.kv.set_secret(SECRET, newer)
    ctx.rig.stack.kv.set_enabled(SECRET, version, False)


def kv_disable_all(ctx: Context) -> None:
    for version in ctx.rig.stack.kv.versions(SECRET):
        ctx.rig.stack.kv.set_enabled(SECRET, version, False)


def kv_enable_all(ctx: Context) -> None:
    for version in ctx.rig.stack.kv.versions(SECRET):
        ctx.rig.stack.kv.set_enabled(SECRET, version, True)


def identity_fails(ctx: Context) -> None:
    ctx.rig.stack.servers.identity.fail_with(500)


def token_url(make: Callable[[Context], str]) -> Callable[[Context], dict[str, str]]:
    return lambda ctx: {"BROKER_ILEVEL_TOKEN_URL": make(ctx)}


def refused_url(ctx: Context) -> str:
    return f"http://127.0.0.1:{closed_port()}/oauth/token"


def blackhole_url(ctx: Context) -> str:
    host, port = ctx.exits.enter_context(blackhole_listener())
    return f"http://{host}:{port}/oauth/token"


def vault_url(make: Callable[[Context], str]) -> Callable[[Context], dict[str, str]]:
    return lambda ctx: {"KEY_VAULT_URL": make(ctx)}


def kv_options(ctx: Context, **changes: Any) -> dict[str, Any]:
    options = {
        "connection_verify": ctx.pki.ca,
        "verify_challenge_resource": False,
        "retry_total": 1,
        "retry_backoff_factor": 0.01,
    }
    options.update(changes)
    return {"secret_client_options": options}


def untrusted_vault(ctx: Context) -> dict[str, Any]:
    return kv_options(ctx, connection_verify=TestPKI.untrusted_ca_pem(ctx.tmp / "other-ca.pem"))


def expires_at_most(limit: float) -> Callable[[Context, dict[str, Any]], None]:
    def check(ctx: Context, body: dict[str, Any]) -> None:
        assert 0 < body["expires_in"] <= limit

    return check


HTML = b"<!DOCTYPE html><html><body><h1>Service Unavailable</h1></body></html>"
THROTTLED = {"error": {"code": "Throttled", "message": "Too many requests."}}
OVER_1_MIB = b'{"pad": "' + b"x" * (1 << 20) + b'"}'

FAULTS: list[Fault] = [
    # --- network ---
    Fault("refused", "connection refused", nothing, 503, "upstream_unavailable", 30, ATTEMPTS,
          "unreachable (connection refused)", settings=token_url(refused_url)),
    Fault("dns", "DNS failure", nothing, 503, "upstream_unavailable", 30, ATTEMPTS,
          "unreachable (DNS lookup failed)",
          settings=token_url(lambda ctx: "https://broker-test.invalid/oauth/token")),
    Fault("tls", "TLS failure (certificate from an untrusted CA)", nothing, 503, "upstream_unavailable", 60, 1,
          "TLS handshake with the token endpoint", settings=token_url(lambda ctx: ctx.tls_url)),
    Fault("connect-timeout", "connect timeout", nothing, 504, "upstream_timeout", 30, ATTEMPTS,
          "Timed out connecting to the token endpoint", settings=token_url(blackhole_url)),
    Fault("read-timeout", "read timeout (no headers)", tokens_always(Reply(delay_s=1.0, json={})), 504,
          "upstream_timeout", 30, ATTEMPTS, "Timed out waiting for the token endpoint", tokens_heal,
          warm=("stale", ATTEMPTS)),
    Fault("slow-body", "slow body (each chunk slower than the read timeout)",
          tokens_always(Reply.slow_body({"access_token": "x" * 40}, chunk_delay_s=1.0)), 504, "upstream_timeout",
          30, ATTEMPTS, "Timed out waiting for the token endpoint", tokens_heal, warm=("stale", ATTEMPTS)),
    Fault("trickle-body", "slow body (trickles within the read timeout, past the budget)",
          tokens_always(Reply.slow_body({"access_token": "x" * 200}, chunk_delay_s=0.2)), 504, "upstream_timeout",
          30, 1, "within the budget", tokens_heal, settings=lambda ctx: {"BROKER_TOKEN_BUDGET_SECONDS": "2"},
          warm=("stale", 1)),
    # --- 5xx ---
    *(
        Fault(f"http-{status}", f"HTTP {status}", tokens_always(Reply(status, body=b"upstream broke")), 503,
              "upstream_unavailable", 30, ATTEMPTS, f"answered {status}", tokens_heal, warm=("stale", ATTEMPTS))
        for status in (500, 502, 503, 504)
    ),
    Fault("http-503-once", "HTTP 503 once, then OK", tokens_once(Reply(503)), 200, None, None, 2,
          "attempt 1 failed (upstream_unavailable)", warm=("fresh", 2)),
    Fault("html-500", "HTML error page with 500", tokens_always(Reply(500, body=HTML, content_type="text/html")),
          503, "upstream_unavailable", 30, ATTEMPTS, "answered 500", tokens_heal, warm=("stale", ATTEMPTS)),
    # --- 429 ---
    Fault("429-seconds", "429 with Retry-After: 1 (seconds), then OK",
          tokens_once(Reply(429, headers={"Retry-After": "1"})), 200, None, None, 2, "retrying in 1.00 s",
          warm=("fresh", 2)),
    Fault("429-date", "429 with Retry-After as an HTTP-date, then OK", retry_after_date(1), 200, None, None, 2,
          "attempt 1 failed (upstream_unavailable)", warm=("fresh", 2)),
    Fault("429-bare", "429 without Retry-After, then OK", tokens_once(Reply(429)), 200, None, None, 2,
          "attempt 1 failed (upstream_unavailable)", warm=("fresh", 2)),
    Fault("429-always", "429 without Retry-After, every time", tokens_always(Reply(429)), 503,
          "upstream_unavailable", 30, ATTEMPTS, "answered 429", tokens_heal, warm=("stale", ATTEMPTS)),
    Fault("429-beyond-budget", "429 with Retry-After: 120 (beyond the budget)",
          tokens_always(Reply(429, headers={"Retry-After": "120"})), 503, "upstream_unavailable", 120, 1,
          "answered 429", tokens_heal, warm=("stale", 1)),
    # --- 4xx ---
    Fault("400-invalid-client", "400 invalid_client",
          tokens_once(Reply(400, json={"error": "invalid_client"})), 502, "invalid_client", None, 1,
          "has no newer version", warm=("stale", 1)),
    Fault("401-revoked", "401 invalid_client (secret revoked upstream)", revoke, 502, "invalid_client", None, 1,
          "has no newer version", accept, warm=("stale", 1)),
    Fault("401-bare", "401 without a body", tokens_once(Reply(401)), 502, "invalid_client", None, 1,
          "has no newer version", warm=("stale", 1)),
    *(
        Fault(f"400-{error}", f"400 {error}", tokens_always(Reply(400, json={"error": error})), 502, error, None, 1,
              f"rejected the request: {error}", tokens_heal, warm=("stale", 1))
        for error in ("invalid_request", "unsupported_grant_type")
    ),
    # --- bad 200s ---
    Fault("200-error", "200 with an error field",
          tokens_always(Reply(200, json={"error": "access_denied", "error_description": "no"})), 502,
          "access_denied", None, 1, "rejected the request: access_denied", tokens_heal, warm=("stale", 1)),
    Fault("non-json", "200 with a non-JSON body", tokens_always(Reply(200, body=b"OK", content_type="text/plain")),
          502, "invalid_response", None, 1, "the body is not a JSON object", tokens_heal, warm=("stale", 1)),
    Fault("html-200", "HTML page with 200", tokens_always(Reply(200, body=HTML, content_type="text/html")), 502,
          "invalid_response", None, 1, "the body is not a JSON object", tokens_heal, warm=("stale", 1)),
    Fault("no-access-token", "missing access_token",
          tokens_always(Reply(200, json={"token_type": "Bearer", "expires_in": 3600})), 502, "invalid_response",
          None, 1, "access_token is missing", tokens_heal, warm=("stale", 1)),
    *(
        Fault(f"expires-in-{name}", f"expires_in {name}", expires_in(value), 502, "invalid_response", None, 1,
              "expires_in must be a positive number", expires_in(3600), warm=("stale", 1))
        for name, value in (("negative", -60), ("zero", 0), ("non-numeric", "soon"))
    ),
    Fault("expires-in-missing", "expires_in missing", expires_in(OMIT), 200, None, None, 1, "",
          warm=("fresh", 1), check=expires_at_most(300)),
    Fault("expires-in-huge", "expires_in huge (10^9 s)", expires_in(10**9), 200, None, None, 1, "",
          warm=("fresh", 1), check=expires_at_most(MAX_LIFETIME_S)),
    Fault("body-over-cap", "body over 1 MiB (Content-Length)", tokens_always(Reply(200, body=OVER_1_MIB)), 502,
          "invalid_response", None, 1, "the body is over 1 MiB", tokens_heal, warm=("stale", 1)),
    Fault("body-over-cap-chunked", "body over 1 MiB (chunked)",
          tokens_always(Reply(200, body=OVER_1_MIB, chunk_delay_s=0.001, chunk_size=1 << 16)), 502,
          "invalid_response", None, 1, "the body is over 1 MiB", tokens_heal, warm=("stale", 1)),
    # --- Key Vault ---
    Fault("kv-403", "Key Vault 403 (no 'Key Vault Secrets User' role)", kv_forbid, 502, "key_vault_forbidden",
          None, 0, "grant the identity", kv_heal, warm=("stale", 0)),
    Fault("kv-404", "Key Vault 404 (secret missing)", kv_delete_secret, 502, "secret_not_found", None, 0,
          f"Secret '{SECRET}' does not exist", kv_restore_secret, warm=("stale", 0)),
    Fault("kv-latest-disabled", "Key Vault: latest version disabled", kv_disable_latest, 200, None, None, 1,
          "using the newest enabled version", warm=("fresh", 1)),
    Fault("kv-all-disabled", "Key Vault: every version disabled", kv_disable_all, 502, "secret_disabled", None, 0,
          "is disabled", kv_enable_all, warm=("stale", 0)),
    Fault("kv-429-once", "Key Vault 429 once", kv_once(Reply(429, json=THROTTLED, headers={"Retry-After": "0"})),
          200, None, None, 1, "", warm=("fresh", 1)),
    Fault("kv-429-always", "Key Vault 429, persistent",
          kv_always(Reply(429, json=THROTTLED, headers={"Retry-After": "0"})), 503, "key_vault_unavailable", 10, 0,
          "answered 429", kv_heal, warm=("fresh", 1)),
    Fault("kv-503-always", "Key Vault 503, persistent", kv_always(Reply(503, json=THROTTLED)), 503,
          "key_vault_unavailable", 10, 0, "answered 503", kv_heal, warm=("fresh", 1)),
    Fault("kv-refused", "Key Vault unreachable (connection refused)", nothing, 503, "key_vault_unavailable", 10,
          0, "connection refused", settings=vault_url(lambda ctx: f"https://127.0.0.1:{closed_port()}/")),
    Fault("kv-dns", "Key Vault DNS failure", nothing, 503, "key_vault_unavailable", 10, 0, "DNS lookup failed",
          settings=vault_url(lambda ctx: "https://broker-test.invalid/")),
    Fault("kv-tls", "Key Vault TLS failure (untrusted CA)", nothing, 503, "key_vault_unavailable", 10, 0,
          "TLS handshake failed", overrides=untrusted_vault),
    Fault("kv-empty", "Key Vault secret empty", kv_set_value(""), 502, "secret_empty", None, 0,
          "is empty or only whitespace", kv_restore_secret, warm=("stale", 0)),
    Fault("kv-whitespace", "Key Vault secret only whitespace", kv_set_value(" \n\t "), 502, "secret_empty", None, 0,
          "is empty or only whitespace", kv_restore_secret, warm=("stale", 0)),
    Fault("identity-500", "managed identity endpoint failing (500)", identity_fails, 503, "key_vault_unavailable",
          10, 0, "could not get a token"),
]  # fmt: skip


def markdown_table(rows: list[Fault] = FAULTS) -> str:
    """The README's fault table, from the matrix."""
    lines = [
        "| Fault | Caller gets (no valid token cached) | Retry-After | Token requests | With a valid token cached "
        "| Operator's log line contains |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        got = f"{row.status} `{row.code}`" if row.code else f"{row.status}"
        warm = "-"
        if row.warm is not None:
            warm = f"200 + `{STALE_HEADER}: {row.code}`" if row.warm[0] == "stale" else "200, fresh token"
        log = f"`{row.log}`" if row.log else "-"
        lines.append(f"| {row.fault} | {got} | {row.retry_after or '-'} | {row.attempts} | {warm} | {log} |")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module", autouse=True)
def latency_summary(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the module: the worst caller latency of the matrix, written for the closing note."""
    yield
    if not LATENCIES:
        return
    worst = max(LATENCIES, key=LATENCIES.__getitem__)
    base = tmp_path_factory.getbasetemp()
    (base / "fault-table.md").write_text(markdown_table())
    summary = {"worst_case_s": round(LATENCIES[worst], 3), "worst_case_fault": worst, "cases": len(LATENCIES)}
    report(request.config, base, "fault-matrix", {"summary": summary, "latency_s": LATENCIES})


@pytest.fixture(scope="module")
def tls_tokens(servers: Servers) -> Iterator[tuple[TokenServer, RunningServer]]:
    """A token endpoint over TLS with a certificate from the test CA, which the broker does not trust by default."""
    app = TokenServer()
    running = run_server(app, certfile=servers.pki.cert, keyfile=servers.pki.key)
    try:
        yield app, running
    finally:
        running.stop()


@pytest.fixture
async def context(
    stack: Stack, tls_tokens: tuple[TokenServer, RunningServer], tmp_path: Path, host: str
) -> AsyncIterator[Context]:
    app, running = tls_tokens
    app.accept(stack.client_id, stack.client_secret)
    with contextlib.ExitStack() as exits:
        async with rig_on(stack, host) as rig:
            yield Context(rig, exits, running.url + "/oauth/token", stack.servers.pki, tmp_path)


async def start(ctx: Context, row: Fault) -> Rig:
    settings = row.settings(ctx) if row.settings else {}
    overrides = row.overrides(ctx) if row.overrides else {}
    overrides.setdefault("retry", MATRIX_RETRY)
    return await ctx.rig.start(settings=settings, **overrides)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


@pytest.mark.slow
@pytest.mark.parametrize("row", FAULTS, ids=[row.id for row in FAULTS])
async def test_each_fault_without_a_cached_token_gets_its_documented_answer(
    context: Context, row: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    """With nothing cached, a fault gives its status, error code, Retry-After and attempts; then service recovers."""
    rig = await start(context, row)
    row.arrange(context)
    response, waited = await rig.get()
    LATENCIES[f"{row.id} (cold)"] = waited
    assert response.status_code == row.status, response.text
    assert rig.attempts.count == row.attempts
    assert waited < BUDGET_S + 1.5
    if row.code is None:
        assert STALE_HEADER.lower() not in response.headers
        if row.check is not None:
            row.check(context, response.json())
    else:
        assert response.json()["error"] == row.code
        assert response.headers.get("retry-after") == (str(row.retry_after) if row.retry_after else None)
    assert row.log in logged(caplog)
    if row.heal is not None:
        row.heal(context)
        rig.clock.advance(61)
        before = rig.attempts.count
        recovered, _ = await rig.get()
        assert recovered.status_code == 200, recovered.text
        assert STALE_HEADER.lower() not in recovered.headers
        assert rig.attempts.count == before + 1


WARM = [row for row in FAULTS if row.warm is not None]


@pytest.mark.slow
@pytest.mark.parametrize("row", WARM, ids=[row.id for row in WARM])
async def test_each_fault_with_a_valid_token_cached_still_answers_200(
    context: Context, row: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    """When a refresh fails the cached, unexpired token is served flagged stale; faults that recover give a new one."""
    assert row.warm is not None
    rig = await start(context, row)
    first, _ = await rig.get()
    assert first.status_code == 200
    rig.clock.advance(3600 - 200)  # 200 s left: below the default min_validity of 300 s, so this request fetches
    before = rig.attempts.count
    row.arrange(context)
    response, waited = await rig.get()
    LATENCIES[f"{row.id} (token cached)"] = waited
    assert response.status_code == 200, response.text
    kind, attempts = row.warm
    assert rig.attempts.count - before == attempts
    if kind == "stale":
        assert response.headers[STALE_HEADER] == row.code
        assert response.json()["access_token"] == first.json()["access_token"]
        assert 0 < response.json()["expires_in"] <= 200
        assert "serving a stale but still valid token" in logged(caplog)
    else:
        assert STALE_HEADER.lower() not in response.headers
        assert response.json()["access_token"] != first.json()["access_token"]


# --- rules around the matrix ------------------------------------------------------------------
async def test_the_tls_token_endpoint_works_once_its_ca_is_trusted_through_ssl_cert_file(
    stack: Stack, tls_tokens: tuple[TokenServer, RunningServer], monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    """The TLS failure above is a trust problem only: with SSL_CERT_FILE naming the CA, the same endpoint works."""
    app, running = tls_tokens
    app.accept(stack.client_id, stack.client_secret)
    monkeypatch.setenv("SSL_CERT_FILE", stack.servers.pki.ca)
    async with rig_on(stack, host) as rig:
        await rig.start(settings={"BROKER_ILEVEL_TOKEN_URL": running.url + "/oauth/token"})
        response, _ = await rig.get()
    assert response.status_code == 200, response.text
    assert response.json()["access_token"] == app.issued_tokens[-1]
    sensitive(app.issued_tokens[-1])


async def test_invalid_client_rereads_key_vault_once_and_names_the_secrets_and_versions(
    stack: Stack, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    """A revoked secret: one token request, one re-read of each secret, and a 502 naming secrets and versions."""
    revoke_pair(stack)
    async with rig_on(stack, host) as rig:
        await rig.start()
        response, _ = await rig.get()
    assert response.status_code == 502
    description = response.json()["error_description"]
    assert SECRET in description
    assert stack.kv.versions(SECRET)[-1] in description
    assert rig.attempts.count == 1
    assert dict(stack.kv.reads) == {"ilevel-client-id": 2, SECRET: 2}


def revoke_pair(stack: Stack) -> None:
    stack.tokens.revoke(stack.client_id, stack.client_secret)


async def test_a_rejected_secret_is_negative_cached_so_later_callers_make_no_token_request(
    stack: Stack, host: str
) -> None:
    """Within 60 s of an invalid_client, callers get the 502 without any token request; after that it is retried."""
    revoke_pair(stack)
    async with rig_on(stack, host) as rig:
        await rig.start()
        first, _ = await rig.get()
        held, _ = await rig.get()  # inside the 10 s failure hold: not even a Key Vault read
        reads_after_hold = sum(stack.kv.reads.values())
        rig.clock.advance(11)
        negative, _ = await rig.get()  # past the hold, inside the 60 s negative cache
        rig.clock.advance(50)
        retried, _ = await rig.get()  # past the negative cache
    assert [r.status_code for r in (first, held, negative, retried)] == [502, 502, 502, 502]
    assert {r.json()["error"] for r in (first, held, negative, retried)} == {"invalid_client"}
    assert reads_after_hold == 4
    assert rig.attempts.count == 2, "one request at the first failure, none while negative-cached, one after"


async def test_a_new_secret_version_bypasses_the_negative_cache(stack: Stack, host: str) -> None:
    """After a rejection, a new version in Key Vault is tried at the next fetch (past the 10 s hold), not after 60 s."""
    revoke_pair(stack)
    async with rig_on(stack, host) as rig:
        await rig.start()
        failed, _ = await rig.get()
        stack.rotate_secret()
        rig.clock.advance(11)
        response, _ = await rig.get()
    assert failed.status_code == 502
    assert response.status_code == 200, response.text
    assert rig.attempts.count == 2


async def test_a_stream_of_failing_callers_is_not_a_stream_of_upstream_requests(stack: Stack, host: str) -> None:
    """Thirty callers over 9 s while the endpoint answers 500: one fetch (three attempts), one read per secret."""
    stack.tokens.default_reply = Reply(500)
    async with rig_on(stack, host) as rig:
        await rig.start()
        statuses = []
        for _ in range(30):
            response, _ = await rig.get()
            statuses.append(response.status_code)
            rig.clock.advance(0.3)
    assert set(statuses) == {503}
    assert rig.attempts.count == ATTEMPTS
    assert dict(stack.kv.reads) == {"ilevel-client-id": 1, SECRET: 1}


async def test_a_held_failure_tells_the_caller_when_to_come_back(stack: Stack, host: str) -> None:
    """A caller arriving during the failure hold gets the same 503 with the Retry-After still to run."""
    stack.tokens.default_reply = Reply(503)
    async with rig_on(stack, host) as rig:
        await rig.start()
        await rig.get()
        rig.clock.advance(12)
        held, _ = await rig.get()
    assert held.status_code == 503
    assert held.headers["retry-after"] == "18"


async def test_an_expired_token_is_never_served_when_the_refresh_fails(stack: Stack, host: str) -> None:
    """Stale-but-valid stops at expiry: past it, a failed refresh is a 503, not the old token."""
    async with rig_on(stack, host) as rig:
        await rig.start()
        await rig.get()
        stack.tokens.default_reply = Reply(503)
        rig.clock.advance(3600)
        response, _ = await rig.get()
    assert response.status_code == 503
    assert response.json()["error"] == "upstream_unavailable"


async def test_key_vault_forbidden_names_the_vault_and_the_identity(stack: Stack, host: str) -> None:
    """A 403 from Key Vault says which vault and which managed identity (client id) needs the role."""
    stack.kv.forbid()
    async with rig_on(stack, host) as rig:
        await rig.start()
        response, _ = await rig.get()
    description = response.json()["error_description"]
    assert response.status_code == 502
    assert stack.env["KEY_VAULT_URL"] in description
    assert stack.servers.identity.client_id is not None
    assert stack.servers.identity.client_id in description
    assert "Key Vault Secrets User" in description


async def test_a_missing_secret_is_named(stack: Stack, host: str) -> None:
    """A 404 from Key Vault names the missing secret."""
    stack.kv.delete(SECRET)
    async with rig_on(stack, host) as rig:
        await rig.start()
        response, _ = await rig.get()
    assert (response.status_code, response.json()["error"]) == (502, "secret_not_found")
    assert repr(SECRET) in response.json()["error_description"]


async def test_a_disabled_latest_version_falls_back_to_the_newest_enabled_one(
    stack: Stack, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    """Versions old, rotated and a newer disabled one: the rotated one is sent, with a warning."""
    rotated = stack.rotate_secret()
    newest = stack.kv.set_secret(SECRET, sensitive(secrets.token_urlsafe(24)))
    stack.kv.set_enabled(SECRET, newest, False)
    async with rig_on(stack, host) as rig:
        await rig.start()
        response, _ = await rig.get()
    assert response.status_code == 200, response.text
    assert stack.tokens.requests[-1].client_id == stack.client_id
    expected = rotated_basic(stack, rotated)
    assert stack.tokens.requests[-1].headers["authorization"] == expected
    assert "latest version of secret 'ilevel-client-secret' is disabled" in logged(caplog)


def rotated_basic(stack: Stack, client_secret: str) -> str:
    return "Basic " + base64.b64encode(f"{stack.client_id}:{client_secret}".encode()).decode()


async def test_a_failed_key_vault_reread_keeps_the_secrets_read_before(
    stack: Stack, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    """With Key Vault down at the next fetch, the secrets read earlier get a fresh token, with a warning."""
    async with rig_on(stack, host) as rig:
        await rig.start()
        first, _ = await rig.get()
        stack.kv.default_reply = Reply(503)
        rig.clock.advance(3500)
        response, _ = await rig.get()
    assert response.status_code == 200
    assert STALE_HEADER.lower() not in response.headers
    assert response.json()["access_token"] != first.json()["access_token"]
    assert "read earlier" in logged(caplog)


# --- caller-side abuse ------------------------------------------------------------------------
ABUSE = {
    "query over 4 KiB": ("/api/token/ilevel?code=" + "a" * 4100, {}, 400),
    "headers over 16 KiB": ("/api/token/ilevel", {"X-Padding": "a" * 16500}, 431),
    "unknown query parameter": ("/api/token/ilevel?scope=all", {}, 400),
    "parameter given twice": ("/api/token/ilevel?min_validity=1&min_validity=2", {}, 400),
    "non-integer min_validity": ("/api/token/ilevel?min_validity=1.5", {}, 400),
    "negative min_validity": ("/api/token/ilevel?min_validity=-1", {}, 400),
    "min_validity over 3600": ("/api/token/ilevel?min_validity=3601", {}, 400),
    "bad force_refresh": ("/api/token/ilevel?force_refresh=yes", {}, 400),
    "upper-case provider": ("/api/token/ILEVEL", {}, 400),
    "provider with underscore": ("/api/token/i_level", {}, 400),
    "provider over 32 characters": ("/api/token/" + "a" * 33, {}, 400),
    "encoded dot-dot provider": ("/api/token/%2e%2e", {}, 400),
}


@pytest.mark.parametrize("case", list(ABUSE))
async def test_caller_abuse_is_refused_without_fetching_anything(stack: Stack, case: str, host: str) -> None:
    """Oversized or malformed requests get 400 (431 for headers) and no token request or Key Vault read."""
    path, headers, status = ABUSE[case]
    async with rig_on(stack, host) as rig:
        await rig.start()
        response, _ = await rig.get(path, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"] == "invalid_request"
    assert rig.attempts.count == 0
    assert sum(stack.kv.reads.values()) == 0


async def test_the_functions_key_parameter_is_allowed(stack: Stack, host: str) -> None:
    """``code`` (the Functions key) is the one extra query parameter accepted."""
    async with rig_on(stack, host) as rig:
        await rig.start()
        response, _ = await rig.get("/api/token/ilevel?code=" + secrets.token_urlsafe(8) + "&min_validity=3600")
    assert response.status_code == 200


@pytest.mark.parametrize("value", ["true", "1"])
async def test_force_refresh_fetches_once_per_30_seconds_and_otherwise_serves_the_cached_token(
    stack: Stack, value: str, host: str
) -> None:
    """force_refresh forces one new fetch; a second within 30 s gets 200 with the cached token; after 30 s it works."""
    async with rig_on(stack, host) as rig:
        await rig.start()
        first, _ = await rig.get()
        forced, _ = await rig.get(f"/api/token/ilevel?force_refresh={value}")
        limited, _ = await rig.get(f"/api/token/ilevel?force_refresh={value}")
        rig.clock.advance(30)
        again, _ = await rig.get(f"/api/token/ilevel?force_refresh={value}")
    tokens = [r.json()["access_token"] for r in (first, forced, limited, again)]
    assert {r.status_code for r in (first, forced, limited, again)} == {200}
    assert tokens[1] != tokens[0]
    assert tokens[2] == tokens[1]
    assert tokens[3] not in tokens[:3]
    assert rig.attempts.count == 3
