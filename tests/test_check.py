"""``python -m broker check``: one verdict line and an exit code for every diagnosis, against local servers.

Never a secret or token value printed, and never a hint that would put one on a command line.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.__main__ import main
from broker.config import load_settings
from broker.standin.faults import Reply
from broker.standin.serve import blackhole_listener, closed_port
from broker.tokens import fingerprint
from tests.conftest import Stack, leaks, sensitive

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(stack: Stack) -> Stack:
    stack.export_environment()
    return stack


@dataclass
class Outcome:
    code: int
    verdict: str
    text: str


def check(capsys: pytest.CaptureFixture[str], *args: str) -> Outcome:
    """Run ``python -m broker check`` in process; its verdict line, exit code and whole output."""
    code = main(["check", *args])
    text = capsys.readouterr().out
    assert not leaks(text), "check printed a secret or token"
    assert "python -c" not in text and "VALUE" not in text, "a hint that puts a secret on a command line"
    verdicts = [line for line in text.splitlines() if line.startswith("verdict: ")]
    assert len(verdicts) == 1 and text.rstrip().endswith(verdicts[0]), "one verdict line, last"
    return Outcome(code, verdicts[0].removeprefix("verdict: "), text)


def check_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(["check", *args, "--json"])
    out = capsys.readouterr().out
    assert not leaks(out)
    return code, json.loads(out)


def test_success_shows_lifetime_type_and_safe_jwt_claims_but_never_the_token(
    env: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """With working credentials: exit 0, verdict OK, token type and lifetime, JWT header and safe claims only."""
    result = check(capsys)
    assert (result.code, result.verdict) == (0, "OK: provider ilevel gets tokens with the configured settings")
    code, report = check_json(capsys)
    assert code == 0 and report["ok"] is True and report["verdict"] == result.verdict
    token = report["token"]
    assert isinstance(token, dict)
    assert token["token_type"] == "Bearer" and token["lifetime_s"] == 3600
    assert token["jwt_header"]["alg"] == "HS256"
    assert set(token["jwt_claims"]) <= {"iss", "aud", "exp", "scope", "client_id_sha256"}
    assert token["jwt_claims"]["client_id_sha256"] == fingerprint(env.client_id), "the client id by fingerprint only"
    assert token["sha256"] == fingerprint(env.tokens.issued_tokens[-1])
    secret = report["secrets"][1]  # type: ignore[index]
    assert secret["id"] == f"{env.env['KEY_VAULT_URL']}secrets/ilevel-client-secret/{secret['version']}"
    assert secret["enabled"] is True and secret["created"].endswith("Z")
    assert all(isinstance(a["latency_ms"], float) for a in report["attempts"])  # type: ignore[union-attr]
    for issued in env.tokens.issued_tokens:
        assert issued not in result.text


@pytest.mark.parametrize(
    ("accepted", "settings", "verdict"),
    [
        (
            {"basic_form"},
            {},
            "set BROKER_ILEVEL_AUTH_METHOD=client_secret_basic and BROKER_ILEVEL_BASIC_ENCODING=form:",
        ),
        ({"post"}, {}, "set BROKER_ILEVEL_AUTH_METHOD=client_secret_post:"),
        (
            {"basic_raw"},
            {"BROKER_ILEVEL_AUTH_METHOD": "client_secret_post"},
            "set BROKER_ILEVEL_AUTH_METHOD=client_secret_basic and BROKER_ILEVEL_BASIC_ENCODING=raw:",
        ),
    ],
)
def test_finds_the_client_auth_variant_the_server_accepts_and_names_the_setting(
    env: Stack, capsys: pytest.CaptureFixture[str], accepted: set[str], settings: dict[str, str], verdict: str
) -> None:
    """A server accepting only another variant than the configured one: the verdict is the setting to change."""
    env.tokens.variants = accepted  # type: ignore[assignment]
    for key, value in settings.items():
        env.monkeypatch.setenv(key, value)
    result = check(capsys)
    assert result.code == 1
    assert result.verdict.startswith(verdict)
    assert "tried" in result.text and "invalid_client" in result.text


def test_wrong_credentials_fail_every_variant_and_show_fingerprints(
    env: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """No variant works: the credentials are wrong; names, lengths and fingerprints, and a prompt-based compare."""
    env.tokens.revoke(env.client_id, env.client_secret)
    result = check(capsys)
    assert result.code == 1
    assert result.verdict.startswith("fix the credentials: the token endpoint refused secrets ilevel-client-id")
    assert "python -m broker fingerprint" in result.verdict
    code, report = check_json(capsys)
    assert code == 1 and len(report["attempts"]) == 3  # type: ignore[arg-type]
    secret = report["secrets"][1]  # type: ignore[index]
    assert secret["name"] == "ilevel-client-secret" and secret["length"] == len(env.client_secret)
    assert len(secret["sha256"]) == 8


def test_a_wrong_token_url_is_the_verdict_and_check_stops_there(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """A token URL that answers 404 is not a token endpoint: fix BROKER_ILEVEL_TOKEN_URL, not the credentials."""
    wrong = env.servers.url("tokens") + "/v1/tokn"
    env.monkeypatch.setenv("BROKER_ILEVEL_TOKEN_URL", wrong)
    result = check(capsys)
    assert result.code == 1
    assert result.verdict.startswith(f"fix BROKER_ILEVEL_TOKEN_URL: {wrong} answered HTTP 404")
    assert result.text.count("  tried ") == 1
    assert "credentials" not in result.verdict


def test_a_token_url_answering_html_is_the_verdict(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """A 200 that is not JSON (a login page, a docs site) also points at BROKER_ILEVEL_TOKEN_URL."""
    env.tokens.default_reply = Reply(status=200, body=b"<html>portal</html>", content_type="text/html")
    result = check(capsys)
    assert result.code == 1
    assert result.verdict.startswith("fix BROKER_ILEVEL_TOKEN_URL: ")
    assert result.text.count("  tried ") == 1


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        ('"{v}"', "wrapping quotes"),
        ("\ufeff{v}", "a byte-order mark (BOM) at the start"),
        ("{v}\n{v}", "a newline"),
    ],
)
def test_a_paste_accident_is_the_verdict_alone(
    env: Stack, capsys: pytest.CaptureFixture[str], stored: str, problem: str
) -> None:
    """Quotes, a BOM or an inner newline: the verdict names the secret and the accident, nothing else."""
    env.kv.set_secret("ilevel-client-secret", stored.format(v=env.client_secret))
    result = check(capsys)
    assert result.code == 1
    assert result.verdict.startswith(f"store secret ilevel-client-secret again without {problem}")
    assert "--name ilevel-client-secret --file" in result.verdict
    assert "fix the credentials" not in result.text and "every client authentication variant" not in result.text
    assert result.text.count("  tried ") == 1, "one request shows it; no variant search with a broken value"


@pytest.mark.parametrize("stored", ["{v}\n", "  {v}  "])
def test_whitespace_the_broker_strips_passes_with_advice(
    env: Stack, capsys: pytest.CaptureFixture[str], stored: str
) -> None:
    """A trailing newline or surrounding spaces are stripped by the broker: OK, with advice to store it cleanly."""
    env.kv.set_secret("ilevel-client-secret", stored.format(v=env.client_secret))
    result = check(capsys)
    assert result.code == 0 and result.verdict.startswith("OK")
    assert "do: secret ilevel-client-secret has" in result.text


def test_an_empty_secret_is_named(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty or whitespace-only secret is a failure naming the secret."""
    env.kv.set_secret("ilevel-client-id", "   ")
    result = check(capsys)
    assert result.code == 1
    assert result.verdict.startswith("fix secret 'ilevel-client-id' in Key Vault")


