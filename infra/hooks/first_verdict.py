"""azd postdeploy hook: end `azd up` with the broker's own verdict and the exact next step.

Runs ``python -m broker check --remote <BROKER_URL> --app-id-uri <BROKER_APP_ID_URI> --json`` as the
deployer (az login: the preprovision hook granted the deployer Broker.Operator), so the new app runs
check's steps with its managed identity and says what is missing. A fresh app may not answer yet,
and a new role assignment may not have reached the deployer's sign-in yet: those answers are retried
for up to WAIT_S. Then it prints the verdict line and one next step:

- the iLevel secrets are not in the vault yet: the two ``az keyvault secret set`` commands, vault
  name filled in, typed at a hidden prompt (as the README's step 2);
- OK: the ADF quick path's next command (README, step 3);
- anything else: the verdict says what to fix; then the command to check again.

It never fails ``azd up`` (exit 0 always): when it cannot run (no .venv yet, no role yet, the app not
reachable from here, a Deny policy that keeps the app private), it says why and what to run later.
Reads from the azd environment: BROKER_URL, BROKER_APP_ID_URI, KEY_VAULT_NAME, BROKER_PROVIDERS,
BROKER_<NAME>_CLIENT_ID_SECRET / _CLIENT_SECRET_SECRET, BROKER_OPERATOR_IP_ADDRESSES.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Flex Consumption answers within a few minutes of a deploy; a new app-role assignment reaches a
# user's next token within minutes. Past this, waiting longer in azd up helps nobody.
WAIT_S = 300
POLL_S = 15
# check --remote's own timeout is 120 s; one run never needs more than this.
RUN_TIMEOUT_S = 180
ROOT = Path(__file__).resolve().parents[2]
# Verdicts worth waiting on: the deployer's new role, and an app that is not serving yet.
ROLE_NOT_YET = "get the Broker.Operator role"
NOT_SERVING = ("check the --remote URL", "deploy a broker with the diagnostics route", "retry later")
MISSING_SECRET = re.compile(r"^fix secret '(?P<name>[^']+)' in .*does not exist")
PREFIX = "first-verdict:"
# The README's ADF quick path, step 3, with the variables it sets before step 1 (ADF_RG, ADF).
GRANT_FACTORY_SH = (
    'FACTORY_ID=$(az resource show -g "$ADF_RG" -n "$ADF" --resource-type Microsoft.DataFactory/factories '
    "--query id -o tsv)",
    'azd env set BROKER_CALLER_PRINCIPAL_IDS "$(az resource show --ids "$FACTORY_ID" --query identity.principalId '
    '-o tsv)"',
    "azd hooks run preprovision",
)
GRANT_FACTORY_PWSH = (
    "$FACTORY_ID = az resource show -g $ADF_RG -n $ADF --resource-type Microsoft.DataFactory/factories "
    "--query id -o tsv",
    "azd env set BROKER_CALLER_PRINCIPAL_IDS (az resource show --ids $FACTORY_ID --query identity.principalId -o tsv)",
    "azd hooks run preprovision",
)


@dataclass(frozen=True)
class Target:
    """What the check runs against and what the next steps name, from the azd environment."""

    url: str
    app_id_uri: str
    vault: str
    providers: tuple[str, ...]
    secret_names: Mapping[str, tuple[str, str]]
    vault_opened: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Target:
        providers = tuple(p.strip() for p in env.get("BROKER_PROVIDERS", "ilevel").split(",") if p.strip())
        names = {}
        for provider in providers:
            key = provider.upper().replace("-", "_")
            names[provider] = (
                env.get(f"BROKER_{key}_CLIENT_ID_SECRET", "").strip() or f"{provider}-client-id",
                env.get(f"BROKER_{key}_CLIENT_SECRET_SECRET", "").strip() or f"{provider}-client-secret",
            )
        return cls(
            url=env.get("BROKER_URL", "").strip(),
            app_id_uri=env.get("BROKER_APP_ID_URI", "").strip(),
            vault=env.get("KEY_VAULT_NAME", "").strip(),
            providers=providers or ("ilevel",),
            secret_names=names,
            vault_opened=bool(env.get("BROKER_OPERATOR_IP_ADDRESSES", "").strip()),
        )


@dataclass(frozen=True)
class Answer:
    """One run of check --remote: its exit code and JSON (None when it printed none)."""

    code: int
    body: dict[str, object] | None
    stderr: str = ""

    @property
    def verdict(self) -> str:
        return str((self.body or {}).get("verdict", ""))


Runner = Callable[[Target], Answer]


def venv_python(root: Path = ROOT, *, windows: bool = os.name == "nt") -> Path:
    return root / ".venv" / ("Scripts/python.exe" if windows else "bin/python")


def check_command(target: Target, *, windows: bool = os.name == "nt") -> str:
    python = r".venv\Scripts\python" if windows else ".venv/bin/python"
    return f'{python} -m broker check --remote "{target.url}" --app-id-uri "{target.app_id_uri}"'


def run_check(target: Target) -> Answer:
    """The real check --remote, with the repository's .venv, as the signed-in deployer."""
    args = [str(venv_python()), "-m", "broker", "check", "--remote", target.url, "--app-id-uri", target.app_id_uri]
    try:
        done = subprocess.run(  # noqa: S603
            [*args, "--json"], capture_output=True, text=True, check=False, cwd=ROOT, timeout=RUN_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return Answer(1, {"ok": False, "verdict": f"retry later: check --remote took over {RUN_TIMEOUT_S} s"})
    try:
        body = json.loads(done.stdout)
    except ValueError:
        body = None
    return Answer(done.returncode, body if isinstance(body, dict) else None, done.stderr.strip())


def wait_for_verdict(
    target: Target,
    run: Runner,
    *,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    say: Callable[[str], None],
    wait_s: float = WAIT_S,
) -> Answer:
    """Run the check until its verdict is not one worth waiting on, or ``wait_s`` has passed."""
    deadline = clock() + wait_s
    while True:
        answer = run(target)
        verdict = answer.verdict
        waiting = verdict.startswith(ROLE_NOT_YET) or verdict.startswith(NOT_SERVING)
        if not waiting or clock() + POLL_S > deadline:
            return answer
        reason = "the Broker.Operator role to reach your sign-in" if verdict.startswith(ROLE_NOT_YET) else "the app"
        say(f"{PREFIX} waiting for {reason} ...")
        sleep(POLL_S)


def secrets_commands(target: Target, provider: str, *, windows: bool = os.name == "nt") -> list[str]:
    """README step 2's commands for one provider, vault filled in: each value typed at a hidden prompt."""
    client_id, client_secret = target.secret_names[provider]
    if windows:
        return [
            f"$s = Read-Host '{provider} client id' -AsSecureString",
            f"az keyvault secret set --vault-name {target.vault} --name {client_id} "
            "--value ([Net.NetworkCredential]::new('', $s).Password) -o none",
            f"$s = Read-Host '{provider} client secret' -AsSecureString",
            f"az keyvault secret set --vault-name {target.vault} --name {client_secret} "
            "--value ([Net.NetworkCredential]::new('', $s).Password) -o none; Remove-Variable s",
        ]
    return [
        f"printf '{provider} client id: ';     read -rs V; echo; "
        f'az keyvault secret set --vault-name "{target.vault}" --name {client_id} --value "$V" -o none',
        f"printf '{provider} client secret: '; read -rs V; echo; "
        f'az keyvault secret set --vault-name "{target.vault}" --name {client_secret} --value "$V" -o none; unset V',
    ]


def providers_missing_secrets(target: Target, answer: Answer) -> list[str]:
    reports = (answer.body or {}).get("providers")
    missing = []
    for report in reports if isinstance(reports, list) else []:
        if isinstance(report, dict) and MISSING_SECRET.match(str(report.get("verdict", ""))):
            provider = str(report.get("provider", ""))
            if provider in target.secret_names:
                missing.append(provider)
    return missing


def next_steps(target: Target, answer: Answer, *, windows: bool = os.name == "nt", wait_s: float = WAIT_S) -> list[str]:
    """The verdict line and what to do next, as printed at the end of azd up."""
    again = check_command(target, windows=windows)
    if answer.body is None:
        why = (answer.stderr.splitlines() or ["no output"])[-1][:300]
        return [f"{PREFIX} check --remote could not run ({why}).", f"  Run it yourself later: {again}"]
    lines = [f"verdict: {answer.verdict}"]
    verdict = answer.verdict
    missing = providers_missing_secrets(target, answer)
    if missing:
        lines.append(f"Next: store the credentials in Key Vault {target.vault} (each value at a hidden prompt):")
        for provider in missing:
            lines += [f"  {command}" for command in secrets_commands(target, provider, windows=windows)]
        if not target.vault_opened:
            lines.append(
                "  The vault admits no operator address (BROKER_OPERATOR_IP_ADDRESSES is empty, or a Deny policy "
                "keeps it private): docs/deploy.md#how-operators-reach-the-vault says how to reach it."
            )
        lines.append(f"  Then check again: {again}")
        if target.vault_opened:
            lines.append(
                '  And close the vault to your address again: azd env set BROKER_OPERATOR_IP_ADDRESSES "", then '
                "azd provision"
            )
    elif answer.code == 0 and (answer.body or {}).get("ok") is True:
        lines += [
            "Next: the ADF quick path, step 3 (README): grant your factory's identity the Token.Read role:",
            *(f"  {command}" for command in (GRANT_FACTORY_PWSH if windows else GRANT_FACTORY_SH)),
        ]
    elif verdict.startswith(ROLE_NOT_YET):
        lines += [
            f"{PREFIX} your sign-in does not carry Broker.Operator yet (azd provision grants it to the deployer; "
            "a new assignment can take minutes to reach a token, and an Entra admin must grant it where you "
            "may not: see the preprovision output).",
            f"  Later: az login, then {again}",
        ]
    elif verdict.startswith(NOT_SERVING):
        lines += [
            f"{PREFIX} the app at {target.url} did not answer the check within {wait_s:g} s: it may still be "
            "starting, or it is not reachable from this machine (a private app behind its VNet, a network or a "
            "Deny policy that forbids public access; then run the check from inside the VNet).",
            f"  Later: {again}",
        ]
    else:
        lines.append(f"  Fix that, then check again: {again}")
    return lines


def first_verdict(
    env: Mapping[str, str],
    run: Runner = run_check,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    say: Callable[[str], None] = print,
    windows: bool = os.name == "nt",
    python: Path | None = None,
    wait_s: float = WAIT_S,
) -> None:
    """Wait for the app's verdict and print it with the next step; never raises for a failed check."""
    target = Target.from_env(env)
    if not target.url or not target.app_id_uri:
        say(f"{PREFIX} BROKER_URL or BROKER_APP_ID_URI is not in the azd environment; run azd provision first.")
        return
    interpreter = python or venv_python(windows=windows)
    if not interpreter.exists():
        make = (
            "make .venv/.installed"
            if not windows
            else "python -m venv .venv; .venv\\Scripts\\python -m pip install -r requirements-dev.txt"
        )
        say(f"{PREFIX} cannot check the app yet: there is no .venv in this clone ({interpreter}).")
        say(f"  Create it ({make}), then: {check_command(target, windows=windows)}")
        return
    say(f"{PREFIX} asking the app for its verdict (check --remote, as you) ...")
    answer = wait_for_verdict(target, run, sleep=sleep, clock=clock, say=say, wait_s=wait_s)
    for line in next_steps(target, answer, windows=windows, wait_s=wait_s):
        say(line)


def main() -> int:
    try:
        first_verdict(os.environ)
    except Exception as error:  # noqa: BLE001 - a verdict hook never fails azd up
        print(f"{PREFIX} could not run ({type(error).__name__}: {error}); run check --remote yourself later")
    return 0


if __name__ == "__main__":
    sys.exit(main())
