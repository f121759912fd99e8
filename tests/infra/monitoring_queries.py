"""The KQL queries that infra/ deploys: the alert rules' (in Bicep) and the workbook's (in its JSON).

Both are checked against broker/ the way the docs' queries are (test_kql_queries.py), plus the values
they compare outcomes with: an ``outcome == "x"`` must name an outcome the broker can log.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bicep_settings import ROOT

INFRA = ROOT / "infra"
ALERTS = INFRA / "app" / "alerts.bicep"
WORKBOOK_BICEP = INFRA / "app" / "workbook.bicep"
WORKBOOK_JSON = INFRA / "app" / "workbook.json"
BEGIN = "// --- alert queries: begin ---"
END = "// --- alert queries: end ---"
_BICEP_QUERY = re.compile(r"^  (\w+): '''\n(.*?)'''", re.DOTALL | re.MULTILINE)
# Outcomes the token route logs besides error codes (broker/cache.py's Served outcomes, http.py's own).
SERVED_OUTCOMES = {"hit", "fetched", "refreshed", "stale"}


def alert_queries(path: Path = ALERTS) -> dict[str, str]:
    """The ``queries`` object of alerts.bicep, by key."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END)
    found = dict(_BICEP_QUERY.findall(text[start:end]))
    if not found:
        raise ValueError(f"no queries between the markers in {path}")
    return found


def _items(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _items(value)
    elif isinstance(node, list):
        for value in node:
            yield from _items(value)


def workbook() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(WORKBOOK_JSON.read_text(encoding="utf-8"))
    return data


def workbook_queries() -> dict[str, str]:
    """Every KQL query item of the workbook (type 3), by its name."""
    found = {}
    for item in _items(workbook()):
        if item.get("type") == 3 and isinstance(item.get("content"), dict):
            content = item["content"]
            found[str(item.get("name", content.get("title", "?")))] = str(content["query"])
    return found


def error_codes() -> set[str]:
    """Every ``code`` broker/errors.py defines, and every ``code=`` a raise site passes."""
    codes: set[str] = set()
    for path in (ROOT / "broker").rglob("*.py"):
        if "standin" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            named_code = isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "code" for t in node.targets
            )
            keyword_code = isinstance(node, ast.keyword) and node.arg == "code"
            value = getattr(node, "value", None) if named_code or keyword_code else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                codes.add(value.value)
    return codes


def compared_outcomes(query: str) -> list[str]:
    """Values an outcome is compared with: ``outcome == "x"``, ``customDimensions.outcome) in ("x", ...)``."""
    found = re.findall(r'outcome\)?\s*(?:==|!=)\s*"([^"]+)"', query)
    for group in re.findall(r"outcome\)?\s*!?in\s*\(([^)]*)\)", query):
        found += re.findall(r'"([^"]+)"', group)
    return found