@pytest.mark.parametrize(
    ("vault", "reason"),
    [("https://kv-wrong-name.invalid/", "DNS lookup failed"), ("https://127.0.0.1:{port}/", "connection refused")],
)
def test_an_unreachable_vault_is_a_key_vault_url_verdict_naming_the_host(
    env: Stack, capsys: pytest.CaptureFixture[str], vault: str, reason: str
) -> None:
    """A wrong or unreachable KEY_VAULT_URL: check KEY_VAULT_URL, with the host and the cause; never "fix secret"."""
    url = vault.format(port=closed_port())
    env.monkeypatch.setenv("KEY_VAULT_URL", url)
    result = check(capsys)
    assert result.code == 1
    host = url.split("/")[2]
    assert result.verdict.startswith(f"check KEY_VAULT_URL: the vault host {host} cannot be reached ({reason}")
    assert "fix secret" not in result.text


@pytest.fixture
def fake_az(tmp_path: Path, env: Stack) -> Path:
    """A stand-in ``az`` CLI on PATH (the one thing that cannot run here), and a developer machine's environment:
    no managed-identity endpoint, and azure-identity's developer credentials only (no IMDS probe off loopback)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env.monkeypatch.setenv("PATH", str(bin_dir))
    env.monkeypatch.delenv("IDENTITY_ENDPOINT")
    env.monkeypatch.delenv("IDENTITY_HEADER")
    env.monkeypatch.delenv("AZURE_AUTHORITY_HOST")  # the Entra stand-in's http URL; azure-identity wants https
    env.monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "dev")
    return bin_dir


def write_az(bin_dir: Path, *, token: str | None) -> None:
    """``az account get-access-token``: a token when signed in, else the CLI's own "run az login" error."""
    if token is None:
        body = "sys.stderr.write(\"ERROR: Please run 'az login' to setup account.\\n\")\nsys.exit(1)\n"
    else:
        reply = {"accessToken": token, "expires_on": int(time.time()) + 3600, "tokenType": "Bearer"}
        body = f"print({json.dumps(json.dumps(reply))})\n"
    script = bin_dir / "az"
    script.write_text(f"#!{sys.executable}\nimport sys\n{body}", encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@pytest.mark.slow
@pytest.mark.parametrize("installed", [False, True])
def test_no_az_login_says_which_credential_was_tried_and_to_run_az_login(
    fake_az: Path, capsys: pytest.CaptureFixture[str], installed: bool
) -> None:
    """On a developer machine without a usable az login: DefaultAzureCredential, the CLI's state, `az login`."""
    if installed:
        write_az(fake_az, token=None)
    result = check(capsys)
    assert result.code == 1
    assert result.verdict.startswith("sign in: DefaultAzureCredential found no credential for Key Vault (Azure CLI: ")
    assert ("az login" if installed else "not found") in result.verdict.split(")")[0]
    assert "Run `az login`" in result.verdict
    assert "AZURE_CLIENT_ID" not in result.verdict.split(";")[0] and "fix secret" not in result.text


def test_a_managed_identity_the_app_does_not_have_names_azure_client_id(
    env: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """In Azure, an AZURE_CLIENT_ID that is not the app's identity: ManagedIdentityCredential, the setting, the fix."""
    wrong = str(uuid.uuid4())
    env.monkeypatch.setenv("AZURE_CLIENT_ID", wrong)
    result = check(capsys)
    assert result.code == 1
    assert result.verdict.startswith(
        f"fix the managed identity: ManagedIdentityCredential (user-assigned, AZURE_CLIENT_ID={wrong})"
    )
    assert "assign the user-assigned identity to the Function App" in result.verdict


def test_check_shows_the_start_up_warnings_serve_logs(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown BROKER_* settings and a provider serving nobody are shown by check as serve logs them."""
    env.monkeypatch.setenv("BROKER_ILEVEL_ALLOWED_ROLE", "Token.Read.ilevel")
    env.monkeypatch.setenv("BROKER_ILEVEL_ALLOWED_ROLES", "")
    warnings = load_settings(os.environ).warnings
    assert len(warnings) == 2
    result = check(capsys)
    assert result.code == 0
    for warning in warnings:
        assert f"  warning: {warning}" in result.text


def test_check_needs_neither_tenant_nor_audience(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """check authenticates no caller: without BROKER_TENANT_ID and BROKER_AUDIENCE it still runs to OK."""
    env.monkeypatch.delenv("BROKER_TENANT_ID")
    env.monkeypatch.delenv("BROKER_AUDIENCE")
    assert check(capsys).code == 0


@pytest.mark.parametrize("where", ["before", "after"])
def test_settings_file_is_accepted_before_or_after_the_subcommand(
    stack: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path, where: str
) -> None:
    """``--settings FILE check`` and ``check --settings FILE`` both read the file's Values."""
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": stack.env}), encoding="utf-8")
    for key in stack.env:  # whatever the file puts in the environment is undone after the test
        stack.monkeypatch.setenv(key, "")
        stack.monkeypatch.delenv(key)
    stack.monkeypatch.setenv("REQUESTS_CA_BUNDLE", stack.servers.pki.ca)
    stack.monkeypatch.setenv("BROKER_KEY_VAULT_VERIFY_CHALLENGE_RESOURCE", "false")
    argv = ["--settings", str(path), "check"] if where == "before" else ["check", "--settings", str(path)]
    assert main(argv) == 0
    assert "verdict: OK" in capsys.readouterr().out


def test_placeholders_from_the_example_settings_are_refused_with_what_to_fill_in(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """local.settings.example.json as shipped: exit 2 and one line naming the placeholder to replace."""
    example = json.loads((REPO / "local.settings.example.json").read_text(encoding="utf-8"))["Values"]
    for key in example:
        stack.monkeypatch.setenv(key, "")
        stack.monkeypatch.delenv(key)
    assert main(["--settings", str(REPO / "local.settings.example.json"), "check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("configuration error: KEY_VAULT_URL still holds the placeholder")
    assert "azd env get-value KEY_VAULT_URL" in err[-1]


@pytest.mark.slow
def test_network_failures_name_the_host(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """DNS, connection refused and connect timeout on the token URL: fix the URL or the network, naming the host."""
    cases = {
        "https://broker-check.invalid/oauth/token": "DNS lookup failed",
        f"http://127.0.0.1:{closed_port()}/oauth/token": "connection refused",
    }
    for url, reason in cases.items():
        env.monkeypatch.setenv("BROKER_ILEVEL_TOKEN_URL", url)
        result = check(capsys)
        assert result.code == 1
        assert result.verdict.startswith("fix BROKER_ILEVEL_TOKEN_URL or the network: ")
        assert reason in result.verdict and url.split("/")[2] in result.verdict
    with blackhole_listener() as (host, port):
        env.monkeypatch.setenv("BROKER_ILEVEL_TOKEN_URL", f"http://{host}:{port}/oauth/token")
        env.monkeypatch.setenv("BROKER_TOKEN_BUDGET_SECONDS", "2")
        result = check(capsys)
    assert result.code == 1
    assert "Timed out connecting to" in result.verdict or "did not answer within the budget" in result.verdict
    assert f"{host}:{port}" in result.verdict


def test_a_tls_failure_is_diagnosed(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """A token endpoint whose certificate is not trusted is reported as a TLS failure naming the host."""
    vault = env.servers.url("key_vault")  # a TLS server whose CA the broker's httpx client does not trust
    env.monkeypatch.setenv("BROKER_ILEVEL_TOKEN_URL", f"{vault}/oauth/token")
    result = check(capsys)
    assert result.code == 1
    assert result.verdict.startswith("fix BROKER_ILEVEL_TOKEN_URL or the network: TLS handshake")


def test_an_http_error_status_is_reported(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """A 500 from the token endpoint: retry later, with its status, without trying other variants."""
    env.tokens.default_reply = Reply(status=500, body=b"<html>oops</html>", content_type="text/html")
    result = check(capsys)
    assert result.code == 1
    assert result.verdict.startswith("retry later: the token endpoint is failing") and "answered 500" in result.verdict
    assert result.text.count("  tried ") == 1


def test_an_unknown_provider_is_reported(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """Asking for a provider that is not configured names BROKER_PROVIDERS."""
    result = check(capsys, "nope")
    assert result.code == 1
    assert result.verdict.startswith("add provider 'nope' to BROKER_PROVIDERS")


@pytest.mark.slow
def test_after_azd_up_check_runs_against_the_deployed_vault_with_az_login(
    fake_az: Path, tmp_path: Path, env: Stack
) -> None:
    """The README's command: KEY_VAULT_URL from `azd env get-value`, az login's token, nothing else set."""
    token = sensitive(secrets.token_urlsafe(32))
    env.servers.identity.issued_tokens.add(token)  # the vault stand-in accepts this as az login's token
    try:
        write_az(fake_az, token=token)
        azd = fake_az / "azd"  # stand-in: `azd env get-value KEY_VAULT_URL` prints the provisioned vault's URI
        azd.write_text(f"#!/bin/sh\necho '{env.env['KEY_VAULT_URL']}'\n", encoding="utf-8")
        azd.chmod(0o755)
        keep = ("PATH", "HOME", "AZURE_TOKEN_CREDENTIALS", "REQUESTS_CA_BUNDLE")
        child = {k: os.environ[k] for k in keep if k in os.environ}
        # Stand-in only: the vault's test CA and host, and the token URL of the stand-in iLevel.
        child.update(
            PATH=f"{fake_az}:/usr/bin:/bin",
            BROKER_KEY_VAULT_VERIFY_CHALLENGE_RESOURCE="false",
            BROKER_ILEVEL_TOKEN_URL=env.token_url,
            PYTHONPATH=str(REPO),
        )
        command = f'KEY_VAULT_URL="$(azd env get-value KEY_VAULT_URL)" {sys.executable} -m broker check ilevel'
        done = subprocess.run(
            ["/bin/sh", "-c", command], env=child, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
    finally:
        env.servers.identity.issued_tokens.discard(token)
    assert not leaks(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verdict: OK: provider ilevel gets tokens" in done.stdout
    assert env.kv.unauthenticated_requests >= 1, "the real SecretClient went through the vault's challenge"


@pytest.mark.slow
def test_fingerprint_reads_the_value_from_a_prompt_and_prints_what_check_prints() -> None:
    """`python -m broker fingerprint` takes the value on stdin/a prompt, never argv, and prints check's fingerprint."""
    value = sensitive(secrets.token_urlsafe(24))
    done = subprocess.run(
        [sys.executable, "-m", "broker", "fingerprint"],
        input=value + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert done.returncode == 0
    assert f"sha256 {fingerprint(value)}" in done.stdout
    assert value not in done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("denial", "inside_app", "verdict"),
    [
        (
            "connection",
            True,
            "reach the vault through its private endpoint: Key Vault 127.0.0.1:{port} answered 403 "
            "ForbiddenByConnection",
        ),
        (
            "connection",
            False,
            "check from inside the app: Key Vault 127.0.0.1:{port} answered 403 ForbiddenByConnection",
        ),
        (
            "firewall",
            True,
            "reach the vault through its private endpoint: Key Vault 127.0.0.1:{port} answered 403 ForbiddenByFirewall",
        ),
        ("firewall", False, "open the vault's firewall to this machine: Key Vault 127.0.0.1:{port} answered 403"),
        (
            "rbac",
            True,
            "grant the Key Vault Secrets User role: Key Vault 127.0.0.1:{port} refused the app's managed "
            "identity (AZURE_CLIENT_ID=",
        ),
        (
            "rbac",
            False,
            "grant the Key Vault Secrets User role: Key Vault 127.0.0.1:{port} refused the account "
            "DefaultAzureCredential signed in with (az login) (403 ForbiddenByRbac)",
        ),
    ],
)
def test_a_vault_closed_by_its_network_is_not_a_missing_role(
    env: Stack, fake_az_signed_in: Path, capsys: pytest.CaptureFixture[str], denial: str, inside_app: bool, verdict: str
) -> None:
    """Key Vault's 403 ForbiddenByConnection/ForbiddenByFirewall is the network, and no role fixes it; only a 403
    from the authorization layer (ForbiddenByRbac) asks for the Key Vault Secrets User role. Advice fits where
    check runs: the app's own network path, or a laptop (check --remote, or the operator's address)."""
    if inside_app:  # the app's console: App Service's managed-identity endpoint (the stand-in's)
        for name, value in env.servers.identity.environment(env.servers.url("identity")).items():
            env.monkeypatch.setenv(name, value)
    env.kv.forbid(denial)  # type: ignore[arg-type]
    result = check(capsys)
    port = env.servers.url("key_vault").rsplit(":", 1)[1]
    assert result.code == 1
    assert result.verdict.startswith(verdict.format(port=port)), result.verdict
    network = denial != "rbac"
    assert ("role" not in result.verdict.split(":", 1)[0]) is network
    assert ("no role assignment changes" in result.verdict) is network
    if network and not inside_app:
        assert "python -m broker check --remote https://" in result.verdict
        assert "BROKER_OPERATOR_IP_ADDRESSES" in result.verdict or "--remote" in result.verdict
    assert env.kv.reads and not env.kv.list_calls, "a network 403 is no disabled secret: no version listing"


@pytest.fixture
def fake_az_signed_in(fake_az: Path, env: Stack) -> Iterator[Path]:
    """A laptop signed in with az login, whose token the vault stand-in accepts."""
    token = sensitive(secrets.token_urlsafe(32))
    env.servers.identity.issued_tokens.add(token)
    write_az(fake_az, token=token)
    yield fake_az
    env.servers.identity.issued_tokens.discard(token)
