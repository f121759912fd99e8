"""The samples import as they are: every environment-specific value is a run parameter, passed down the chain
pipeline -> dataset -> linked service, and the docs' createRun commands pass exactly the parameters a run needs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADF = ROOT / "infra" / "adf"
DOCS_WITH_RUNS = [ROOT / "README.md", ROOT / "docs" / "adf.md"]
PIPELINE_PARAM = re.compile(r"pipeline\(\)\.parameters\.(\w+)")
DATASET_PARAM = re.compile(r"dataset\(\)\.(\w+)")
LINKED_PARAM = re.compile(r"linkedService\(\)\.(\w+)")
# A value only the deployment knows, written into a sample instead of being a parameter.
HAND_EDIT = re.compile(r"replace-me|00000000-0000-0000-0000-000000000000|azurewebsites\.net")


def documents(folder: str) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((ADF / folder).glob("*.json"))}


def required(document: dict[str, Any]) -> set[str]:
    specs = document["properties"].get("parameters", {})
    return {name for name, spec in specs.items() if "defaultValue" not in spec}


def declared(document: dict[str, Any]) -> set[str]:
    return set(document["properties"].get("parameters", {}))


def used(document: dict[str, Any], pattern: re.Pattern[str]) -> set[str]:
    return set(pattern.findall(json.dumps(document)))


def references(node: Any, kind: str) -> list[dict[str, Any]]:
    """Every {"referenceName": ..., "type": kind} object in a document."""
    if isinstance(node, dict):
        own = [node] if node.get("type") == kind and "referenceName" in node else []
        return own + [r for value in node.values() for r in references(value, kind)]
    if isinstance(node, list):
        return [r for value in node for r in references(value, kind)]
    return []


def test_no_sample_holds_a_value_only_the_deployment_knows() -> None:
    """No placeholder to hand-edit: hosts, App ID URIs and SQL servers arrive as parameters."""
    for path in sorted(ADF.rglob("*.json")):
        text = json.dumps(json.loads(path.read_text(encoding="utf-8"))["properties"].get("typeProperties", {}))
        text += json.dumps(json.loads(path.read_text(encoding="utf-8"))["properties"].get("parameters", {}))
        assert not HAND_EDIT.search(text), f"{path.relative_to(ROOT)} has a value to edit by hand"


@pytest.mark.parametrize("folder", ["pipeline", "dataset", "linkedService"])
def test_every_parameter_an_expression_reads_is_declared(folder: str) -> None:
    """@pipeline().parameters.X, @dataset().X and @linkedService().X each name a declared parameter."""
    pattern = {"pipeline": PIPELINE_PARAM, "dataset": DATASET_PARAM, "linkedService": LINKED_PARAM}[folder]
    for name, document in documents(folder).items():
        assert used(document, pattern) <= declared(document), name


@pytest.mark.parametrize(
    ("parents", "kind", "children"),
    [("pipeline", "DatasetReference", "dataset"), ("dataset", "LinkedServiceReference", "linkedService")],
)
def test_each_reference_passes_what_its_target_requires(parents: str, kind: str, children: str) -> None:
    """A dataset or linked service reference sets every parameter without a default, and no unknown one."""
    targets = documents(children)
    for name, document in documents(parents).items():
        for reference in references(document, kind):
            target = targets[reference["referenceName"]]
            passed = set(reference.get("parameters", {}))
            assert required(target) <= passed <= declared(target), f"{name} -> {reference['referenceName']}"


def run_bodies(text: str) -> list[tuple[str, set[str]]]:
    """(pipeline name or variable, body keys) for each createRun command in a doc, POSIX and PowerShell."""
    found = []
    for match in re.finditer(r"pipelines/([\w$]+)/createRun", text):
        after = text[match.end() : match.end() + 600]
        keys = re.findall(r'\\"(\w+)\\":', after.split("--query")[0])
        if not keys:  # PowerShell: the body is a hashtable written to run.json before the call
            before = text[: match.start()]
            keys = re.findall(r"(\w+) = ", before[before.rindex("@{") : before.rindex("}")])
        found.append((match.group(1), set(keys)))
    return found


def test_the_docs_run_commands_pass_exactly_what_the_pipelines_need() -> None:
    """Each createRun in the README and docs/adf.md passes the pipeline's required parameters and no unknown one."""
    pipelines = documents("pipeline")
    runs = [(doc.name, *run) for doc in DOCS_WITH_RUNS for run in run_bodies(doc.read_text(encoding="utf-8"))]
    assert len(runs) >= 4, runs
    for doc, name, keys in runs:
        names = list(pipelines) if name.startswith("$") else [name]
        for pipeline in names:
            assert required(pipelines[pipeline]) <= keys <= declared(pipelines[pipeline]), (doc, pipeline, keys)


def test_a_run_body_missing_a_parameter_is_caught() -> None:
    """The check can fail: a body without sqlServer does not cover the proxy pipeline's required parameters."""
    text = 'pipelines/pl_ilevel_assets_to_sql_proxy/createRun?x" --body "{\\"brokerHost\\":\\"h\\"}" --query runId'
    [(name, keys)] = run_bodies(text)
    assert not required(documents("pipeline")[name]) <= keys
