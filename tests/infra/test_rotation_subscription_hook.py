"""The postdeploy hook against a recorded az conversation: wait for the function, then subscribe."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra" / "hooks"))
import rotation_subscription as hook  # noqa: E402

APP_ID = "/subscriptions/s/resourceGroups/rg-dev/providers/Microsoft.Web/sites/func-broker-abc"
ENV = {
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
        hook.subscribe({"AZURE_RESOURCE_GROUP": "rg-dev"}, RecordedAz([]))
