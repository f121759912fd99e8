"""``python -m broker serve`` over real HTTP: the same app under uvicorn, against the real-protocol stand-ins."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from azure.core.credentials import AccessToken

from tests.conftest import ROLE, Stack, leaks

LISTENING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "broker", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def listening_url(process: subprocess.Popen[str], seen: list[str], timeout_s: float = 30.0) -> str | None:
    """The URL the server logs once it listens (it binds port 0 itself: no free-port race), or None."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if not ready:
            continue
        line = process.stdout.readline()
        if not line:
            return None
        seen.append(line)
        match = LISTENING.search(line)
        if match:
            return match.group(1)
    return None


@pytest.fixture
def served(stack: Stack) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    env = {**os.environ, **stack.env}
    env.update(
        REQUESTS_CA_BUNDLE=stack.servers.pki.ca,
        BROKER_KEY_VAULT_VERIFY_CHALLENGE_RESOURCE="false",
    )
    process = start(env, "serve", "--host", "127.0.0.1", "--port", "0")
    seen: list[str] = []
    base = listening_url(process, seen)
    if base is None:
        process.kill()
        pytest.fail(f"broker did not start: {''.join(seen)[-2000:]}")
    yield base, process
    process.terminate()
    output = "".join(seen) + process.communicate(timeout=10)[0]
    assert not leaks(output), "the server's log output leaks a secret or token"


@pytest.mark.slow
def test_serve_returns_tokens_to_authenticated_callers_only(
    served: tuple[str, subprocess.Popen[str]], stack: Stack
) -> None:
    """Over real HTTP: 200 with a token for the caller with the role, 401 without, 403 without the role."""
    base, _ = served
    ok = httpx.get(f"{base}/api/token/ilevel", headers={"Authorization": f"Bearer {stack.caller()}"}, timeout=10)
    assert ok.status_code == 200
    assert ok.json()["access_token"] == stack.tokens.issued_tokens[-1]
    assert httpx.get(f"{base}/api/token/ilevel", timeout=10).status_code == 401
    denied = httpx.post(
        f"{base}/api/token/ilevel", headers={"Authorization": f"Bearer {stack.caller(roles=())}"}, timeout=10
    )
    assert denied.status_code == 403
    assert stack.kv.unauthenticated_requests >= 1, "the real SecretClient went through Key Vault's 401 challenge"


@pytest.mark.slow
def test_switching_caller_auth_off_is_refused_on_a_non_loopback_address(stack: Stack) -> None:
    """BROKER_INSECURE_DISABLE_CALLER_AUTH with --host 0.0.0.0 exits with an error naming the setting."""
    env = {**os.environ, **stack.env, "BROKER_INSECURE_DISABLE_CALLER_AUTH": "true"}
    process = start(env, "serve", "--host", "0.0.0.0", "--port", "0")
    output = process.communicate(timeout=30)[0]
    assert process.returncode == 2
    assert "BROKER_INSECURE_DISABLE_CALLER_AUTH" in output


@pytest.mark.slow
def test_an_invalid_setting_stops_serve_with_its_name(stack: Stack) -> None:
    """A bad setting is reported in one line that names it, with no stack trace."""
    env = {**os.environ, **stack.env, "BROKER_ILEVEL_AUTH_METHOD": "basic"}
    process = start(env, "serve", "--port", "0")
    output = process.communicate(timeout=30)[0]
    assert process.returncode == 2
    assert "BROKER_ILEVEL_AUTH_METHOD" in output
    assert "Traceback" not in output


class EntraStandinCredential:
    """A TokenCredential backed by the Entra stand-in: what a managed identity would get from Entra ID."""

    def __init__(self, stack: Stack, roles: tuple[str, ...]) -> None:
        self.stack = stack
        self.roles = roles

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        audience = scopes[0].removesuffix("/.default")
        return AccessToken(self.stack.caller(aud=audience, roles=self.roles), int(time.time()) + 3600)


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("call_broker", Path("docs/examples/call_broker.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_python_caller_snippet_in_the_docs_gets_a_token(
    served: tuple[str, subprocess.Popen[str]], stack: Stack
) -> None:
    """docs/callers.md's Python example, run as written against the local broker, returns the upstream token."""
    base, _ = served
    example = load_example()
    token = example.fetch_ilevel_token(
        base, "api://ilevel-token-broker/.default", EntraStandinCredential(stack, (ROLE,))
    )
    assert token == stack.tokens.issued_tokens[-1]
    with pytest.raises(example.BrokerError) as raised:
        example.fetch_ilevel_token(base, "api://ilevel-token-broker/.default", EntraStandinCredential(stack, ()))
    assert (raised.value.status, raised.value.error) == (403, "insufficient_scope")


@pytest.mark.slow
def test_the_asterisk_request_target_gets_a_json_answer_with_the_usual_headers(
    served: tuple[str, subprocess.Popen[str]],
) -> None:
    """``OPTIONS * HTTP/1.1`` (no framework page): 401 JSON with X-Request-Id and no-store, like any path."""
    base, _ = served
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := connection.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    assert lines[0].startswith("HTTP/1.1 401")
    assert headers["cache-control"] == "no-store"
    assert headers["x-request-id"]
    assert set(json.loads(body)) == {"error", "error_description"}
