"""The fleet cache's settings: off unless set; the connection string only for Azurite on loopback."""

from __future__ import annotations

import pytest

from broker.config import DEFAULT_FLEET_KEY_SECRET, load_settings
from broker.errors import ConfigError
from broker.startup import start_functions
from tests.conftest import sensitive

BASE = {"BROKER_INSECURE_DISABLE_CALLER_AUTH": "true", "BROKER_PROVIDERS": "ilevel"}
KEY = sensitive("c2VjcmV0LWtleS1vZi10aGUtdGVzdC1hY2NvdW50LW5vdC1yZWFs")


def connection(endpoint: str) -> str:
    return f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};BlobEndpoint={endpoint};"


def test_fleet_cache_is_off_unless_a_url_or_connection_string_is_set() -> None:
    """No fleet setting, no fleet cache: the default for make run and for tests that don't ask for it."""
    assert load_settings(BASE).fleet is None


def test_container_url_turns_it_on_with_the_default_key_secret() -> None:
    """The container URL is reached with the managed identity; the key secret defaults to broker-fleet-cache-key."""
    url = "https://stbroker.blob.core.windows.net/broker-tokens"
    fleet = load_settings({**BASE, "BROKER_FLEET_CACHE_URL": url + "/"}).fleet
    assert fleet is not None
    assert (fleet.container_url, fleet.container, fleet.key_secret) == (url, "broker-tokens", DEFAULT_FLEET_KEY_SECRET)
    assert fleet.connection_string is None


@pytest.mark.parametrize(
    "url",
    [
        "http://stbroker.blob.core.windows.net/broker-tokens",
        "https://stbroker.blob.core.windows.net/broker-tokens?sv=2024&sig=abc",
        "https://stbroker.blob.core.windows.net/",
    ],
    ids=["http", "sas", "no_container"],
)
def test_a_container_url_that_is_not_a_plain_https_container_is_refused(url: str) -> None:
    """http (off loopback), a SAS query or a missing container name are refused at start, naming the setting."""
    with pytest.raises(ConfigError) as raised:
        load_settings({**BASE, "BROKER_FLEET_CACHE_URL": url})
    assert raised.value.setting == "BROKER_FLEET_CACHE_URL"


def test_connection_string_is_accepted_for_azurite_on_loopback() -> None:
    fleet = load_settings(
        {**BASE, "BROKER_FLEET_CACHE_CONNECTION_STRING": connection("http://127.0.0.1:10000/devstoreaccount1")}
    ).fleet
    assert fleet is not None and fleet.container_url is None
    assert KEY not in repr(fleet)


@pytest.mark.parametrize(
    "env",
    [
        {"BROKER_FLEET_CACHE_CONNECTION_STRING": connection("https://acct.blob.core.windows.net")},
        {"BROKER_FLEET_CACHE_CONNECTION_STRING": "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=" + KEY},
        {
            "BROKER_FLEET_CACHE_CONNECTION_STRING": connection("http://127.0.0.1:10000/devstoreaccount1"),
            "WEBSITE_SITE_NAME": "func-broker",
            "KEY_VAULT_URL": "https://kv-x.vault.azure.net/",
            "BROKER_INSECURE_DISABLE_CALLER_AUTH": "false",
            "BROKER_TENANT_ID": "contoso.onmicrosoft.com",
            "BROKER_AUDIENCE": "api://x",
        },
        {
            "BROKER_FLEET_CACHE_CONNECTION_STRING": connection("http://127.0.0.1:10000/devstoreaccount1"),
            "BROKER_FLEET_CACHE_URL": "https://acct.blob.core.windows.net/broker-tokens",
        },
    ],
    ids=["azure_endpoint", "no_blob_endpoint", "in_azure", "with_url"],
)
def test_connection_string_is_refused_unless_its_blob_endpoint_is_loopback(env: dict[str, str]) -> None:
    """An account key in Azure is what identity-only access forbids: refused at start, naming the setting,
    never echoing the string."""
    with pytest.raises(ConfigError) as raised:
        load_settings({**BASE, **env})
    assert raised.value.setting == "BROKER_FLEET_CACHE_CONNECTION_STRING"
    assert KEY not in raised.value.description


async def test_functions_host_answers_broker_misconfigured_naming_the_connection_string() -> None:
    """Under the Functions entry point a refused connection string still indexes and every request answers
    503 broker_misconfigured naming the setting (and not its value)."""
    import httpx

    env = {
        "BROKER_TENANT_ID": "contoso.onmicrosoft.com",
        "BROKER_AUDIENCE": "api://x",
        "BROKER_FLEET_CACHE_CONNECTION_STRING": connection("https://acct.blob.core.windows.net"),
    }
    process = start_functions(env)
    transport = httpx.ASGITransport(app=process)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
        response = await client.get("/api/token/ilevel")
    assert response.status_code == 503
    assert response.json()["error"] == "broker_misconfigured"
    assert "BROKER_FLEET_CACHE_CONNECTION_STRING" in response.json()["error_description"]
    assert KEY not in response.text


def test_key_secret_must_be_a_key_vault_name() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(
            {
                **BASE,
                "BROKER_FLEET_CACHE_URL": "https://a.blob.core.windows.net/c",
                "BROKER_FLEET_CACHE_KEY_SECRET": "bad name",
            }
        )
    assert raised.value.setting == "BROKER_FLEET_CACHE_KEY_SECRET"
