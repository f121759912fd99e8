"""``python -m broker serve`` over real HTTP: the same app under uvicorn, against the real-protocol stand-ins."""

from __future__ import annotations

import importlib.util
import os
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

from broker.standin.serve import wait_until_healthy
from tests.conftest import ROLE, Stack, leaks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "broker", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture
def served(stack: Stack) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    env = {**os.environ, **stack.env}
    env.update(
        REQUESTS_CA_BUNDLE=stack.servers.pki.ca,
        BROKER_KEY_VAULT_VERIFY_CHALLENGE_RESOURCE="false",
    )
    process = start(env, "serve", "--host", "127.0.0.1", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    if not wait_until_healthy(base, process, timeout_s=20):
        process.kill()
        pytest.fail(f"broker did not start: {process.communicate()[0][-2000:]}")
    yield base, process
    process.terminate()
    output = process.communicate(timeout=10)[0]
    assert not leaks(output), "the server's log output leaks a secret or token"


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


def test_switching_caller_auth_off_is_refused_on_a_non_loopback_address(stack: Stack) -> None:
    """BROKER_INSECURE_DISABLE_CALLER_AUTH with --host 0.0.0.0 exits with an error naming the setting."""
    env = {**os.environ, **stack.env, "BROKER_INSECURE_DISABLE_CALLER_AUTH": "true"}
    process = start(env, "serve", "--host", "0.0.0.0", "--port", str(free_port()))
    output = process.communicate(timeout=30)[0]
    assert process.returncode == 2
    assert "BROKER_INSECURE_DISABLE_CALLER_AUTH" in output


def test_an_invalid_setting_stops_serve_with_its_name(stack: Stack) -> None:
    """A bad setting is reported in one line that names it, with no stack trace."""
    env = {**os.environ, **stack.env, "BROKER_ILEVEL_AUTH_METHOD": "basic"}
    process = start(env, "serve", "--port", str(free_port()))
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
