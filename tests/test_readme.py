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
