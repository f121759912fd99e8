"""``GET``/``HEAD /api/diagnostics[/{provider}]`` on both hosts, who may call it, and ``check --remote`` against it.

Every answer (200s included) is scanned for secrets, tokens (upstream, managed-identity, the caller's own)
and the identity header.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.__main__ import main
from broker.check import run_check
from broker.runtime import Overrides
from broker.standin.faults import Reply
from broker.standin.serve import closed_port
from tests.conftest import ROLE, Stack, leaks, sensitive
from tests.hosts import open_host

OPERATOR = "Broker.Operator"
SCOPE = "Diagnostics.Run"
AZURE_CLI = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
OTHER_CLIENT = "8c6d1e2f-3a4b-4c5d-9e6f-7a8b9c0d1e2f"
THIRD_CLIENT = "1f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b"


def user_token(stack: Stack, *, roles: tuple[str, ...] = (OPERATOR,), scp: str = SCOPE, client: str = AZURE_CLI) -> str:
    """A delegated token as the Azure CLI gets it for an az login user: scp, the user's app roles, appid the CLI."""
    return stack.caller(roles=roles, appid=client, extra_claims={"scp": scp, "idtyp": "user"})


def app_token(stack: Stack, *, roles: tuple[str, ...] = (OPERATOR,)) -> str:
    return stack.caller(roles=roles)


def scan(stack: Stack, response: httpx.Response) -> None:
    """No secret, no token, no identity header value in any answer, body or headers."""
    for token in [*stack.tokens.issued_tokens, *stack.servers.identity.issued_tokens]:
        sensitive(token)
    sensitive(stack.servers.identity.identity_header)
    text = response.text + " " + " ".join(f"{k}: {v}" for k, v in response.headers.items())
    assert not leaks(text), f"a diagnostics answer leaks {leaks(text)}"
    assert "Traceback" not in text


