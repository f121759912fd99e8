"""The reference stays true: the fault table in docs/internals.md is the fault matrix, and every setting the
broker reads is documented in docs/reference.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from broker.config import GLOBAL_SETTINGS, PROVIDER_SETTING_SUFFIXES
from tests.test_faults import markdown_table

ROOT = Path(__file__).resolve().parent.parent
INTERNALS = ROOT / "docs" / "internals.md"
REFERENCE = ROOT / "docs" / "reference.md"


def settings_section() -> str:
    """The text of docs/reference.md's `## Settings` section, up to the next `## ` heading."""
    text = REFERENCE.read_text(encoding="utf-8")
    match = re.search(r"^## Settings\n(.*?)(?=^## )", text, re.S | re.M)
    assert match is not None, "docs/reference.md has no '## Settings' section"
    return match.group(1)


def test_the_internals_fault_table_is_the_fault_matrix() -> None:
    """The table between the fault-table markers in docs/internals.md equals the one tests/test_faults.py makes."""
    text = INTERNALS.read_text(encoding="utf-8")
    match = re.search(r"<!-- fault-table:begin -->\n(.*?)<!-- fault-table:end -->", text, re.S)
    assert match is not None
    assert match.group(1) == markdown_table()


def test_every_setting_the_broker_reads_is_documented() -> None:
    """Each global setting and each per-provider suffix appears in docs/reference.md's settings section."""
    text = settings_section()
    missing = [name for name in GLOBAL_SETTINGS if f"`{name}`" not in text]
    missing += [suffix for suffix in PROVIDER_SETTING_SUFFIXES if f"BROKER_<NAME>_{suffix}" not in text]
    assert not missing


# --- the first hour: what a newcomer runs in order --------------------------------------------------------

README = ROOT / "README.md"
ADF_DOC = ROOT / "docs" / "adf.md"
MAKEFILE = ROOT / "Makefile"


def fenced_blocks(path: Path, language: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def quick_path() -> str:
    """The README's ADF quick path, the first sh block under its heading."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## ADF quick path: proxy mode") :]
    match = re.search(r"^```sh\n(.*?)^```", section, re.S | re.M)
    assert match is not None
    return match.group(1)


def unset_before_use(block: str) -> list[str]:
    """Shell variables a block reads before any line of it sets them (environment variables aside)."""
    assigned: set[str] = set()
    late = []
    for line in block.splitlines():
        code = line.split("  #", 1)[0] if not line.lstrip().startswith("#") else ""
        # A line that sets a variable may read it after (`read -rs V; ... "$V"`).
        assigned |= set(re.findall(r"(?:^|[;\s])([A-Z_][A-Z0-9_]*)=", code))
        assigned |= set(re.findall(r"\bread -rs ([A-Z_][A-Z0-9_]*)", code))
        assigned |= set(re.findall(r"\bfor ([A-Za-z_][A-Za-z0-9_]*) in", code))
        late += [name for name in re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", code) if name not in assigned]
    return late


def test_the_quick_path_sets_every_variable_before_it_uses_it() -> None:
    """ADF_RG, ADF, SQL_SERVER and SQL_DB are set before step 1; no step reads a variable set later."""
    block = quick_path()
    assert unset_before_use(block) == []
    step_one = block.index("# 1. ")
    for name in ("ADF_RG", "ADF", "SQL_SERVER", "SQL_DB"):
        assert re.search(rf"(?:^|[;\s]){name}=", block[:step_one], re.M), name


def test_the_check_catches_a_variable_used_before_it_is_set() -> None:
    """The rule can fail: the quick path as it was, reading $ADF_RG in step 3 before anything set it."""
    assert unset_before_use('FACTORY_ID=$(az resource show -g "$ADF_RG")\nADF_RG=rg') == ["ADF_RG"]


def test_the_quick_path_makes_the_venv_before_step_2_runs_it() -> None:
    """`.venv/bin/python` in step 2 needs .venv: the block makes it first."""
    block = quick_path()
    assert block.index("make .venv/.installed") < block.index(".venv/bin/python")


def test_the_sql_step_runs_as_one_batch() -> None:
    """CREATE SCHEMA must start its batch (T-SQL Msg 111): after a GO, first in the block, or inside EXEC."""
    for block in fenced_blocks(ADF_DOC, "sql"):
        statements = [s.strip() for s in re.split(r";\s*$|^GO\s*$", block, flags=re.M) if s.strip()]
        for index, statement in enumerate(statements):
            if statement.upper().startswith("CREATE SCHEMA"):
                before = re.split(r"^GO\s*$", block[: block.index(statement)], flags=re.M)[-1]
                assert not before.strip(), f"CREATE SCHEMA is statement {index + 1} of its batch: use GO or EXEC"


def makefile_value(name: str) -> str:
    match = re.search(rf"^{name} := (\S+)$", MAKEFILE.read_text(encoding="utf-8"), re.M)
    assert match is not None, name
    return match.group(1)


def test_the_windows_make_test_steps_do_what_make_test_does() -> None:
    """The PowerShell steps install checkov at the Makefile's pin, Azurite and the KQL parser from their lockfiles
    (npm ci, as make does), and run checkov.cmd."""
    (windows,) = [b for b in fenced_blocks(README, "powershell") if "run_checkov.py" in b]
    assert f"checkov=={makefile_value('CHECKOV_VERSION')}" in windows
    for tool, package in (("azurite", "azurite"), ("kusto", "@kusto/language-service-next")):
        locked = json.loads((ROOT / "tests" / "tools" / tool / "package.json").read_text(encoding="utf-8"))
        assert f"{package}@{locked['dependencies'][package]}" in windows
        assert f"tests\\tools\\{tool}\\package*.json" in windows and f"npm ci --prefix .venv\\tools\\{tool}" in windows
    assert re.search(r"run_checkov\.py \S+\\checkov\.cmd", windows)
    lines = windows.splitlines()
    assert "-m pytest" in lines[-1], "the tests run last, after every tool is installed"
    assert lines.index(next(line for line in lines if "-m pytest" in line)) > lines.index(
        next(line for line in lines if "npm ci" in line)
    )


OPERATIONS = ROOT / "docs" / "operations.md"


def test_the_proxy_access_line_in_operations_md_names_every_field_the_broker_writes() -> None:
    """docs/operations.md's proxy access line lists each field of the route's access line (body= included)."""
    from broker.routes.proxy import PROXY

    text = OPERATIONS.read_text(encoding="utf-8")
    start = text.index("`proxy id=<id>")
    line = text[start : text.index("`", start + 1)]
    assert [name for name, _ in PROXY.line if f"{name}=" not in line] == []


def test_the_retry_cycle_in_operations_md_is_the_samples() -> None:
    """The alert window's "ADF retry cycle" quotes the retries and intervals the sample pipelines set."""
    policies = [
        activity.get("policy", {})
        for path in sorted((ROOT / "infra" / "adf" / "pipeline").glob("*.json"))
        for activity in json.loads(path.read_text(encoding="utf-8"))["properties"]["activities"]
    ]
    retries = {p["retry"] for p in policies if "retry" in p}
    intervals = sorted({p["retryIntervalInSeconds"] for p in policies if "retryIntervalInSeconds" in p})
    quoted = f"the samples' {max(retries)} retries, {' or '.join(map(str, intervals))} s apart"
    assert quoted in OPERATIONS.read_text(encoding="utf-8")


def test_the_worst_case_share_of_the_instance_is_stated_as_computed() -> None:
    """The default BROKER_PROXY_MAX_RESPONSE_MB keeps the Functions worst case at the share the reference states."""
    from types import SimpleNamespace

    from broker.config import DEFAULT_PROXY_CONCURRENCY, DEFAULT_PROXY_MAX_RESPONSE_MB, proxy_worst_case_mb

    ilevel: Any = SimpleNamespace(proxy_enabled=True, proxy_concurrency=DEFAULT_PROXY_CONCURRENCY)
    worst = proxy_worst_case_mb({"ilevel": ilevel}, DEFAULT_PROXY_MAX_RESPONSE_MB, functions_host=True)
    share = round(100 * worst / 2048)
    assert f"worst case ({worst:.0f} MB, below) at {share}% of a 2,048 MB instance" in settings_section()


def test_every_check_remote_command_in_the_docs_and_verdicts_names_the_app_id_uri() -> None:
    """`python -m broker check --remote URL` needs --app-id-uri (or BROKER_APP_ID_URI): every command shown has it
    (a heading names the command, not a line to run)."""
    sources = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "broker" / "check.py"]
    missing = []
    for path in sources:
        text = path.read_text(encoding="utf-8").replace('"\n            "', "").replace("\\\n", " ")
        for match in re.finditer(r"broker check --remote (?:\S+)[^\n`]*", text):
            heading = text[text.rfind("\n", 0, match.start()) + 1 :].startswith("#")
            if "--app-id-uri" not in match.group(0) and not heading:
                missing.append(f"{path.relative_to(ROOT)}: {match.group(0)[:80]}")
    assert missing == []


