"""function_app.py in process: the Functions host's own request objects, the indexing, the Event Grid trigger."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import azure.functions as func
import pytest

from broker.errors import ConfigError
from tests.conftest import Stack


@pytest.fixture
def function_app(stack: Stack) -> Iterator[ModuleType]:
    stack.export_environment()
    sys.modules.pop("function_app", None)
    module = importlib.import_module("function_app")
    yield module
    # AsgiFunctionApp.__del__ calls asyncio.run() for the ASGI shutdown, which cannot work from a
    # garbage collection inside a running loop (azure-functions 1.26); the real host never deletes it.
    module.app.startup_task_done = False
    sys.modules.pop("function_app", None)


def functions(module: ModuleType) -> dict[str, Any]:
    return {f.get_function_name(): f for f in module.app.get_functions()}


def test_function_app_indexes_the_http_app_and_the_rotation_check(function_app: ModuleType) -> None:
    """The host finds one anonymous catch-all HTTP function and one Event Grid function."""
    found = functions(function_app)
    assert set(found) == {"http_app_func", "rotation_check"}
    http = json.loads(found["http_app_func"].get_function_json())
    trigger = next(b for b in http["bindings"] if b["type"] == "httpTrigger")
    assert trigger["authLevel"].lower() == "anonymous"
    assert trigger["route"] == "/{*route}"
    rotation = json.loads(found["rotation_check"].get_function_json())
    assert [b["type"] for b in rotation["bindings"]] == ["eventGridTrigger"]


async def test_a_token_comes_back_through_the_functions_request_objects(function_app: ModuleType, stack: Stack) -> None:
    """func.HttpRequest for https://<app>.azurewebsites.net/api/token/ilevel reaches the same ASGI app."""
    handler = functions(function_app)["http_app_func"].get_user_function()
    request = func.HttpRequest(
        method="GET",
        url="https://func-broker.azurewebsites.net/api/token/ilevel",
        headers={"Authorization": f"Bearer {stack.caller()}"},
        params={"min_validity": "600"},
        body=b"",
    )
    response = await handler(request, None)
    assert response.status_code == 200
    body = json.loads(response.get_body())
    assert body["access_token"] == stack.tokens.issued_tokens[-1]
    assert response.headers["Cache-Control"] == "no-store"


async def test_health_is_anonymous_through_the_functions_request_objects(function_app: ModuleType) -> None:
    """/api/health answers without a caller token in Azure too."""
    handler = functions(function_app)["http_app_func"].get_user_function()
    request = func.HttpRequest(method="GET", url="https://func-broker.azurewebsites.net/api/health", body=b"")
    response = await handler(request, None)
    assert (response.status_code, json.loads(response.get_body())) == (200, {"status": "ok"})


async def test_the_rotation_check_trigger_verifies_the_new_version(
    function_app: ModuleType, stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """A SecretNewVersionCreated event (with the stray spaces of Microsoft's sample) logs 'rotation verified'."""
    stack.rotate_secret()
    version = stack.kv.versions("ilevel-client-secret")[-1]
    event = func.EventGridEvent(
        id="1",
        data={
            "Id": "x",
            "VaultName": "kv",
            "ObjectType": "Secret",
            "ObjectName ": "ilevel-client-secret",
            "Version": version,
        },
        topic="/subscriptions/x/resourceGroups/y/providers/Microsoft.KeyVault/vaults/kv",
        subject="ilevel-client-secret",
        event_type="Microsoft.KeyVault.SecretNewVersionCreated",
        event_time=None,
        data_version="1",
    )
    await functions(function_app)["rotation_check"].get_user_function()(event)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rotation ")]
    assert len(lines) == 1
    assert lines[0].startswith("rotation verified")
    assert version in lines[0]


def test_an_invalid_configuration_stops_the_function_app_naming_the_setting(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing function_app without BROKER_AUDIENCE fails with a ConfigError that names it."""
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("BROKER_AUDIENCE")
    sys.modules.pop("function_app", None)
    with pytest.raises(ConfigError, match="BROKER_AUDIENCE"):
        importlib.import_module("function_app")
    sys.modules.pop("function_app", None)
