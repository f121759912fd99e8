"""Every command the docs mark as runnable here (a ```sh local block) runs, against `make run`'s stand-ins.

A block runs in bash with ``set -euo pipefail`` from the repository root, after the broker's local run has
printed its banner: ``TOKEN`` comes from the banner (a ``TOKEN=`` line in a block is the reader's paste of it),
and ``127.0.0.1:7071`` becomes the port the run bound. A line ``#> text`` says that the block's output
contains ``text``, after what earlier ``#>`` lines matched. Blocks without the marker (Azure, PowerShell,
``make run`` itself) are not run here: ``make run`` and its busy port are tests/test_local_run.py's.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import sensitive
from tests.test_local_run import Lines, spawn, stop_group

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
BLOCK = re.compile(r"^```sh local\n(.*?)^```", re.S | re.M)
DOC_PORT = "127.0.0.1:7071"


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    text: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def commands(self) -> list[str]:
        """The shell commands, one per logical line (continuations joined), comments and pastes left out."""
        joined = re.sub(r"\\\n", " ", self.text)
        lines = (line.strip() for line in joined.splitlines())
        return [line for line in lines if line and not line.startswith("#") and not line.startswith("TOKEN=")]

    def expected(self) -> list[str]:
        return [line.strip().removeprefix("#>").strip() for line in self.text.splitlines() if line.startswith("#>")]


def blocks() -> list[Block]:
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            found.append(Block(path, text.count("\n", 0, match.start()) + 1, match.group(1)))
    return found


BLOCKS = blocks()


@dataclass(frozen=True)
class LocalRun:
    address: str
    token: str


@pytest.fixture(scope="module")
def local_run() -> Iterator[LocalRun]:
    """The README's `make run` (its program, on a free port), up to its banner."""
    process = spawn(sys.executable, "-m", "broker.standin.demo", "--port", "0")
    try:
        lines = Lines(process)
        listening = lines.until("listening on http://127.0.0.1:")
        address = re.search(r"127\.0\.0\.1:\d+", listening)
        assert address is not None
        lines.until("Stop it with Ctrl+C.")
        token = next(line.strip().removeprefix("TOKEN=") for line in lines.seen if line.strip().startswith("TOKEN="))
        yield LocalRun(address.group(), sensitive(token))
    finally:
        assert stop_group(process, signal.SIGINT) in (0, 1, -signal.SIGINT)


def test_the_docs_have_runnable_commands() -> None:
    """The README and docs/reference.md each carry commands marked as runnable here."""
    names = {block.path.name for block in BLOCKS}
    assert {"README.md", "reference.md"} <= names
    assert sum(len(block.commands()) for block in BLOCKS) >= 10


def unmatched(expected: list[str], output: str, address: str) -> list[str]:
    """The expected texts not found in ``output`` in order, each after the previous match."""
    missing, position = [], 0
    for text in expected:
        wanted = text.replace(DOC_PORT, address)
        found = output.find(wanted, position)
        if found < 0:
            missing.append(text)
        else:
            position = found + len(wanted)
    return missing


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_a_runnable_doc_block_runs_and_prints_what_the_doc_shows(block: Block, local_run: LocalRun) -> None:
    """Exit 0, and each `#>` line of the block found in its output, in order."""
    script = "\n".join(["set -euo pipefail", *block.commands()]).replace(DOC_PORT, local_run.address)
    env = {**os.environ, "TOKEN": local_run.token}
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{block.name}: exit {done.returncode}\n{done.stderr[-2000:]}"
    missing = unmatched(block.expected(), done.stdout, local_run.address)
    assert not missing, f"{block.name}: not in the output, in order: {missing}"


@pytest.mark.slow
def test_a_block_whose_output_differs_fails() -> None:
    """The check can fail: output that lacks a `#>` line, or has them out of order, is caught."""
    block = Block(ROOT / "README.md", 0, "echo hello; echo world\n#> world\n#> hello\n#> goodbye\n")
    done = subprocess.run(["bash", "-c", "\n".join(block.commands())], capture_output=True, text=True, check=True)
    assert unmatched(block.expected(), done.stdout, DOC_PORT) == ["hello", "goodbye"]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {slug(match) for match in re.findall(r"^#+ (.+)$", text, re.M)}


def test_every_relative_link_in_the_docs_finds_its_file_and_heading() -> None:
    """Links between the README, docs/ and bench/ point at files that exist and at headings they have."""
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_the_slug_follows_githubs_rule() -> None:
    """The check can fail: punctuation and backticks go, spaces become hyphens."""
    assert slug("`python -m broker check [PROVIDER] [--json]`") == "python--m-broker-check-provider---json"
    assert slug("Parameters (azd environment variables)") == "parameters-azd-environment-variables"


def test_the_vault_recovery_after_azd_down_creates_the_group_then_recovers_then_provisions() -> None:
    """az keyvault recover writes into the vault's original resource group, which azd down deleted: every
    documented recovery (sh and PowerShell) creates the group, then recovers, then provisions, in that order."""
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = text[text.index("## Tearing down") :]
    recoveries = [
        block
        for block in re.findall(r"^```(?:sh|powershell)\n(.*?)^```", section, re.S | re.M)
        if "az keyvault recover" in block
    ]
    assert len(recoveries) == 2, "one sh and one PowerShell recovery"
    for block in recoveries:
        steps = [line.split(" --", 1)[0] for line in block.strip().splitlines()]
        assert steps == ["az group create", "az keyvault recover", "azd provision"], block
        assert "AZURE_RESOURCE_GROUP" in block and "AZURE_LOCATION" in block
