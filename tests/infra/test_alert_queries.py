"""Every alert rule deployed by infra/app/alerts.bicep reads what the broker really emits, and notifies.

The queries are checked like the docs' (tests/infra/test_kql_queries.py): loggers, message prefixes,
extracted fields, metrics and dimensions all exist in broker/. The policy half reads the Bicep rules:
each one's scope, severity, action group and enabled state, for log alerts, the availability alert
and the Key Vault near-expiry subscription alike.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bicep_settings import ROOT, object_block, top_level_entries  # noqa: E402
from monitoring_queries import ALERTS, SERVED_OUTCOMES, alert_queries, compared_outcomes, error_codes  # noqa: E402
from test_kql_queries import Emitted, Query, broker_emits, problems  # noqa: E402

MAIN = ROOT / "infra" / "main.bicep"
PARAMETERS = ROOT / "infra" / "main.parameters.json"
OPERATIONS = ROOT / "docs" / "operations.md"

# The issue's table: each alert, and the severity its page deserves (0 critical ... 4 verbose).
SEVERITIES = {
    "rotationFailed": 1,
    "callerErrors": 1,
    "tokenStale": 2,
    "keyVaultDenied": 1,
    "callerRejections": 2,
    "fleetDegraded": 2,
}


@pytest.fixture(scope="module")
def emitted() -> Emitted:
    return broker_emits()


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def log_alerts() -> dict[str, dict[str, str]]:
    """The entries of the ``logAlerts`` array, by key."""
    lines = object_block(text(ALERTS), "var logAlerts = [")
    alerts, current = {}, list[str]()
    depth = 0
    for line in lines:
        depth += line.count("{") - line.count("}")
        if line.strip() == "{":
            current = []
        elif line.strip() == "}" and depth == 0:
            entry = dict(top_level_entries(current))
            alerts[entry["key"].strip("'")] = entry
        else:
            current.append(line)
    return alerts


def resource(symbol: str) -> list[str]:
    return object_block(text(ALERTS), f"resource {symbol} ")


def test_the_alerts_cover_the_issue_table() -> None:
    """One query and one rule per log-search alert of the issue, each with the severity its page deserves."""
    assert set(alert_queries()) == set(SEVERITIES)
    alerts = log_alerts()
    assert set(alerts) == set(SEVERITIES)
    assert {key: int(entry["severity"]) for key, entry in alerts.items()} == SEVERITIES


@pytest.mark.parametrize(("key", "query"), sorted(alert_queries().items()))
def test_every_alert_query_reads_only_what_the_broker_emits(key: str, query: str, emitted: Emitted) -> None:
    """Loggers, messages, extracted fields, metrics and dimensions all exist in broker/."""
    assert not problems(Query(f"alerts.bicep {key}", query), emitted), query


@pytest.mark.parametrize(("key", "query"), sorted(alert_queries().items()))
def test_every_outcome_an_alert_compares_with_is_one_the_broker_logs(key: str, query: str) -> None:
    """An outcome value in a query is a served outcome or an error code of broker/, not a typo."""
    known = SERVED_OUTCOMES | error_codes()
    assert set(compared_outcomes(query)) <= known, key


def test_the_outcome_check_catches_a_made_up_code() -> None:
    """A query comparing with a code the broker never logs is caught."""
    assert "key_vault_denied" not in error_codes()
    assert compared_outcomes('| where tostring(customDimensions.outcome) == "key_vault_denied"') == ["key_vault_denied"]


def test_caller_errors_fire_for_the_token_route_and_the_proxy_route() -> None:
    """Token answers of 500+ (broker.errors "request ..."), proxy access lines with status >= 500, and
    broker_misconfigured from either route all count."""
    query = alert_queries()["callerErrors"]
    assert 'message startswith "request "' in query and '"broker.errors"' in query
    assert 'message startswith "proxy "' in query and "status >= 500" in query
    assert 'outcome == "broker_misconfigured"' in query


def test_metric_alerts_aggregate_the_column_they_summarize() -> None:
    """A query that summarizes a column is alerted on that column's total; the others on their row count."""
    queries, alerts = alert_queries(), log_alerts()
    for key, query in queries.items():
        summarized = re.findall(r"summarize\s+(\w+)\s*=", query)
        assert alerts[key]["measure"].strip("'") == (summarized[0] if summarized else ""), key
    rule = "\n".join(resource("logAlertRules"))
    assert "timeAggregation: empty(alert.measure) ? 'Count' : 'Total'" in rule
    assert "metricMeasureColumn: empty(alert.measure) ? null : alert.measure" in rule


