"""The workbook deployed by infra/app/workbook.bicep shows the issue's panels, each from what the broker emits.

Every query item of infra/app/workbook.json is checked like the docs' queries: loggers, message
prefixes, extracted fields, metrics, dimensions and compared outcomes all exist in broker/.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bicep_settings import ROOT  # noqa: E402
from monitoring_queries import (  # noqa: E402
    SERVED_OUTCOMES,
    WORKBOOK_BICEP,
    _items,
    compared_outcomes,
    error_codes,
    workbook,
    workbook_queries,
)
from test_kql_queries import Emitted, Query, broker_emits, problems  # noqa: E402

# The issue's panels, by the item name each has in workbook.json.
PANELS = {
    "tokens-by-outcome",
    "latency-by-route",
    "proxy-by-provider",
    "rejections-by-reason",
    "top-callers",
    "fetches-and-reads",
    "fleet-cache",
}


@pytest.fixture(scope="module")
def emitted() -> Emitted:
    return broker_emits()


def test_the_workbook_has_the_issue_panels_and_bicep_loads_it() -> None:
    """One query per panel of the issue, and workbook.bicep deploys this very file, on Application Insights."""
    assert set(workbook_queries()) == PANELS
    bicep = WORKBOOK_BICEP.read_text(encoding="utf-8")
    loaded = "json(loadTextContent('./workbook.json'))"
    assert f"serializedData: string(union({loaded}, {{ fallbackResourceIds: [ applicationInsights.id ] }}))" in bicep
    assert "sourceId: applicationInsights.id" in bicep
    assert "module workbook './app/workbook.bicep'" in (ROOT / "infra" / "main.bicep").read_text(encoding="utf-8")


def test_every_panel_follows_the_chosen_time_range_on_application_insights() -> None:
    """Each query item takes the TimeRange parameter and runs against the Application Insights resource."""
    data = workbook()
    assert data["version"] == "Notebook/1.0"
    names = [p["name"] for item in _items(data) if item.get("type") == 9 for p in item["content"]["parameters"]]
    assert names == ["TimeRange"]
    for item in _items(data):
        if item.get("type") == 3:
            assert item["content"]["timeContextFromParameter"] == "TimeRange", item["name"]
            assert item["content"]["resourceType"] == "microsoft.insights/components", item["name"]


@pytest.mark.parametrize(("name", "query"), sorted(workbook_queries().items()))
def test_every_workbook_query_reads_only_what_the_broker_emits(name: str, query: str, emitted: Emitted) -> None:
    """Loggers, messages, extracted fields, metrics and dimensions all exist in broker/."""
    assert not problems(Query(f"workbook.json {name}", query), emitted), query


@pytest.mark.parametrize(("name", "query"), sorted(workbook_queries().items()))
def test_every_outcome_a_panel_compares_with_is_one_the_broker_logs(name: str, query: str) -> None:
    """An outcome value in a panel is a served outcome or an error code of broker/."""
    assert set(compared_outcomes(query)) <= SERVED_OUTCOMES | error_codes(), name


def test_the_latency_panel_reads_both_routes() -> None:
    """p50/p95 come from the token route's and the proxy route's access lines alike."""
    query = workbook_queries()["latency-by-route"]
    assert 'message startswith "request "' in query and 'message startswith "proxy "' in query
    assert "percentile(latency_ms, 50)" in query and "percentile(latency_ms, 95)" in query


def test_the_workbook_names_its_component_and_the_docs_say_how_to_see_the_availability_test_work() -> None:
    """fallbackResourceIds holds the Application Insights component (set at deployment, not an empty list that
    makes the portal ask); operations.md gives the post-deploy query and what an empty answer means."""
    bicep = WORKBOOK_BICEP.read_text(encoding="utf-8")
    assert "fallbackResourceIds: [ applicationInsights.id ]" in bicep
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = operations[operations.index("### After deploying: is the availability test writing results?") :]
    section = section[: section.index("\n### ", 10)]
    assert "```kusto\navailabilityResults | take 5\n```" in section
    assert "**No rows:**" in section and "disableLocalAuth" in section
