"""function_app.py as Microsoft's worker (azure_functions_runtime) drives it: indexing, the Event Grid
trigger in both schemas, a broken configuration, and the worker's DEBUG logging. The HTTP contract itself
runs on both hosts in the other test modules (tests/hosts.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from broker.startup import QUIET_LOGGERS
from tests.conftest import Stack
from tests.hosts import functions_host, functions_worker
from tests.worker.driver import Worker

NEW_VERSION = "Microsoft.KeyVault.SecretNewVersionCreated"
VAULT_TOPIC = "/subscriptions/x/resourceGroups/y/providers/Microsoft.KeyVault/vaults/kv"


@pytest.fixture
async def worker(stack: Stack) -> AsyncIterator[Worker]:
    stack.export_environment()
    async with functions_worker() as started:
        yield started


def bindings(worker: Worker, name: str) -> list[dict[str, Any]]:
    """The bindings the runtime reports to the host for a function (its function metadata)."""
    return [json.loads(raw) for raw in worker.functions[name].raw_bindings]


def test_function_app_indexes_the_http_app_and_the_rotation_check(worker: Worker) -> None:
    """The host is told of one anonymous catch-all HTTP function and one Event Grid function."""
    assert set(worker.functions) == {"http_app_func", "rotation_check"}
    trigger = next(b for b in bindings(worker, "http_app_func") if b["type"] == "httpTrigger")
    assert trigger["authLevel"].lower() == "anonymous"
    assert trigger["route"] == "/{*route}"
    assert [b["type"] for b in bindings(worker, "rotation_check")] == ["eventGridTrigger"]


# --- Event Grid: both schemas, as the JSON the host passes; the runtime decodes it ----------------------
def key_vault_data(name: str, version: str) -> dict[str, Any]:
    """The data Key Vault documents for its events, with the stray space of Microsoft's own sample."""
    return {
        "Id": f"https://kv.vault.azure.net/secrets/{name}/{version}",
        "VaultName": "kv",
        "ObjectType": "Secret",
        "ObjectName ": name,
        "Version": version,
        "NBF": None,
        "EXP": None,
    }


def event_time() -> str:
    """Now, in the 7-digit fraction Event Grid writes (no calendar date in a test)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def event_grid_schema(name: str, version: str) -> dict[str, Any]:
    return {
        "id": "1",
        "topic": VAULT_TOPIC,
        "subject": name,
        "eventType": NEW_VERSION,
        "eventTime": event_time(),
        "data": key_vault_data(name, version),
        "dataVersion": "1",
        "metadataVersion": "1",
    }


def cloud_event_schema(name: str, version: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": "1",
        "source": VAULT_TOPIC,
        "subject": name,
        "type": NEW_VERSION,
        "time": event_time(),
        "datacontenttype": "application/json",
        "data": key_vault_data(name, version),
    }


def rotation_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("rotation ")]


@pytest.mark.parametrize("schema", [event_grid_schema, cloud_event_schema], ids=["event-grid", "cloudevents-1.0"])
async def test_the_rotation_check_verifies_the_new_version_in_either_event_schema(
    worker: Worker, stack: Stack, caplog: pytest.LogCaptureFixture, schema: Any
) -> None:
    """SecretNewVersionCreated in the Event Grid or the CloudEvents schema logs one 'rotation verified' line."""
    stack.rotate_secret()
    version = stack.kv.versions("ilevel-client-secret")[-1]
    await worker.event_grid(schema("ilevel-client-secret", version))
    lines = rotation_lines(caplog)
    assert len(lines) == 1, lines
    assert lines[0].startswith("rotation verified")
    assert version in lines[0]


async def test_the_rotation_check_ignores_other_event_types_in_the_cloudevents_schema(
    worker: Worker, stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """A SecretNearExpiry CloudEvent is named and ignored: no token request is made."""
    payload = cloud_event_schema("ilevel-client-secret", "v1")
    payload["type"] = "Microsoft.KeyVault.SecretNearExpiry"
    await worker.event_grid(payload)
    assert "ignoring event type Microsoft.KeyVault.SecretNearExpiry" in caplog.text
    assert stack.tokens.request_count == 0


# --- a broken configuration -----------------------------------------------------------------------
@pytest.fixture
async def misconfigured(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Worker]:
    stack.export_environment()
    monkeypatch.delenv("BROKER_AUDIENCE")
    async with functions_worker() as started:
        yield started


async def test_a_broken_configuration_still_indexes_and_logs_the_setting_once(
    misconfigured: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    """Without BROKER_AUDIENCE the app still has both functions, and one ERROR line names the setting."""
    assert set(misconfigured.functions) == {"http_app_func", "rotation_check"}
    errors = [r for r in caplog.get_records("setup") + caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "BROKER_AUDIENCE" in errors[0].getMessage()
    assert errors[0].exc_info is None


@pytest.mark.parametrize("path", ["/api/health", "/api/token/ilevel", "/api/anything"])
async def test_every_request_to_a_misconfigured_app_answers_503_naming_the_setting(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Health included: 503 broker_misconfigured naming BROKER_AUDIENCE (never a value), with Retry-After."""
    stack.export_environment()
    monkeypatch.delenv("BROKER_AUDIENCE")
    monkeypatch.setenv("BROKER_ILEVEL_AUTH_METHOD", "client_secret_basic")
    async with functions_host() as client:
        response = await client.get(path, headers={"Authorization": f"Bearer {stack.caller()}"})
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "broker_misconfigured"
    assert "BROKER_AUDIENCE" in body["error_description"]
    assert stack.entra.tenant_id not in body["error_description"]
    assert int(response.headers["retry-after"]) > 0
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-request-id"]