def test_every_log_alert_is_enabled_scoped_to_application_insights_and_notifies_the_action_group() -> None:
    """The one rule resource the alerts loop over: enabled, on the component, with the action group."""
    rule = resource("logAlertRules")
    properties = dict(top_level_entries(object_block("\n".join(rule), "properties: {")))
    assert properties["enabled"] == "true"
    assert properties["severity"] == "alert.severity"
    assert [line.strip() for line in object_block("\n".join(rule), "scopes: [")] == ["applicationInsights.id"]
    assert [line.strip() for line in object_block("\n".join(rule), "actionGroups: [")] == ["actionGroup.id"]
    assert "query: queries[alert.key]" in "\n".join(rule)
    assert "for alert in logAlerts:" in text(ALERTS)


def test_the_app_down_alert_watches_the_health_test_and_notifies() -> None:
    """A standard web test GETs /api/health; a metric alert on it is enabled, severity 1, with the action group."""
    test = "\n".join(resource("healthTest"))
    assert "kind: 'standard'" in test and "RequestUrl: 'https://${brokerHostName}/api/health'" in test
    assert "ExpectedHttpStatusCode: 200" in test
    assert "'hidden-link:${applicationInsights.id}': 'Resource'" in test
    alert = "\n".join(resource("appDown"))
    properties = dict(top_level_entries(object_block(alert, "properties: {")))
    assert properties["enabled"] == "true" and properties["severity"] == "1"
    assert [line.strip() for line in object_block(alert, "scopes: [")] == ["healthTest.id", "applicationInsights.id"]
    assert "'Microsoft.Azure.Monitor.WebtestLocationAvailabilityCriteria'" in alert
    assert "actionGroupId: actionGroup.id" in alert
    # /api/health is an anonymous route of the broker, so the test needs no token.
    from broker import routes

    health = next(route for route in routes.ROUTES if route.path.match("/api/health"))
    assert health.accepts is None and "GET" in health.methods


def test_secret_near_expiry_goes_from_event_grid_to_the_action_group() -> None:
    """The vault's system topic hands SecretNearExpiry to Azure Monitor as an alert with the action group."""
    subscription = "\n".join(resource("secretNearExpiry"))
    assert "parent: keyVaultTopic" in subscription
    assert "endpointType: 'MonitorAlert'" in subscription
    assert "'Microsoft.KeyVault.SecretNearExpiry'" in subscription
    assert [line.strip() for line in object_block(subscription, "actionGroups: [")] == ["actionGroup.id"]
    assert "severity: 'Sev3'" in subscription


def test_the_action_group_is_enabled_and_mails_the_azd_addresses() -> None:
    """BROKER_ALERT_EMAILS → alertEmails → the action group's e-mail receivers; empty means no receiver."""
    group = "\n".join(resource("actionGroup"))
    assert "enabled: true" in group and "for (address, index) in emails:" in group
    assert "var emails = empty(cleaned) ? [] : split(cleaned, ',')" in text(ALERTS)
    parameters = json.loads(text(PARAMETERS))["parameters"]
    assert parameters["alertEmails"]["value"] == "${BROKER_ALERT_EMAILS}"
    assert "param alertEmails string = ''" in text(MAIN)
    call = dict(top_level_entries(object_block("\n".join(object_block(text(MAIN), "module alerts ")), "params: {")))
    assert call["alertEmails"] == "alertEmails"
    assert call["keyVaultSystemTopicName"] == "vault.outputs.systemTopicName"


def test_every_threshold_and_window_is_a_parameter_the_docs_justify() -> None:
    """Each tunable of alerts.bicep has a default, and docs/operations.md names it with that default."""
    docs = text(OPERATIONS)
    tunables = re.findall(r"^param (\w+) (?:string|int) = '?([^'\n]+)'?$", text(ALERTS), re.MULTILINE)
    names = {name for name, _ in tunables}
    assert {"evaluationFrequency", "urgentWindow", "countingWindow", "callerErrorThreshold"} <= names
    for name, default in tunables:
        if name == "alertEmails":
            continue
        assert re.search(rf"`{name}`[^\n]*`{re.escape(default)}`", docs), f"docs/operations.md: `{name}` … `{default}`"
