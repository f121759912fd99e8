"""Guards for the platform's worker: the deployed app settings, run and checked against the pinned worker.

Microsoft's worker changed its telemetry settings under the app once (issue 21): PYTHON_ENABLE_OPENTELEMETRY
alone left the propagator unset and failed every async invocation on worker 4.36+. These tests would have
caught it: the worker requirements.txt pins runs under exactly the Bicep's settings, and every PYTHON_*
setting the Bicep deploys must be one that worker knows.
"""

from __future__ import annotations

import pytest
from azure_functions_runtime.utils import constants

from tests.infra.bicep_settings import app_settings, operator_settings
from tests.worker.children import run_child


def worker_setting_names() -> set[str]:
    """Every app-setting name the pinned worker defines, read from the installed package."""
    return {
        value
        for name, value in vars(constants).items()
        if name.isupper() and isinstance(value, str) and value.startswith("PYTHON_")
    }


@pytest.mark.slow
def test_the_worker_completes_one_invocation_of_each_function_under_the_exact_deployed_settings() -> None:
    """Worker init, metadata, load, then the HTTP and the Event Grid function, in a process whose environment is
    the Bicep's app settings: the worker refuses nothing and answers 200."""
    run = run_child("deployed")
    assert run["functions"] == ["http_app_func", "rotation_check"]
    assert run["failures"] == []
    assert run["invocations"] == 3  # two HTTP requests, one Event Grid event
    assert [request["status"] for request in run["requests"]] == [200, 200]


def test_every_python_setting_the_bicep_deploys_is_known_to_the_pinned_worker() -> None:
    """A PYTHON_* app setting the worker does not define does nothing (a renamed one, silently)."""
    known = worker_setting_names()
    assert constants.PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME in known  # the reading works at all
    deployed = [s.name for s in app_settings() + operator_settings() if s.name.startswith("PYTHON_")]
    assert deployed, "the Bicep deploys no PYTHON_* setting: this guard would check nothing"
    unknown = sorted(set(deployed) - known)
    assert unknown == [], f"unknown to azure-functions-runtime {constants.__name__}: {unknown}"


def test_the_bicep_never_sets_the_opentelemetry_switch_without_the_azure_monitor_one() -> None:
    """PYTHON_ENABLE_OPENTELEMETRY alone breaks every async invocation on the 3.11/3.12 worker (no propagator)."""
    names = {s.name for s in app_settings() + operator_settings()}
    if constants.PYTHON_ENABLE_OPENTELEMETRY in names:
        assert constants.PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY in names