def test_the_powershell_path_checks_the_app_remotely_like_the_readme() -> None:
    """docs/adf.md's PowerShell step 2 runs check --remote, not a local check that cannot reach a private vault."""
    (block,) = [b for b in fenced_blocks(ADF_DOC, "powershell") if "keyvault secret set" in b]
    assert "-m broker check --remote (azd env get-value BROKER_URL) --app-id-uri" in block
    assert not re.search(r"-m broker check ilevel", block)
    assert block.index("az provider register --namespace Microsoft.App") < block.index("azd up")


def test_callers_md_names_the_one_pre_authorised_user_client() -> None:
    """The Azure CLI is pre-authorised for Diagnostics.Run only (infra/hooks/entra_app.py); callers.md says so."""
    text = (ROOT / "docs" / "callers.md").read_text(encoding="utf-8")
    assert "no user client (the Azure CLI included) is\npre-authorised" not in text
    assert (
        "The one user\nclient the deployment pre-authorises is the Azure CLI, and only for the operators' scope" in text
    )


def statuses_by_code() -> dict[str, set[int]]:
    """Each fixed error code of broker/errors.py and the statuses it is answered with."""
    from broker.errors import BrokerError

    found: dict[str, set[int]] = {}
    pending: list[type] = [BrokerError]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        code, status = cls.__dict__.get("code"), getattr(cls, "status", None)
        if isinstance(code, str) and isinstance(status, int):
            found.setdefault(code, set()).add(status)
    # A refusal from the token endpoint passes its own OAuth error code on, with the upstream error's status.
    from broker.errors import TokenRejected

    for code in ("invalid_request", "invalid_client", "invalid_grant", "unauthorized_client", "invalid_scope"):
        found.setdefault(code, set()).add(TokenRejected.status)
    return found


def test_every_status_and_error_code_pair_in_the_docs_is_the_brokers() -> None:
    """ "503 `key_vault_unavailable`", never "502 ...": each `NNN `code`` the docs write matches broker/errors.py."""
    known = statuses_by_code()
    assert known["key_vault_unavailable"] == {503}
    wrong = []
    for path in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for status, code in re.findall(r"\b([1-5]\d\d) `([a-z_]+)`", path.read_text(encoding="utf-8")):
            if code in known and int(status) not in known[code]:
                wrong.append(f"{path.relative_to(ROOT)}: {status} {code}")
    assert wrong == []
