"""The postdeploy hook against a recorded az conversation, and as a script against a stand-in `az`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.infra import standin_az as standin_az_cli

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra" / "hooks"))
import rotation_subscription as hook  # noqa: E402

AZD_SUBSCRIPTION = "0a1b2c3d-0000-4000-8000-00000000aaaa"
OTHER_SUBSCRIPTION = "0a1b2c3d-0000-4000-8000-00000000bbbb"
APP_ID = f"/subscriptions/{AZD_SUBSCRIPTION}/resourceGroups/rg-dev/providers/Microsoft.Web/sites/func-broker-abc"
ENV = {
    "AZURE_SUBSCRIPTION_ID": AZD_SUBSCRIPTION,
    "AZURE_RESOURCE_GROUP": "rg-dev",
    "EVENT_GRID_SYSTEM_TOPIC_NAME": "egst-kv-abc",
    "AZURE_FUNCTION_APP_RESOURCE_ID": APP_ID,
}
NOT_FOUND = (
    "(ResourceNotFound) The Resource 'Microsoft.Web/sites/func-broker-abc/functions/rotation_check' was not found."
)


@dataclass
class RecordedAz:
    """Plays az's answers in order: (exit code, stderr) per call; records the arguments."""

    answers: list[tuple[int, str]]
    calls: list[tuple[str, ...]] = field(default_factory=list)
    now: float = 0.0

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        code, stderr = self.answers.pop(0)
        return subprocess.CompletedProcess(["az", *args], code, "", stderr)

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_waits_until_the_function_is_indexed_then_subscribes_it() -> None:
    """Two 'not found' answers, then found: two waits, one create for SecretNewVersionCreated."""
    az = RecordedAz([(3, NOT_FOUND), (3, NOT_FOUND), (0, ""), (0, "")])
    hook.subscribe(ENV, az, sleep=az.sleep, clock=lambda: az.now)
    assert az.now == 2 * hook.POLL_S
    create = az.calls[-1]
    assert create[:4] == ("eventgrid", "system-topic", "event-subscription", "create")
    assert create[create.index("--endpoint") + 1] == f"{APP_ID}/functions/rotation_check"
    assert create[create.index("--included-event-types") + 1] == "Microsoft.KeyVault.SecretNewVersionCreated"
    assert create[create.index("--system-topic-name") + 1] == "egst-kv-abc"


def test_a_function_that_never_appears_ends_with_the_command_to_retry() -> None:
    """After the wait budget the hook stops and names `azd hooks run postdeploy`."""
    az = RecordedAz([(3, NOT_FOUND)] * 100)
    with pytest.raises(SystemExit, match="azd hooks run postdeploy"):
        hook.subscribe(ENV, az, sleep=az.sleep, clock=lambda: az.now)
    assert not any(call[0] == "eventgrid" for call in az.calls)


def test_a_refused_create_reports_azs_message() -> None:
    """When az refuses the subscription, its stderr is in the error."""
    az = RecordedAz([(0, ""), (1, "(AuthorizationFailed) The client does not have authorization")])
    with pytest.raises(SystemExit, match="AuthorizationFailed"):
        hook.subscribe(ENV, az, sleep=az.sleep, clock=lambda: az.now)


def test_missing_outputs_name_the_azd_value_to_provision_first() -> None:
    """Without the provision outputs, the hook says which value is missing."""
    with pytest.raises(SystemExit, match="EVENT_GRID_SYSTEM_TOPIC_NAME is not set"):
        hook.subscribe({"AZURE_SUBSCRIPTION_ID": AZD_SUBSCRIPTION, "AZURE_RESOURCE_GROUP": "rg-dev"}, RecordedAz([]))


def test_every_az_call_names_the_azd_subscription() -> None:
    """az's default subscription may be another one: each call carries --subscription AZURE_SUBSCRIPTION_ID."""
    az = RecordedAz([(3, NOT_FOUND), (0, ""), (0, "")])
    hook.subscribe(ENV, az, sleep=az.sleep, clock=lambda: az.now)
    assert len(az.calls) == 3
    for call in az.calls:
        assert call[call.index("--subscription") + 1] == AZD_SUBSCRIPTION, call


@pytest.mark.parametrize(
    "stderr",
    [
        "Please run 'az login' to setup account.",
        "(AuthorizationFailed) The client 'x' does not have authorization to perform action 'read'",
        "(SubscriptionNotFound) The subscription '0a1b2c3d' could not be found.",
    ],
    ids=["not-signed-in", "forbidden", "wrong-subscription"],
)
def test_a_failure_other_than_not_found_fails_at_once_with_azs_message(stderr: str) -> None:
    """Only ResourceNotFound means 'not indexed yet'; anything else stops without a wait, naming az's error."""
    az = RecordedAz([(1, stderr)] * 3)
    with pytest.raises(SystemExit) as raised:
        hook.subscribe(ENV, az, sleep=az.sleep, clock=lambda: az.now)
    assert stderr in str(raised.value)
    assert az.now == 0, "no poll interval was slept"
    assert len(az.calls) == 1


# --- the hook as azd runs it: a script that finds `az` on PATH ---


@pytest.fixture
def standin_az(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH with a stand-in `az` whose default subscription is not azd's, and the file holding its state."""
    state, bin_dir = standin_az_cli.install(
        tmp_path,
        {AZD_SUBSCRIPTION: "tenant-a", OTHER_SUBSCRIPTION: "tenant-b"},
        default=OTHER_SUBSCRIPTION,
        azd_subscription=AZD_SUBSCRIPTION,
    )
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "STANDIN_AZ_STATE": str(state),
        **{k: v for k, v in os.environ.items() if k in ("SYSTEMROOT", "HOME")},
    }
    return env, state


def read_state(state: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(state.read_text(encoding="utf-8"))
    return loaded


@pytest.mark.slow
def test_the_standin_az_refuses_a_resource_group_call_without_the_azd_subscription(
    standin_az: tuple[dict[str, str], Path],
) -> None:
    """The stand-in bites as az does: without --subscription the call goes to the default subscription."""
    env, _ = standin_az
    args = ["az", "eventgrid", "system-topic", "event-subscription", "create", "--resource-group", "rg-dev"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    assert done.returncode != 0
    assert "ResourceGroupNotFound" in done.stderr


@pytest.mark.slow
def test_postdeploy_hook_subscribes_when_azs_default_subscription_is_another(
    standin_az: tuple[dict[str, str], Path],
) -> None:
    """Run as azd runs it, with az defaulting to another subscription: the subscription is created."""
    env, state = standin_az
    script = ROOT / "infra" / "hooks" / "rotation_subscription.py"
    done = subprocess.run(  # noqa: S603
        [sys.executable, str(script)],
        env={**env, **ENV, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    after = read_state(state)
    assert done.returncode == 0, done.stderr
    assert after["created"] == [["rg-dev", "egst-kv-abc", "rotation-check"]]
    assert all(call[call.index("--subscription") + 1] == AZD_SUBSCRIPTION for call in after["calls"])
