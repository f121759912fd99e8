"""The committed ADF pipeline calls the broker the way docs/adf.md says, and reads only fields it returns."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from broker.routes.token import token_body
from broker.tokens import Secret, Token

ROOT = Path(__file__).resolve().parents[2]
ADF = ROOT / "infra" / "adf"
PIPELINE = ADF / "pipeline" / "pl_ilevel_assets_to_sql.json"
# A bare host name: Flex Consumption's default host names may carry a suffix and a region label.
BROKER_URL = re.compile(r"^https://[a-z0-9][a-z0-9.-]*\.azurewebsites\.net/api/token/ilevel\?min_validity=(\d+)$")
# What docs/adf.md's createRun passes (from azd env get-value), with made-up values of the same shape.
RUN_VALUES = {
    "brokerHost": "func-broker-abc123.azurewebsites.net",
    "brokerAppIdUri": "api://11111111-2222-3333-4444-555555555555/ilevel-token-broker-dev",
    "sqlServer": "sql-ilevel-dev",
}
OUTPUT_REF = re.compile(r"activity\(\s*'([^']+)'\s*\)\s*\.output\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*'([^']+)'\s*\])?")
PARAM_REF = re.compile(r"^(?:string\()?pipeline\(\)\.parameters\.(\w+)\)?$")


@pytest.fixture(scope="module")
def pipeline() -> dict[str, Any]:
    return json.loads(PIPELINE.read_text(encoding="utf-8"))


def activities(pipeline: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {activity["name"]: activity for activity in pipeline["properties"]["activities"]}


def broker_calls(pipeline: dict[str, Any]) -> list[dict[str, Any]]:
    calls = [a for a in activities(pipeline).values() if a["type"] == "WebActivity" and "/api/token/" in json.dumps(a)]
    assert calls, "the pipeline has no Web activity calling the broker"
    return calls


def strings(node: Any) -> list[str]:
    """Every string value anywhere in a JSON document."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings(value)]
    return []


def run_parameters(pipeline: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's parameters as a run sees them: the defaults, and the values createRun passes."""
    specs = pipeline["properties"].get("parameters", {})
    return {name: RUN_VALUES.get(name, spec.get("defaultValue")) for name, spec in specs.items()}


def resolve(value: Any, params: dict[str, Any]) -> str:
    """The value with pipeline parameters as a run sets them; handles literals and @concat of literals/parameters."""
    if isinstance(value, dict):
        assert value.get("type") == "Expression", f"unexpected value object {value}"
        value = value["value"]
    assert isinstance(value, str)
    if not value.startswith("@"):
        return value
    expression = value[1:].strip()
    if expression.startswith("concat(") and expression.endswith(")"):
        parts = re.findall(r"'[^']*'|[^,]+", expression[len("concat(") : -1])
    else:
        parts = [expression]
    out = []
    for part in (p.strip() for p in parts):
        if part.startswith("'"):
            out.append(part.strip("'"))
            continue
        match = PARAM_REF.fullmatch(part)
        assert match, f"cannot resolve {part!r}; keep broker URLs to literals and pipeline parameters"
        out.append(str(params[match[1]]))
    return "".join(out)


def upstream(name: str, acts: dict[str, dict[str, Any]]) -> set[str]:
    """Names of every activity that ``name`` depends on, directly or not."""
    seen: set[str] = set()
    stack = [dep["activity"] for dep in acts[name].get("dependsOn", [])]
    while stack:
        dep = stack.pop()
        if dep not in seen:
            seen.add(dep)
            stack.extend(d["activity"] for d in acts[dep].get("dependsOn", []))
    return seen


def broker_fields() -> set[str]:
    token = Token(access_token=Secret("x"), obtained_at=0.0, expires_at=3600.0)
    return set(token_body(token, now=0.0))


def test_broker_call_authenticates_with_the_factory_identity_for_the_broker_audience(pipeline: dict[str, Any]) -> None:
    """The Web activity uses MSI with resource = the broker's App ID URI (api://...)."""
    params = run_parameters(pipeline)
    for call in broker_calls(pipeline):
        auth = call["typeProperties"]["authentication"]
        assert auth["type"] == "MSI"
        assert resolve(auth["resource"], params).startswith("api://")


def test_broker_call_hides_its_output_from_run_monitoring(pipeline: dict[str, Any]) -> None:
    """The Web activity that receives the token sets policy.secureOutput."""
    for call in broker_calls(pipeline):
        assert call["policy"]["secureOutput"] is True


def test_broker_call_gets_the_ilevel_token_url_with_a_valid_min_validity(pipeline: dict[str, Any]) -> None:
    """GET https://<broker host>/api/token/ilevel?min_validity=<0..3600>."""
    for call in broker_calls(pipeline):
        assert call["typeProperties"]["method"] == "GET"
        url = resolve(call["typeProperties"]["url"], run_parameters(pipeline))
        match = BROKER_URL.fullmatch(url)
        assert match, f"unexpected broker URL shape {url!r}"
        assert 0 <= int(match[1]) <= 3600


def test_every_output_reference_names_an_existing_activity_and_a_field_the_broker_returns(
    pipeline: dict[str, Any],
) -> None:
    """Each @activity('X').output.<field> names a real upstream activity and a field of routes.token.token_body."""
    acts = activities(pipeline)
    fields = broker_fields()
    references = 0
    for name, activity in acts.items():
        for text in strings(activity):
            for target, attr, item in OUTPUT_REF.findall(text):
                references += 1
                assert target in acts, f"{name} reads the output of {target!r}, which is not in the pipeline"
                assert target in upstream(name, acts), f"{name} reads {target!r} without depending on it"
                field = attr or item
                assert field in fields, f"{name} reads .output.{field or '<whole object>'}; the broker returns {fields}"
    assert references, "the pipeline never uses the broker's token"


def test_every_activity_the_token_flows_into_hides_its_input(pipeline: dict[str, Any]) -> None:
    """Any activity whose expressions read a broker call's output sets policy.secureInput."""
    callers = {call["name"] for call in broker_calls(pipeline)}
    for name, activity in activities(pipeline).items():
        reads = {target for text in strings(activity) for target, _, _ in OUTPUT_REF.findall(text)}
        if reads & callers:
            secure = activity.get("policy", {}).get("secureInput")
            assert secure is True, f"{name} receives the token without secureInput"


def test_no_adf_file_carries_a_credential() -> None:
    """No pipeline, dataset or linked service holds a password, secret, key or Basic header."""
    forbidden = re.compile(r"password|clientSecret|servicePrincipalKey|accountKey|client_secret|Basic ", re.IGNORECASE)
    files = sorted(ADF.rglob("*.json"))
    assert PIPELINE in files
    for path in files:
        text = path.read_text(encoding="utf-8")
        json.loads(text)
        assert not forbidden.search(text), f"{path.relative_to(ROOT)} contains a credential-like field"
