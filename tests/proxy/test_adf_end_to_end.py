"""Done-when for proxy mode: ADF's REST connector, pointed at the broker with managed identity, copies a
paginated iLevel collection, and no token is anywhere in the factory.

The sample files in infra/adf/ drive the run: the linked service's URL and aadResourceId, the dataset's
relative URL, the Copy activity's AbsoluteUrl pagination rule and collection reference. The "factory"
here does what ADF's REST source does with them, against the Azure Functions entry point and the stand-ins.
That the files load into azure-mgmt-datafactory's models is tests/adf/test_adf_models.py's job.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from broker.standin.dataapi import DataApi, asset
from tests.conftest import Stack
from tests.hosts import FUNCTIONS_BASE_URL
from tests.proxy.conftest import Rig

ROOT = Path(__file__).resolve().parents[2]
ADF = ROOT / "infra" / "adf"
LINKED_SERVICE = ADF / "linkedService" / "ls_ilevel_broker_proxy.json"
DATASET = ADF / "dataset" / "ds_ilevel_assets_proxy.json"
PIPELINE = ADF / "pipeline" / "pl_ilevel_assets_to_sql_proxy.json"


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def copy_activity() -> dict[str, Any]:
    (activity,) = load(PIPELINE)["properties"]["activities"]
    return activity  # type: ignore[no-any-return]


def resolve(expression: str, parameters: dict[str, str]) -> str:
    """The linked service's ``@{...}`` string with its parameters filled in (literals, concat, linkedService())."""

    def value(term: str) -> str:
        term = term.strip()
        if term.startswith("'"):
            return term.strip("'")
        match = re.fullmatch(r"linkedService\(\)\.(\w+)", term)
        assert match, f"cannot resolve {term!r}"
        return parameters[match[1]]

    inner = re.fullmatch(r"@\{(.*)\}", expression)
    if inner is None:
        return expression
    body = inner[1].strip()
    if body.startswith("concat(") and body.endswith(")"):
        return "".join(value(t) for t in re.findall(r"'[^']*'|[^,]+", body[len("concat(") : -1]))
    return value(body)


def json_path(document: Any, path: str) -> Any:
    """The subset of JSONPath ADF's pagination rules and collection references use: $.a.b and $['a']."""
    keys = re.findall(r"\.(\w+)|\['([^']+)'\]", path.removeprefix("$"))
    for dotted, quoted in keys:
        if not isinstance(document, dict):
            return None
        document = document.get(dotted or quoted)
    return document


def test_the_proxy_pipeline_is_one_copy_activity_with_managed_identity_and_no_token_anywhere() -> None:
    """No Web activity, no secure* flag to forget, no Authorization header: the factory's identity is all it holds."""
    pipeline = load(PIPELINE)
    assert [a["type"] for a in pipeline["properties"]["activities"]] == ["Copy"]
    keys: set[str] = set()
    values: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            keys.update(node)
            for item in node.values():
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, str):
            values.append(node)

    for path in (PIPELINE, LINKED_SERVICE, DATASET):
        walk(load(path))
    assert not keys & {"secureInput", "secureOutput", "Authorization", "password", "servicePrincipalKey"}
    assert not [v for v in values if "/api/token/" in v or v == "WebActivity"]
    linked = load(LINKED_SERVICE)["properties"]
    assert linked["type"] == "RestService"
    assert linked["typeProperties"]["authenticationType"] == "ManagedServiceIdentity"
    # The values a run passes down (docs/adf.md: azd env get-value BROKER_HOST / BROKER_APP_ID_URI), made up.
    run = {"brokerHost": "func-broker-abc123.azurewebsites.net", "brokerAppIdUri": "api://11111111-2222/broker-dev"}
    assert set(linked["parameters"]) == set(run)
    assert (
        resolve(linked["typeProperties"]["url"], run)
        == "https://func-broker-abc123.azurewebsites.net/api/proxy/ilevel/"
    )
    assert resolve(linked["typeProperties"]["aadResourceId"], run).startswith("api://")
    assert copy_activity()["typeProperties"]["source"]["paginationRules"] == {"AbsoluteUrl": "$.links.next"}


@pytest.mark.slow
@pytest.mark.parametrize("host", ["functions"])
async def test_adf_copies_a_paginated_collection_through_the_functions_entry_point(
    rig: Rig, stack: Stack, data_api: DataApi
) -> None:
    """The dataset's first page, then AbsoluteUrl = $.links.next until there is none: every asset, no token seen."""
    linked = load(LINKED_SERVICE)["properties"]
    host = FUNCTIONS_BASE_URL.removeprefix("https://")
    parameters = {
        "brokerHost": host,
        "brokerAppIdUri": stack.settings().audiences and sorted(stack.settings().audiences)[0],
    }
    base = resolve(linked["typeProperties"]["url"], parameters)
    audience = resolve(linked["typeProperties"]["aadResourceId"], parameters)
    source = copy_activity()["typeProperties"]["source"]
    collection = copy_activity()["typeProperties"]["translator"]["collectionReference"]
    # What the factory's managed identity presents: an Entra token for the broker's App ID URI, nothing else.
    factory_token = stack.caller(aud=audience)
    data_api.assets = 1203
    try:
        async with rig.open() as api:
            url: str | None = base + load(DATASET)["properties"]["typeProperties"]["relativeUrl"]
            rows: list[Any] = []
            pages = 0
            while url:
                assert url.startswith(base), f"pagination left the broker: {url}"
                response = await api.get(url, token=factory_token, method=source["requestMethod"])
                assert response.status_code == 200, response.text
                page = response.json()
                rows += json_path(page, collection)
                pages += 1
                url = json_path(page, source["paginationRules"]["AbsoluteUrl"])
    finally:
        data_api.assets = 23
    assert pages == 3
    assert rows == [asset(n) for n in range(1, 1204)]
    assert stack.tokens.request_count == 1
    assert len(data_api.authorized_requests) == 3
