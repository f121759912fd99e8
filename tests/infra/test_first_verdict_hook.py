"""The postdeploy verdict: a simulated `azd up` ends with check --remote's verdict and the next command.

The app is the real broker on the serve host against the stand-ins; the deployer's sign-in is the stand-in
``az`` (tests/infra/standin_az.py) that the real DefaultAzureCredential inside ``check --remote`` calls; the
hook runs the real ``python -m broker check --remote`` from the repository's .venv. Only its clock is ours.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from broker.standin.serve import closed_port
from tests.conftest import AUDIENCE, Stack
from tests.hosts import open_host
from tests.infra import standin_az as standin_az_cli
from tests.test_diagnostics_http import user_token

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra" / "hooks"))
import first_verdict as hook  # noqa: E402

SUBSCRIPTION = "0a1b2c3d-0000-4000-8000-00000000aaaa"
VAULT = "kv-broker-abc123"
NOT_ASSIGNED = (
    "ERROR: AADSTS501051: Application '04b07795-8ddb-461a-bbee-02f9e1bf7b46'(Microsoft Azure CLI) is not assigned "
    "to a role for the application 'api://ilevel-token-broker'(ilevel-token-broker-dev)."
)

# Each test runs the hook (and check --remote) in a process, as azd does.
pytestmark = pytest.mark.slow


@dataclass
class Clock:
    """The hook's clock: sleeping moves it; the waits are counted."""

    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def signed_in_az(tmp_path: Path, stack: Stack, answers: list[dict[str, str]]) -> Path:
    """The stand-in az on PATH, signed in as a user whose get-access-token answers are ``answers``."""
    state, bin_dir = standin_az_cli.install(
        tmp_path,
        {SUBSCRIPTION: stack.entra.tenant_id},
        default=SUBSCRIPTION,
        azd_subscription=SUBSCRIPTION,
        signed_in={"type": "user", "name": "deployer@contoso.example", "id": "d3b10e00-1111-4222-8333-444455556666"},
        access_tokens=answers,
    )
    stack.monkeypatch.setenv("STANDIN_AZ_STATE", str(state))
    stack.monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    stack.monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "dev")  # developer credentials only, no IMDS probe
    stack.monkeypatch.delenv("AZURE_AUTHORITY_HOST", raising=False)
    return state


def azd_env(url: str, **extra: str) -> dict[str, str]:
    """What azd passes the hook: the provision outputs and the azd environment."""
    return {"BROKER_URL": url, "BROKER_APP_ID_URI": AUDIENCE, "KEY_VAULT_NAME": VAULT, **extra}


async def simulated_azd_up(env: dict[str, str], *, wait_s: float = hook.WAIT_S) -> tuple[list[str], Clock]:
    """The postdeploy hook as azd runs it (in a thread: the app serves on this loop)."""
    lines: list[str] = []
    clock = Clock()

    def run() -> None:
        hook.first_verdict(env, sleep=clock.sleep, clock=clock, say=lines.append, windows=False, wait_s=wait_s)

    await asyncio.to_thread(run)
    return lines, clock


async def test_missing_secrets_end_with_the_two_commands_for_this_vault(stack: Stack, tmp_path: Path) -> None:
    """A fresh vault: the verdict names the missing secret; the next step is README step 2 with the vault filled in."""
    signed_in_az(tmp_path, stack, [{"token": user_token(stack)}])
    stack.kv.delete("ilevel-client-id")
    stack.kv.delete("ilevel-client-secret")
    broker = stack.broker()
    async with open_host("serve", broker) as client:
        lines, clock = await simulated_azd_up(azd_env(str(client.base_url).rstrip("/")))
    text = "\n".join(lines)
    verdict = next(line for line in lines if line.startswith("verdict: "))
    assert verdict.startswith("verdict: fix secret 'ilevel-client-id'") and "does not exist" in verdict
    assert f'az keyvault secret set --vault-name "{VAULT}" --name ilevel-client-id --value "$V" -o none' in text
    assert f'--vault-name "{VAULT}" --name ilevel-client-secret --value "$V" -o none; unset V' in text
    assert "read -rs V" in text and "how-operators-reach-the-vault" in text
    assert f'-m broker check --remote "{str(client.base_url).rstrip("/")}" --app-id-uri "{AUDIENCE}"' in text
    assert clock.sleeps == []
    await broker.aclose()


async def test_an_ok_verdict_ends_with_the_adf_quick_paths_next_command(stack: Stack, tmp_path: Path) -> None:
    """Secrets in place: verdict OK, then README step 3's commands."""
    signed_in_az(tmp_path, stack, [{"token": user_token(stack)}])
    broker = stack.broker()
    async with open_host("serve", broker) as client:
        lines, _ = await simulated_azd_up(azd_env(str(client.base_url).rstrip("/")))
    assert "verdict: OK: provider ilevel gets tokens with the configured settings" in lines
    assert any(line.strip().startswith('FACTORY_ID=$(az resource show -g "$ADF_RG" -n "$ADF"') for line in lines)
    assert "  azd hooks run preprovision" in lines
    assert not any(user_token.__name__ in line for line in lines)
    await broker.aclose()


