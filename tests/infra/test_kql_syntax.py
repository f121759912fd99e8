"""Every KQL query we deploy or document parses, and names only real columns, in Microsoft's own KQL parser.

The parser is Kusto.Language, the library behind Azure Data Explorer's and Azure Monitor's query
editors, as Microsoft publishes it on npm (@kusto/language-service-next, installed by `make test`
under .venv/tools/kusto). Each query is analysed against the Application Insights tables it reads,
with their documented columns, so a typo in a column, a function or the syntax fails here rather than
in the portal (or, for an alert, silently never firing). The workbook's ``{TimeRange:grain}``
parameter is replaced by a duration first, as the workbook does before it runs a query.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bicep_settings import ROOT  # noqa: E402
from monitoring_queries import alert_queries, workbook_queries  # noqa: E402
from test_kql_queries import queries as documented_queries  # noqa: E402

KUSTO_MODULES = ROOT / ".venv" / "tools" / "kusto" / "node_modules"
CHECK = Path(__file__).parent / "kql_check.js"
# Application Insights' classic tables (what an alert scoped to the component and the workbook query),
# with the columns Microsoft documents for them; AzureDiagnostics is the workspace's Key Vault audit table.
SCHEMA = {
    "traces": "(timestamp:datetime, message:string, severityLevel:int, itemType:string, customDimensions:dynamic, "
    "operation_Id:string, operation_ParentId:string, operation_Name:string, cloud_RoleName:string, "
    "cloud_RoleInstance:string, appName:string, itemCount:int)",
    "customMetrics": "(timestamp:datetime, name:string, value:real, valueCount:int, valueSum:real, valueMin:real, "
    "valueMax:real, valueStdDev:real, customDimensions:dynamic, operation_Id:string, cloud_RoleName:string, "
    "cloud_RoleInstance:string, itemCount:int)",
    "requests": "(timestamp:datetime, id:string, name:string, url:string, success:bool, resultCode:string, "
    "duration:real, performanceBucket:string, customDimensions:dynamic, operation_Id:string, "
    "operation_Name:string, cloud_RoleName:string, itemCount:int)",
    # The availability test's results (docs/operations.md asks for them after a deployment).
    "availabilityResults": "(timestamp:datetime, id:string, name:string, location:string, success:bool, "
    "message:string, duration:real, performanceBucket:string, customDimensions:dynamic, itemCount:int)",
    "AzureDiagnostics": "(TimeGenerated:datetime, ResourceProvider:string, OperationName:string, "
    "identity_claim_appid_g:string, ResultSignature:string, httpStatusCode_d:real, Resource:string)",
}


def all_queries() -> dict[str, str]:
    found = {f"alerts.bicep {key}": text for key, text in alert_queries().items()}
    for key, text in workbook_queries().items():
        found[f"workbook.json {key}"] = text.replace("{TimeRange:grain}", "1h")
    found |= {query.where: query.text for query in documented_queries()}
    return found


def analyse(queries: dict[str, str]) -> dict[str, list[str]]:
    node = shutil.which("node")
    assert node, "node is needed (the same Node.js that runs Azurite)"
    assert (KUSTO_MODULES / "@kusto" / "language-service-next").is_dir(), (
        "Microsoft's KQL parser is not installed: run `make .venv/tools/kusto/.installed-12.4.1` (make test does)"
    )
    done = subprocess.run(  # noqa: S603 - fixed script, our own input
        [node, str(CHECK)],
        input=json.dumps({"schema": SCHEMA, "queries": queries}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NODE_PATH": str(KUSTO_MODULES)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, list[str]] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def diagnostics() -> dict[str, list[str]]:
    return analyse(all_queries())


@pytest.mark.slow
def test_the_parser_reports_a_made_up_column_and_a_syntax_error() -> None:
    """The check can fail: an unknown column and an unclosed call are both diagnosed."""
    found = analyse({"column": "traces | where colour == 1", "syntax": "customMetrics | summarize sum(valueSum"})
    assert any("colour" in d for d in found["column"])
    assert found["syntax"]


def test_there_are_alert_workbook_and_documented_queries() -> None:
    """The count is a figure: every alert rule, every workbook panel and every documented query."""
    names = list(all_queries())
    assert sum(n.startswith("alerts.bicep") for n in names) == 6
    assert sum(n.startswith("workbook.json") for n in names) == 7
    assert sum(n.startswith("docs/") or n.startswith("README") for n in names) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(all_queries()))
def test_every_query_parses_and_names_only_real_columns(name: str, diagnostics: dict[str, list[str]]) -> None:
    """No syntax error and no unknown name in Microsoft's KQL parser."""
    assert diagnostics[name] == [], f"{name}: {diagnostics[name]}"
