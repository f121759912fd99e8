"""Every KQL query in the docs reads something the broker really emits.

The broker's own exporter (azure-monitor-opentelemetry, broker/telemetry.py) writes its log records
to ``traces`` with the logger's name in ``customDimensions.logger_name``, and its instruments to
``customMetrics`` with their attributes in ``customDimensions``. Each ```kusto block in README.md and
docs/*.md is checked against the source of broker/ (read with ``ast``; the access lines, which
broker/http.py writes for the route table of broker/routes/, come from each route's own ``Route.template``):
- a logger name it filters on is a logger the broker creates;
- a message it matches (startswith / has) is the start of, or inside, a format string of those loggers;
- a ``key=`` it extracts from a message is a ``key=%s`` field of a format string of those loggers,
  and the whole pattern reads a line formatted from it;
- a metric name is an instrument the broker creates, and a customDimensions key an attribute it sets.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BROKER = ROOT / "broker"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}
INSTRUMENTS = {"create_counter", "create_histogram", "create_up_down_counter", "create_gauge"}
# Set by the Azure Monitor exporter on every record, not by the broker.
EXPORTER_DIMENSIONS = {"logger_name"}
KUSTO = re.compile(r"```kusto\n(.*?)```", re.DOTALL)
STRING = r'"([^"]+)"'


@dataclass
class Emitted:
    """What broker/ emits: format strings by logger, instrument names, attribute keys."""

    formats: dict[str, list[str]] = field(default_factory=dict)
    metrics: set[str] = field(default_factory=set)
    attributes: set[str] = field(default_factory=set)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def scan(path: Path, emitted: Emitted) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    loggers: dict[str, str] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Attribute)
            and node.value.func.attr == "getLogger"
            and node.value.args
        ):
            arg = node.value.args[0]
            name = module_name(path) if isinstance(arg, ast.Name) and arg.id == "__name__" else None
            name = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else name
            for target in node.targets:
                if isinstance(target, ast.Name) and name:
                    loggers[target.id] = name
                    emitted.formats.setdefault(name, [])
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
            if isinstance(node, ast.Dict):
                emitted.attributes.update(k.value for k in node.keys if isinstance(k, ast.Constant))
            continue
        first = node.args[0]
        text = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None
        owner = node.func.value
        if node.func.attr in LOG_METHODS and isinstance(owner, ast.Name) and owner.id in loggers and text:
            emitted.formats[loggers[owner.id]].append(text)
        if node.func.attr in INSTRUMENTS and text:
            emitted.metrics.add(text)


def access_line_formats() -> list[str]:
    """Each route's access line as broker/http.py writes it: ``Route.template()``, its first word the route's kind.

    Routes without ``accepts`` (health) write no access line."""
    from broker import http
    from broker import routes as table

    routes = {id(v): v for v in vars(table).values() if isinstance(v, http.Route) and v.accepts is not None}
    return [route.template().replace("%s", route.kind, 1) for route in routes.values()]


def broker_emits() -> Emitted:
    """What broker/ emits: every module's log calls and instruments, plus the route table's access lines."""
    found = Emitted()
    for path in sorted(BROKER.rglob("*.py")):
        if "standin" not in path.parts:
            scan(path, found)
    found.formats.setdefault("broker.access", []).extend(access_line_formats())
    assert found.formats and found.metrics
    return found


@pytest.fixture(scope="module")
def emitted() -> Emitted:
    return broker_emits()


@dataclass(frozen=True)
class Query:
    where: str
    text: str

    def strings_after(self, pattern: str) -> list[str]:
        """Every "..." right after ``pattern`` or inside the (...) list that follows it."""
        found = re.findall(pattern + r"\s*" + STRING, self.text)
        for group in re.findall(pattern + r"\s*\(([^)]*)\)", self.text):
            found += re.findall(STRING, group)
        return found

    @property
    def loggers(self) -> list[str]:
        return self.strings_after(r"logger_name\)?\s*(?:==|in)")

    @property
    def messages(self) -> list[tuple[str, str]]:
        return re.findall(r"message\s+(startswith|has|contains)\s+" + STRING, self.text)

    @property
    def fields(self) -> list[str]:
        return re.findall(r'extract\(@"([a-z_]+)=', self.text)

    @property
    def metrics(self) -> list[str]:
        return self.strings_after(r"\bname\s*(?:==|in)") if "customMetrics" in self.text else []

    @property
    def dimensions(self) -> list[str]:
        return re.findall(r"customDimensions\.(\w+)", self.text) + re.findall(
            r"customDimensions\[\s*" + STRING, self.text
        )


def queries(paths: list[Path] = DOCS) -> list[Query]:
    found = []
    for path in paths:
        for index, block in enumerate(KUSTO.findall(path.read_text(encoding="utf-8"))):
            found.append(Query(f"{path.relative_to(ROOT)} query {index + 1}", block))
    return found


def formats_of(query: Query, emitted: Emitted) -> list[str]:
    names = query.loggers or list(emitted.formats)
    return [text for name in names for text in emitted.formats.get(name, [])]


def problems(query: Query, emitted: Emitted) -> list[str]:
    found = [f"logger {name!r} does not exist" for name in query.loggers if name not in emitted.formats]
    formats = formats_of(query, emitted)
    for operator, text in query.messages:
        heads = [f.split("%", 1)[0] for f in formats]
        ok = any(h.startswith(text) for h in heads) if operator == "startswith" else any(text in f for f in formats)
        if not ok:
            found.append(f"no log line of {query.loggers or 'the broker'} {operator} {text!r}")
    for key in query.fields:
        if not any(re.search(rf"(^|\s){key}=%", f) for f in formats):
            found.append(f"no log line of {query.loggers or 'the broker'} has a field {key}=")
    unknown_metrics = [name for name in query.metrics if name not in emitted.metrics]
    found += [f"metric {name!r} is not an instrument the broker creates" for name in unknown_metrics]
    known = emitted.attributes | EXPORTER_DIMENSIONS
    unknown_dimensions = [key for key in query.dimensions if key not in known]
    found += [f"customDimensions.{key} is not an attribute the broker sets" for key in unknown_dimensions]
    return found


def test_the_docs_have_queries_that_read_the_access_lines_metrics_and_rotation_lines() -> None:
    """There are queries, and between them they use broker.access, broker.token.requests and rotation lines."""
    found = queries()
    assert len(found) >= 5
    everything = "\n".join(q.text for q in found)
    assert '"broker.access"' in everything
    assert '"broker.token.requests"' in everything
    assert '"rotation verified' in everything and '"rotation FAILED' in everything


@pytest.mark.parametrize("query", queries(), ids=lambda q: q.where)
def test_every_query_reads_only_what_the_broker_emits(query: Query, emitted: Emitted) -> None:
    """Loggers, messages, extracted fields, metrics and dimensions all exist in broker/."""
    assert not problems(query, emitted), f"{query.where}:\n{query.text}"


def test_extracted_fields_read_a_real_access_line(emitted: Emitted) -> None:
    """Each extract(@"key=(...)") of a query, run on an access line formatted from the source, yields a value.

    The token route's line and proxy mode's line are both access lines; a pattern must read one of them."""
    formats = [f for f in emitted.formats["broker.access"] if "latency_ms=" in f]
    assert any("outcome=" in f for f in formats)
    lines = [f % tuple(0.5 if spec == "f" else 1 for spec in re.findall(r"%[.\d]*([sdf])", f)) for f in formats]
    for query in queries():
        for pattern in re.findall(r'extract\(@"([^"]+)"', query.text):
            matches = [re.search(pattern, line) for line in lines]
            assert any(m and m.group(1) for m in matches), f"{query.where}: {pattern!r} reads nothing from {lines!r}"


def test_the_check_catches_names_the_broker_does_not_emit(emitted: Emitted) -> None:
    """A query for a made-up logger, message, field, metric or dimension is reported."""
    bogus = Query(
        "made up",
        'traces | where customDimensions.logger_name == "broker.nothing" and message startswith "rotation maybe"\n'
        '| extend x = extract(@"colour=(\\S+)", 1, message)\n'
        'customMetrics | where name == "broker.token.requestz" | extend c = tostring(customDimensions.colour)',
    )
    found = problems(bogus, emitted)
    assert len(found) == 5, found