async def test_a_role_not_yet_effective_is_waited_for_then_the_verdict_follows(stack: Stack, tmp_path: Path) -> None:
    """Entra refuses the deployer twice (AADSTS501051), then the role arrives: two waits, then OK."""
    state = signed_in_az(
        tmp_path, stack, [{"error": NOT_ASSIGNED}, {"error": NOT_ASSIGNED}, {"token": user_token(stack)}]
    )
    broker = stack.broker()
    async with open_host("serve", broker) as client:
        lines, clock = await simulated_azd_up(azd_env(str(client.base_url).rstrip("/")))
    assert clock.sleeps == [hook.POLL_S, hook.POLL_S]
    assert lines.count("first-verdict: waiting for the Broker.Operator role to reach your sign-in ...") == 2
    assert "verdict: OK: provider ilevel gets tokens with the configured settings" in lines
    calls = json.loads(state.read_text(encoding="utf-8"))["calls"]
    assert sum(call[:2] == ["account", "get-access-token"] for call in calls) == 3
    await broker.aclose()


async def test_a_role_that_never_arrives_says_why_and_what_to_run_later(stack: Stack, tmp_path: Path) -> None:
    """After the bounded wait: the verdict, why (the grant takes time, or needs an admin), and the command."""
    signed_in_az(tmp_path, stack, [{"error": NOT_ASSIGNED}])
    broker = stack.broker()
    async with open_host("serve", broker) as client:
        lines, clock = await simulated_azd_up(azd_env(str(client.base_url).rstrip("/")), wait_s=20)
    assert clock.now <= 20
    assert lines[-3].startswith("verdict: get the Broker.Operator role:")
    assert "does not carry Broker.Operator yet" in lines[-2]
    assert lines[-1].startswith("  Later: az login, then .venv/bin/python -m broker check --remote")
    await broker.aclose()


async def test_an_unreachable_app_says_why_and_what_to_run_later(stack: Stack, tmp_path: Path) -> None:
    """Nothing answers at BROKER_URL: bounded waits, then the reasons (starting, private, Deny policy)."""
    signed_in_az(tmp_path, stack, [{"token": user_token(stack)}])
    url = f"http://127.0.0.1:{closed_port()}"
    lines, clock = await simulated_azd_up(azd_env(url), wait_s=20)
    assert clock.sleeps == [hook.POLL_S]
    assert lines[-3].startswith("verdict: check the --remote URL:")
    assert "Deny policy" in lines[-2] and "did not answer the check within 20 s" in lines[-2]
    assert lines[-1] == f'  Later: .venv/bin/python -m broker check --remote "{url}" --app-id-uri "{AUDIENCE}"'


def test_the_hook_never_fails_azd_up(tmp_path: Path) -> None:
    """Run as azd runs it, without the provision outputs: it says what is missing and exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "KEY_VAULT"))}
    done = subprocess.run(  # noqa: S603
        [sys.executable, str(ROOT / "infra" / "hooks" / "first_verdict.py")],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0
    assert "BROKER_URL or BROKER_APP_ID_URI is not in the azd environment" in done.stdout


def test_without_a_venv_it_says_how_to_make_one_then_what_to_run(tmp_path: Path) -> None:
    """No .venv in the clone: no check, the command that creates it, then the check command."""
    lines: list[str] = []
    hook.first_verdict(
        azd_env("https://func-broker-abc.azurewebsites.net"),
        say=lines.append,
        windows=True,
        python=tmp_path / "nope" / "python.exe",
    )
    assert "there is no .venv" in lines[0]
    assert "python -m venv .venv" in lines[1] and r".venv\Scripts\python -m broker check --remote" in lines[1]


def test_secret_commands_for_powershell_type_each_value_at_a_hidden_prompt() -> None:
    """The Windows variant: Read-Host -AsSecureString, as docs/adf.md's PowerShell section does."""
    target = hook.Target.from_env(azd_env("https://x.example", BROKER_ILEVEL_CLIENT_SECRET_SECRET="ilevel-secret-2"))
    commands = hook.secrets_commands(target, "ilevel", windows=True)
    assert commands[0] == "$s = Read-Host 'ilevel client id' -AsSecureString"
    assert f"--vault-name {VAULT} --name ilevel-secret-2 " in commands[3]


def postdeploy_hooks() -> list[dict[str, object]]:
    config = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    hooks = config["hooks"]["postdeploy"]
    return hooks if isinstance(hooks, list) else [hooks]


def test_azure_yaml_runs_the_verdict_last_on_both_shells_and_lets_it_fail_softly() -> None:
    """postdeploy: the rotation subscription, then this hook, each with a posix and a windows variant."""
    hooks = postdeploy_hooks()
    runs = [(h["posix"]["run"], h["windows"]["run"]) for h in hooks]  # type: ignore[index]
    assert runs[-1] == ("python3 ./infra/hooks/first_verdict.py", "python ./infra/hooks/first_verdict.py")
    assert any("rotation_subscription.py" in posix for posix, _ in runs)
    last = hooks[-1]
    for shell in ("posix", "windows"):
        assert last[shell]["continueOnError"] is True  # type: ignore[index]


def test_the_check_command_is_what_the_readme_runs() -> None:
    """The command printed for later is the README's check --remote, with values filled in."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert ".venv/bin/python -m broker check --remote" in readme
    target = hook.Target.from_env(azd_env("https://func-broker-abc.azurewebsites.net"))
    assert hook.check_command(target, windows=False).startswith(".venv/bin/python -m broker check --remote ")
    assert httpx.URL(target.url).host == "func-broker-abc.azurewebsites.net"
