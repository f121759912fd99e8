"""The reference stays true: the fault table in docs/internals.md is the fault matrix, and every setting the
broker reads is documented in docs/reference.md."""

from __future__ import annotations

import re
from pathlib import Path

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
    """The PowerShell steps install checkov, Azurite and the KQL parser at the Makefile's pins, and run checkov.cmd."""
    (windows,) = [b for b in fenced_blocks(README, "powershell") if "run_checkov.py" in b]
    assert f"checkov=={makefile_value('CHECKOV_VERSION')}" in windows
    assert f"azurite@{makefile_value('AZURITE_VERSION')}" in windows
    assert f"@kusto/language-service-next@{makefile_value('KUSTO_VERSION')}" in windows
    assert re.search(r"run_checkov\.py \S+\\checkov\.cmd", windows)
    lines = windows.splitlines()
    assert lines.index(next(line for line in lines if "-m pytest" in line)) == len(lines) - 1