async def test_a_misconfigured_app_skips_the_rotation_check_with_an_error_naming_the_setting(
    misconfigured: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    """The Event Grid trigger does not crash on a broken configuration; it logs what to fix."""
    await misconfigured.event_grid(event_grid_schema("ilevel-client-secret", "v1"))
    assert "rotation check skipped" in caplog.text
    assert "BROKER_AUDIENCE" in caplog.text.split("rotation check skipped", 1)[1]


@pytest.mark.parametrize(
    "extra",
    [{}, {"FUNCTIONS_WORKER_RUNTIME": "python"}, {"WEBSITE_SITE_NAME": "func-broker"}],
    ids=["function_app", "worker-runtime", "website"],
)
async def test_the_local_no_auth_switch_is_refused_under_the_functions_entry_point(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, extra: dict[str, str]
) -> None:
    """BROKER_INSECURE_DISABLE_CALLER_AUTH never reaches Azure: function_app answers 503 naming it."""
    stack.export_environment()
    monkeypatch.setenv("BROKER_INSECURE_DISABLE_CALLER_AUTH", "true")
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    if "WEBSITE_SITE_NAME" in extra:
        monkeypatch.delenv("BROKER_KEY_VAULT_VERIFY_CHALLENGE_RESOURCE")
    async with functions_host() as client:
        response = await client.get("/api/token/ilevel")
    assert response.status_code == 503
    assert "BROKER_INSECURE_DISABLE_CALLER_AUTH" in response.json()["error_description"]
    assert stack.tokens.request_count == 0


# --- the worker's DEBUG logging -------------------------------------------------------------------
async def test_no_token_or_secret_reaches_any_log_record_with_the_worker_at_debug(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """Root and every library at DEBUG (PYTHON_ENABLE_DEBUG_LOGGING=1): tokens and secrets appear in no record."""
    stack.export_environment()
    caplog.set_level(logging.DEBUG)
    caller = stack.caller()
    async with functions_host() as client:
        for name in QUIET_LOGGERS:  # as verbose as an operator could make them
            logging.getLogger(name).setLevel(logging.DEBUG)
        served = await client.get("/api/token/ilevel", headers={"Authorization": f"Bearer {caller}"})
        forced = await client.get("/api/token/ilevel?force_refresh=true", headers={"Authorization": f"Bearer {caller}"})
    assert (served.status_code, forced.status_code) == (200, 200)
    values = {
        "served token": served.json()["access_token"],
        "refreshed token": forced.json()["access_token"],
        "caller token": caller,
        "client secret": stack.client_secret,
        "client id": stack.client_id,
        **{f"managed-identity token {i}": t for i, t in enumerate(stack.servers.identity.issued_tokens)},
    }
    records = caplog.records
    asgi_lines = [r for r in records if r.msg == "Received %s from ASGI worker."]
    assert asgi_lines, "azure-functions' ASGI bridge logged nothing at DEBUG: the test would prove nothing"
    for record in records:
        text = record.getMessage()
        for label, value in values.items():
            assert value not in text, f"{label} in a record from {record.name}: {record.msg!r}"


async def test_library_info_noise_is_quiet_under_the_functions_entry_point(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """As under serve, httpx and azure-core log no INFO line per outbound request; the broker's access line stays."""
    stack.export_environment()
    async with functions_host() as client:
        response = await client.get("/api/token/ilevel", headers={"Authorization": f"Bearer {stack.caller()}"})
    assert response.status_code == 200
    noisy = [r.name for r in caplog.records if r.levelno == logging.INFO and r.name.split(".")[0] in QUIET_LOGGERS]
    assert noisy == []
    assert any(r.name == "broker.access" for r in caplog.records)
