"""The house: imports run one way, the request's shape is handed its routes, and one place builds an error body.

Read from the source with ``ast`` (nothing imported), so a test fails on the line that breaks the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BROKER = ROOT / "broker"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def rooms() -> dict[str, Path]:
    """broker/'s modules, the stand-ins aside (they are test machinery, never deployed)."""
    return {module_name(path): path for path in sorted(BROKER.rglob("*.py")) if "standin" not in path.parts}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The broker modules ``path`` imports at any depth of its body (lazy imports count: they run too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & known.keys()
            found.update(submodules)
            if node.module in known and len(submodules) < len(node.names):
                found.add(node.module)
    found.discard(module_name(path))
    return found


def graph() -> dict[str, set[str]]:
    known = rooms()
    edges = {name: imports(path, known) for name, path in known.items()}
    # A package's __init__ that its own submodules import is the package itself, not a room above them.
    for name in edges:
        edges[name] = {target for target in edges[name] if not name.startswith(target + ".")}
    return edges


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in edges[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def test_imports_run_one_way() -> None:
    """No module of broker/ reaches itself through its imports: no cycle, so no arrow back up."""
    edges = graph()
    cycles = sorted(name for name in edges if name in reachable(edges, name))
    assert cycles == []


def test_the_shape_is_handed_its_routes_and_never_imports_them() -> None:
    """broker/http.py knows no route: broker/app.py hands it the table of broker/routes/."""
    edges = graph()
    assert not {name for name in reachable(edges, "broker.http") if name.startswith(("broker.routes", "broker.app"))}
    assert "broker.routes" in edges["broker.app"] and "broker.http" in edges["broker.app"]
    handlers = {name for name in edges if name.startswith("broker.routes.")}
    assert handlers == {f"broker.routes.{room}" for room in ("token", "proxy", "diagnostics", "health")}
    assert all("broker.http" in edges[name] for name in handlers)


def test_check_remote_reaches_nothing_of_the_running_app() -> None:
    """check --remote reads the shared report; it imports neither the runtime nor the secret store nor the endpoint."""
    reached = reachable(graph(), "broker.remote_check")
    assert "broker.report" in reached
    assert not reached & {"broker.runtime", "broker.secrets", "broker.endpoint", "broker.check"}


def test_one_place_builds_an_error_body() -> None:
    """Only broker.http.error_response writes an ``error_description``; everything else raises a BrokerError."""
    builders = []
    for name, path in rooms().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                keys = node.keys if isinstance(node, ast.Dict) else []
                if any(isinstance(k, ast.Constant) and k.value == "error_description" for k in keys):
                    builders.append(f"{name}.{function.name}")
    assert sorted(set(builders)) == ["broker.http.error_response"]
