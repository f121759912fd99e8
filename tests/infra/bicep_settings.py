"""Read the Function App's settings and runtime out of infra/app/broker.bicep without a Bicep compiler.

The settings live in one flat object between two marker comments; this reads its top-level keys
and, where a value is a plain string literal, the value. Anything it cannot read is an error, so a
reshuffled file fails the tests instead of silently checking nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BROKER_BICEP = ROOT / "infra" / "app" / "broker.bicep"
BEGIN = "// --- app settings: begin ---"
END = "// --- app settings: end ---"
FALLBACK_BEGIN = "// --- provider settings fallback: begin ---"
FALLBACK_END = "// --- provider settings fallback: end ---"
OPERATOR_BEGIN = "// --- settings through azd: begin ---"
OPERATOR_END = "// --- settings through azd: end ---"

_KEY = re.compile(r"^\s*(?:'(?P<quoted>[^']+)'|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))\s*:\s*(?P<value>.*?)\s*$")
_LITERAL = re.compile(r"^'(?P<text>[^'$]*)'$")


@dataclass(frozen=True)
class Setting:
    name: str
    expression: str

    @property
    def literal(self) -> str | None:
        """The value when it is a plain string literal (no interpolation), else None."""
        match = _LITERAL.fullmatch(self.expression)
        return match["text"] if match else None


def _strip_comment(line: str) -> str:
    """Drop a trailing // comment that is not inside a '...' string."""
    inside = False
    for index, char in enumerate(line):
        if char == "'":
            inside = not inside
        elif char == "/" and not inside and line[index : index + 2] == "//":
            return line[:index]
    return line


def object_block(text: str, opener: str) -> list[str]:
    """The lines of the object (or array) opened on the line containing ``opener``, brackets excluded."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if opener in line and line.rstrip().endswith(("{", "["))]
    if not starts:
        raise ValueError(f"no object opened by {opener!r}")
    start = starts[0]
    depth, body = 1, []
    for line in lines[start + 1 :]:
        code = _strip_comment(line)
        depth += code.count("{") + code.count("[") - code.count("}") - code.count("]")
        if depth <= 0:
            return body
        body.append(code)
    raise ValueError(f"object opened by {opener!r} is never closed")


def top_level_entries(lines: list[str]) -> list[tuple[str, str]]:
    """(key, value expression) for each key at the first nesting level of an object body."""
    entries, depth = [], 0
    for line in lines:
        if depth == 0 and line.strip():
            match = _KEY.match(line)
            if not match:
                raise ValueError(f"cannot read setting line {line.strip()!r}")
            entries.append((match["quoted"] or match["bare"], match["value"]))
        depth += line.count("{") + line.count("[") - line.count("}") - line.count("]")
    return entries


def _marked_object(path: Path, begin: str, end: str, opener: str) -> list[Setting]:
    text = path.read_text(encoding="utf-8")
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"{path} must contain the markers {begin!r} and {end!r} exactly once")
    block = text.split(begin, 1)[1].split(end, 1)[0]
    settings = [Setting(name, value) for name, value in top_level_entries(object_block(block, opener))]
    if not settings:
        raise ValueError(f"no settings found between the markers in {path}")
    return settings


def app_settings(path: Path = BROKER_BICEP) -> list[Setting]:
    """Every app setting broker.bicep gives the Function App whatever the providers, in file order."""
    return _marked_object(path, BEGIN, END, "var appSettings = {")


def operator_settings(path: Path = BROKER_BICEP) -> list[Setting]:
    """The settings broker.bicep takes from Bicep parameters an operator sets through azd."""
    return _marked_object(path, OPERATOR_BEGIN, OPERATOR_END, "var operatorSettings = {")


def fallback_provider_settings(path: Path = BROKER_BICEP) -> dict[str, str]:
    """The provider settings broker.bicep uses when the preprovision hook wrote none (literals only)."""
    settings = _marked_object(path, FALLBACK_BEGIN, FALLBACK_END, "var fallbackProviderSettings = {")
    unreadable = [s.name for s in settings if s.literal is None]
    if unreadable:
        raise ValueError(f"fallback provider settings must be string literals: {unreadable}")
    return {s.name: s.literal for s in settings if s.literal is not None}


def function_runtime(path: Path = BROKER_BICEP) -> dict[str, str]:
    """The functionAppConfig.runtime object of broker.bicep, e.g. {'name': 'python', 'version': '3.13'}."""
    text = path.read_text(encoding="utf-8")
    config = "\n".join(object_block(text, "functionAppConfig: {"))
    return {key: value.strip("'") for key, value in top_level_entries(object_block(config, "runtime: {"))}
