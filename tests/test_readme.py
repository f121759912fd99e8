"""The README stays true: its fault table is the fault matrix, and every setting the broker reads is documented."""

from __future__ import annotations

import re
from pathlib import Path

from broker.config import GLOBAL_SETTINGS, PROVIDER_SETTING_SUFFIXES
from tests.test_faults import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_fault_table_is_the_fault_matrix() -> None:
    """The table between the fault-table markers equals the one generated from tests/test_faults.py."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- fault-table:begin -->\n(.*?)<!-- fault-table:end -->", text, re.S)
    assert match is not None
    assert match.group(1) == markdown_table()


def test_every_setting_the_broker_reads_is_documented() -> None:
    """Each global setting and each per-provider suffix appears in the README's settings table."""
    text = README.read_text(encoding="utf-8")
    missing = [name for name in GLOBAL_SETTINGS if f"`{name}`" not in text]
    missing += [suffix for suffix in PROVIDER_SETTING_SUFFIXES if f"BROKER_<NAME>_{suffix}" not in text]
    assert not missing
