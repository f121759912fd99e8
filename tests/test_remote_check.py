"""``check --remote``'s own rules: where the broker is, which audience, and a verdict for every refusal on the way.

The whole path against a running broker (the serve host, a real DefaultAzureCredential through a stand-in
``az``) is in tests/test_diagnostics_http.py.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from broker.__main__ import main
from broker.errors import ConfigError
from broker.remote_check import Remote, run_remote_check

URI = "api://11111111-2222-4333-8444-555555555555/ilevel-token-broker-dev"


class Refusing:
    """A credential that fails as azure-identity does, with Entra's message."""

    def __init__(self, message: str) -> None:
        self.message = message

    def get_token(self, *scopes: str) -> Any:
        from azure.core.exceptions import ClientAuthenticationError

        raise ClientAuthenticationError(message=self.message)


class Token:
    def __init__(self) -> None:
        self.scopes: tuple[str, ...] = ()

    def get_token(self, *scopes: str) -> Any:
        self.scopes = scopes
        return type("AccessToken", (), {"token": "opaque-token-for-the-test"})()


def answering(status: int, body: object) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    return httpx.Client(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("https://func-broker.azurewebsites.net", "https://func-broker.azurewebsites.net"),
        ("https://func-broker.azurewebsites.net/", "https://func-broker.azurewebsites.net"),
        ("https://func-broker.azurewebsites.net/api", "https://func-broker.azurewebsites.net"),
        ("http://127.0.0.1:7071", "http://127.0.0.1:7071"),
    ],
)
def test_the_app_url_is_taken_with_or_without_api(url: str, base: str) -> None:
    """The app's URL as azd prints it, with or without a trailing slash or /api, names the same route."""
    remote = Remote.of(url, URI, {})
    assert remote.route("ilevel") == f"{base}/api/diagnostics/ilevel"
    assert remote.route(None) == f"{base}/api/diagnostics"


@pytest.mark.parametrize("url", ["http://func-broker.azurewebsites.net", "func-broker", "https://x/?code=1"])
def test_a_bearer_token_never_goes_over_plain_http_or_to_a_malformed_url(url: str) -> None:
    """Only https (http for loopback only): the operator's token must not travel unencrypted."""
    with pytest.raises(ConfigError, match="--remote"):
        Remote.of(url, URI, {})


def test_the_app_id_uri_comes_from_the_flag_or_the_azd_variable(capsys: pytest.CaptureFixture[str]) -> None:
    """--app-id-uri wins; BROKER_APP_ID_URI (as azd stores it) is the default; neither is exit 2 saying how."""
    assert Remote.of("https://a.example", None, {"BROKER_APP_ID_URI": URI}).app_id_uri == URI
    assert Remote.of("https://a.example", "api://other", {"BROKER_APP_ID_URI": URI}).app_id_uri == "api://other"
    assert main(["check", "--remote", "https://a.example"]) == 2
    assert "azd env get-value BROKER_APP_ID_URI" in capsys.readouterr().err


@pytest.mark.parametrize(
    "uri",
    [
        "https://management.azure.com/",
        "https://vault.azure.net",
        "https://graph.microsoft.com",
        "ilevel-token-broker-dev",
        "api://",
        "api:/x",
    ],
)
def test_an_app_id_uri_that_is_neither_api_nor_a_guid_is_refused_before_any_token(
    uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ARM URL would mint a management token and send it to --remote: refused (exit 2), saying what to use."""
    with pytest.raises(ConfigError, match="--app-id-uri") as error:
        Remote.of("https://a.example", uri, {})
    assert "api://" in str(error.value) and "GUID" in str(error.value)
    with pytest.raises(ConfigError):
        Remote.of("https://a.example", None, {"BROKER_APP_ID_URI": uri})
    assert main(["check", "--remote", "https://a.example", "--app-id-uri", uri]) == 2
    assert "azd env get-value BROKER_APP_ID_URI" in capsys.readouterr().err


@pytest.mark.parametrize("uri", ["api://11111111-2222-4333-8444-555555555555/ilevel-token-broker-dev", "API://x"])
def test_api_uris_and_client_ids_are_accepted(uri: str) -> None:
    """The hook's secure-format URIs, any api:// URI, and the app's client id."""
    assert Remote.of("https://a.example", uri, {}).app_id_uri == uri
    guid = "5B1F7E0C-2D4A-4C51-9F8E-1A2B3C4D5E6F"
    assert Remote.of("https://a.example", guid, {}).app_id_uri == guid


def test_the_token_is_asked_for_the_app_id_uri_default_scope() -> None:
    """DefaultAzureCredential's scope is <App ID URI>/.default."""
    credential = Token()
    run_remote_check(Remote.of("https://a.example", URI, {}), "ilevel", credential=credential, http=answering(200, {}))
    assert credential.scopes == (f"{URI}/.default",)


@pytest.mark.parametrize(
    ("message", "verdict"),
    [
        (
            "AADSTS501051: Application 'x' is not assigned to a role for the application",
            "get the Broker.Operator role:",
        ),
        ("AADSTS65001: The user or administrator has not consented", "pre-authorise the Azure CLI:"),
        ("AADSTS500011: The resource principal named api://x was not found", "check --app-id-uri:"),
        ("AzureCliCredential: Please run 'az login' to set up an account", "sign in: DefaultAzureCredential got no"),
    ],
)
def test_each_entra_refusal_is_a_verdict_naming_the_fix(message: str, verdict: str) -> None:
    """Not assigned, no consent, unknown App ID URI, not signed in: each its own verdict, exit 1."""
    outcome = run_remote_check(Remote.of("https://a.example", URI, {}), None, credential=Refusing(message))
    assert outcome.exit_code == 1
    assert outcome.text.startswith(f"verdict: {verdict}")
    assert json.loads(outcome.as_json())["verdict"].startswith(verdict)


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (401, {"error": "invalid_token", "error_description": "audience"}, "sign in for the broker:"),
        (403, {"error": "insufficient_scope", "error_description": "no role"}, "get the Broker.Operator role:"),
        (
            404,
            {"error": "unknown_provider", "providers": ["ilevel"]},
            "add provider 'nope' to BROKER_PROVIDERS (now: ilevel)",
        ),
        (404, {"error": "not_found"}, "deploy a broker with the diagnostics route:"),
        (503, {"error": "broker_misconfigured", "error_description": "KEY_VAULT_URL"}, "fix the app's settings:"),
        (200, ["not", "an", "object"], "check the --remote URL:"),
    ],
)
def test_each_refusal_of_the_route_is_a_verdict(status: int, body: object, verdict: str) -> None:
    """Whatever the app answers instead of a report, the operator gets one verdict line and exit 1."""
    outcome = run_remote_check(
        Remote.of("https://a.example", URI, {}), "nope", credential=Token(), http=answering(status, body)
    )
    assert (outcome.exit_code, outcome.text.splitlines()[-1].startswith(f"verdict: {verdict}")) == (1, True), outcome
    assert "opaque-token-for-the-test" not in outcome.text


def test_an_unreachable_app_is_a_verdict() -> None:
    """DNS or connection failures say to check the URL."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    outcome = run_remote_check(
        Remote.of("https://a.example", URI, {}),
        None,
        credential=Token(),
        http=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    assert outcome.exit_code == 1 and outcome.text.startswith("verdict: check the --remote URL: https://a.example")