@dataclass
class Diag:
    client: httpx.AsyncClient
    stack: Stack

    async def get(
        self, path: str = "/api/diagnostics/ilevel", *, token: str | None, method: str = "GET"
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self.client.request(method, path, headers=headers)
        scan(self.stack, response)
        return response


@pytest.fixture
async def diag(stack: Stack, host: str) -> Any:
    async with open_host(host, stack.broker()) as client:
        yield Diag(client, stack)


# --- who may call it ---------------------------------------------------------------------------------


async def test_a_user_with_the_operator_role_and_the_scope_gets_the_report(diag: Diag, stack: Stack) -> None:
    """An az login user's token (scp Diagnostics.Run, roles Broker.Operator): 200, check's report and verdict."""
    response = await diag.get(token=user_token(stack))
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["ok"] is True
    assert report["verdict"] == "OK: provider ilevel gets tokens with the configured settings"
    assert report["attempts"][0]["result"] == "accepted" and report["attempts"][0]["latency_ms"] >= 0
    assert {s["name"] for s in report["secrets"]} == {"ilevel-client-id", "ilevel-client-secret"}
    assert all(set(s) >= {"id", "enabled", "created", "sha256"} and "value" not in s for s in report["secrets"])
    assert report["cache"]["state"] == "empty" and report["fleet"]["state"] == "off"
    assert report["instance"]["version"] and report["instance"]["instance_id"]
    assert response.headers["cache-control"] == "no-store"


async def test_an_application_with_the_operator_role_gets_the_report(diag: Diag, stack: Stack) -> None:
    """An application token (a managed identity, a pipeline, a monitor) needs the role alone."""
    response = await diag.get(token=app_token(stack))
    assert response.status_code == 200 and response.json()["ok"] is True


async def test_head_runs_it_too_and_answers_without_a_body(diag: Diag, stack: Stack) -> None:
    """HEAD: the same status and headers, no body."""
    response = await diag.get(token=app_token(stack), method="HEAD")
    assert response.status_code == 200 and response.content == b""
    assert response.headers["x-broker-diagnostics"] == "ok"


@pytest.mark.parametrize(
    ("who", "status", "error"),
    [
        ("an application with only a token role", 403, "insufficient_scope"),
        ("a user without the operator role", 403, "insufficient_scope"),
        ("a user with the role but not the scope", 403, "insufficient_scope"),
        ("a user with the role and the scope through another client", 403, "insufficient_scope"),
        ("nobody (no token)", 401, "invalid_token"),
    ],
)
async def test_callers_without_the_role_or_the_scope_are_refused_before_anything_runs(
    diag: Diag, stack: Stack, who: str, status: int, error: str
) -> None:
    """Without Broker.Operator (and, for a user, Diagnostics.Run): 401/403 and no Key Vault or token traffic."""
    token = {
        "an application with only a token role": lambda: app_token(stack, roles=(ROLE,)),
        "a user without the operator role": lambda: user_token(stack, roles=()),
        "a user with the role but not the scope": lambda: user_token(stack, scp="User.Read"),
        "a user with the role and the scope through another client": lambda: user_token(stack, client=OTHER_CLIENT),
        "nobody (no token)": lambda: None,
    }[who]()
    for path in ("/api/diagnostics/ilevel", "/api/diagnostics"):
        response = await diag.get(path, token=token)
        assert (response.status_code, response.json()["error"]) == (status, error), response.text
    assert stack.tokens.request_count == 0 and sum(stack.kv.reads.values()) == 0


async def test_a_user_through_a_client_named_in_the_setting_gets_the_report(stack: Stack, host: str) -> None:
    """BROKER_DIAGNOSTICS_CLIENT_IDS adds clients to the Azure CLI; one not named there is refused, saying so."""
    broker = stack.broker(stack.settings(BROKER_DIAGNOSTICS_CLIENT_IDS=f" {OTHER_CLIENT.upper()} ,"))
    async with open_host(host, broker) as client:
        diag = Diag(client, stack)
        assert (await diag.get(token=user_token(stack, client=OTHER_CLIENT))).status_code == 200
        assert (await diag.get(token=user_token(stack))).status_code == 200
        refused = await diag.get(token=user_token(stack, client=THIRD_CLIENT))
    assert refused.status_code == 403
    assert THIRD_CLIENT in refused.json()["error_description"]
    assert "BROKER_DIAGNOSTICS_CLIENT_IDS" in refused.json()["error_description"]
    await broker.aclose()


async def test_a_user_token_is_refused_on_the_token_route(diag: Diag, stack: Stack) -> None:
    """The token route takes application tokens only: a user's, even with every role, is refused there."""
    token = user_token(stack, roles=(ROLE, OPERATOR))
    response = await diag.get("/api/token/ilevel", token=token)
    assert response.status_code == 401 and response.json()["error"] == "invalid_token"
    assert stack.tokens.request_count == 0


async def test_an_unknown_provider_is_404_naming_the_providers_to_an_operator(diag: Diag, stack: Stack) -> None:
    """An operator asking for a provider the broker lacks learns which it has (check --remote's verdict)."""
    response = await diag.get("/api/diagnostics/nope", token=app_token(stack))
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_provider" and response.json()["providers"] == ["ilevel"]


# --- the same verdict as check, for every failure check knows -----------------------------------------


def failures(stack: Stack) -> dict[str, tuple[Callable[[], dict[str, str]], str]]:
    """Each failure check diagnoses: how to cause it (stand-in state, settings), and its verdict's start."""

    def settings(**changes: str) -> Callable[[], dict[str, str]]:
        return lambda: changes

    def state(action: Callable[[], object]) -> Callable[[], dict[str, str]]:
        def apply() -> dict[str, str]:
            action()
            return {}

        return apply

    tokens, kv = stack.tokens, stack.kv
    return {
        "another client auth variant": (
            state(lambda: setattr(tokens, "variants", {"basic_form"})),
            "set BROKER_ILEVEL_AUTH_METHOD=client_secret_basic and BROKER_ILEVEL_BASIC_ENCODING=form:",
        ),
        "wrong credentials": (
            state(lambda: tokens.revoke(stack.client_id, stack.client_secret)),
            "fix the credentials:",
        ),
        "a token URL that is no token endpoint": (
            settings(BROKER_ILEVEL_TOKEN_URL=stack.servers.url("tokens") + "/v1/tokn"),
            "fix BROKER_ILEVEL_TOKEN_URL:",
        ),
        "a token URL answering HTML": (
            state(
                lambda: setattr(tokens, "default_reply", Reply(status=200, body=b"<html/>", content_type="text/html"))
            ),
            "fix BROKER_ILEVEL_TOKEN_URL:",
        ),
        "a failing token endpoint": (
            state(lambda: setattr(tokens, "default_reply", Reply(status=500, body=b"oops"))),
            "retry later: the token endpoint is failing",
        ),
        "an unreachable token endpoint": (
            settings(BROKER_ILEVEL_TOKEN_URL=f"http://127.0.0.1:{closed_port()}/oauth/token"),
            "fix BROKER_ILEVEL_TOKEN_URL or the network:",
        ),
        "a paste accident": (
            state(lambda: kv.set_secret("ilevel-client-secret", f'"{stack.client_secret}"')),
            "store secret ilevel-client-secret again without wrapping quotes",
        ),
        "an empty secret": (state(lambda: kv.set_secret("ilevel-client-id", "  ")), "fix secret 'ilevel-client-id'"),
        "an unreachable vault": (
            settings(KEY_VAULT_URL=f"https://127.0.0.1:{closed_port()}/"),
            "check KEY_VAULT_URL: the vault host",
        ),
        "a managed identity the app does not have": (
            settings(AZURE_CLIENT_ID="00000000-0000-4000-8000-00000000dead"),
            "fix the managed identity: ManagedIdentityCredential (user-assigned",
        ),
        "no role on the vault": (state(lambda: kv.forbid("rbac")), "grant the Key Vault Secrets User role:"),
        "a vault without public access": (
            state(lambda: kv.forbid("connection")),
            "reach the vault through its private endpoint: Key Vault",
        ),
        "a vault firewall": (state(lambda: kv.forbid("firewall")), "reach the vault through its private endpoint:"),
    }


FAILURES = [
    "another client auth variant",
    "wrong credentials",
    "a token URL that is no token endpoint",
    "a token URL answering HTML",
    "a failing token endpoint",
    "an unreachable token endpoint",
    "a paste accident",
    "an empty secret",
    "an unreachable vault",
    "a managed identity the app does not have",
    "no role on the vault",
    "a vault without public access",
    "a vault firewall",
]


@pytest.mark.parametrize("failure", FAILURES)
async def test_each_failure_gets_the_verdict_check_gives_it(stack: Stack, host: str, failure: str) -> None:
    """The route's verdict for each failure is word for word the one a local check in the app would print."""
    cause, verdict = failures(stack)[failure]
    settings = stack.settings(**cause())
    async with open_host(host, stack.broker(settings)) as client:
        response = await Diag(client, stack).get(token=app_token(stack))
    assert response.status_code == 200 and response.json()["ok"] is False
    remote = response.json()["verdict"]
    options = {"connection_verify": stack.servers.pki.ca, "verify_challenge_resource": False, "retry_total": 1}
    local = await run_check(settings, "ilevel", Overrides(secret_client_options=options), env=os.environ)
    assert remote.startswith(verdict), remote
    assert remote == local.verdict
    assert response.headers["x-broker-diagnostics"] == "failed"


# --- cost ------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_one_run_per_provider_per_minute_reaches_the_token_endpoint(stack: Stack, host: str) -> None:
    """Calls within 60 s get the last report with its age and cost nothing upstream; then a new run."""
    clock = Clock()
    async with open_host(host, stack.broker(clock=clock)) as client:
        diag = Diag(client, stack)
        first = await diag.get(token=app_token(stack))
        assert first.json()["age_s"] == 0
        clock.now += 30
        for path in ("/api/diagnostics/ilevel", "/api/diagnostics"):
            again = await diag.get(path, token=user_token(stack))
            assert again.status_code == 200
        assert again.json()["providers"][0]["age_s"] == 30
        assert stack.tokens.request_count == 1 and stack.kv.reads["ilevel-client-secret"] == 1
        clock.now += 30
        await diag.get(token=app_token(stack))
        assert stack.tokens.request_count == 2


async def test_concurrent_first_calls_share_one_run(stack: Stack, host: str) -> None:
    """Ten operators at once on a cold instance: one token request."""
    stack.tokens.latency_s = 0.1
    async with open_host(host, stack.broker()) as client:
        diag = Diag(client, stack)
        token = app_token(stack)
        answers = await asyncio.gather(*(diag.get(token=token) for _ in range(10)))
    assert {a.status_code for a in answers} == {200}
    assert stack.tokens.request_count == 1


# --- check --remote against the running broker ----------------------------------------------------------


@pytest.fixture
def az(tmp_path: Path, stack: Stack) -> Path:
    """A stand-in ``az`` on PATH for the operator's DefaultAzureCredential (the one part that cannot run here):
    it answers ``az account get-access-token`` with a token the stand-in Entra minted, and records its arguments.
    The app side keeps its managed identity (IDENTITY_ENDPOINT); the operator side uses developer credentials."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stack.monkeypatch.setenv("PATH", str(bin_dir))
    stack.monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "dev")  # developer credentials only, no IMDS probe
    stack.monkeypatch.delenv(
        "AZURE_AUTHORITY_HOST", raising=False
    )  # the stand-in's http URL; azure-identity wants https
    return bin_dir


def write_az(bin_dir: Path, token: str) -> Path:
    reply = {"accessToken": token, "expires_on": int(time.time()) + 3600, "tokenType": "Bearer"}
    log = bin_dir / "az.args"
    script = bin_dir / "az"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nopen({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        f"print({json.dumps(json.dumps(reply))})\n",
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return log


async def remote_check(client: httpx.AsyncClient, *args: str) -> tuple[int, str]:
    """``python -m broker check --remote <the serve host>`` in a thread: the server runs on this loop."""
    url = str(client.base_url)
    code = await asyncio.to_thread(main, ["check", "--remote", url, "--app-id-uri", "api://ilevel-token-broker", *args])
    return code, ""


@pytest.mark.slow
async def test_check_remote_prints_the_apps_report_and_verdict_with_az_logins_token(
    stack: Stack, az: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real DefaultAzureCredential (through az) asks for the App ID URI; the output and exit code are
    a local check's, from the app; a failure gets the failure's verdict and exit 1; no token is printed."""
    token = user_token(stack)
    log = write_az(az, token)
    clock = Clock()
    async with open_host("serve", stack.broker(clock=clock)) as client:
        code, _ = await remote_check(client, "ilevel")
        out = capsys.readouterr().out
        assert code == 0, out
        assert out.rstrip().endswith("verdict: OK: provider ilevel gets tokens with the configured settings")
        assert "provider ilevel: OK" in out and "  instance: broker " in out and "  cache: " in out
        # AzureCliCredential turns the scope <App ID URI>/.default into az's --resource <App ID URI>.
        assert "get-access-token --output json --resource api://ilevel-token-broker" in log.read_text(encoding="utf-8")
        stack.tokens.revoke(stack.client_id, stack.client_secret)
        clock.now += 61
        code, _ = await remote_check(client)
        out = capsys.readouterr().out
    assert code == 1
    assert out.rstrip().splitlines()[-1].startswith("verdict: fix the credentials: the token endpoint refused")
    assert not leaks(out) and token not in out


@pytest.mark.slow
async def test_check_remote_without_the_role_says_to_get_it(
    stack: Stack, az: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An az login user without Broker.Operator: exit 1 and the verdict to get the role, from the broker's 403."""
    write_az(az, user_token(stack, roles=()))
    async with open_host("serve", stack.broker()) as client:
        code, _ = await remote_check(client, "ilevel")
    out = capsys.readouterr().out
    assert code == 1 and out.startswith("verdict: get the Broker.Operator role:")
