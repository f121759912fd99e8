"""``python -m broker check --remote https://<app>``: the app runs ``check``'s steps, the laptop prints them.

With the vault private, only the app reaches it. This gets a token for the broker with the operator's
own sign-in (``DefaultAzureCredential``: ``az login`` on a laptop), scope ``<App ID URI>/.default``,
calls ``GET /api/diagnostics[/{provider}]`` and prints the report and verdict a local ``check`` prints,
with the same exit codes: 0 OK, 1 a verdict to act on, 2 the command itself is misconfigured.

The App ID URI is the broker's token audience: ``--app-id-uri``, else ``BROKER_APP_ID_URI`` (the name
the azd environment stores it under: ``azd env get-value BROKER_APP_ID_URI``). Never prints the token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpx

from broker.config import PROVIDER_NAME, AzdName, Setting, is_loopback_host
from broker.errors import ConfigError
from broker.report import CheckReport, unknown_provider_verdict

APP_ID_URI_SETTING = AzdName.APP_ID_URI
# The audiences a token may be asked for: the broker's App ID URI (api://..., what the Entra hook sets) or
# its client id. Anything else would mint a token for another resource and send it to --remote.
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# A diagnostics run reads Key Vault (15 s budget) and may try three client-authentication variants.
REMOTE_TIMEOUT_S = 120.0
# Entra's codes an operator meets asking for a token for the broker, and what each means here.
AADSTS_VERDICTS = {
    "AADSTS501051": "get the Broker.Operator role: Entra issues tokens for {uri} only to principals assigned a role "
    "on it (AADSTS501051). Ask the broker's operator to grant you Broker.Operator (azd provision grants it to "
    "the deployer), then sign in again: az login",
    "AADSTS65001": "pre-authorise the Azure CLI: Entra asks for consent to {uri} (AADSTS65001); azd provision's "
    "Entra hook pre-authorises the Azure CLI for its Diagnostics.Run scope. Run azd provision, then try again",
    "AADSTS500011": "check --app-id-uri: Entra knows no application {uri} in this tenant (AADSTS500011); use the "
    f"broker's App ID URI (azd env get-value {AzdName.APP_ID_URI}) and az login to the broker's tenant",
}


class TokenCredential(Protocol):
    """azure-identity's credential interface, the part used here."""

    def get_token(self, *scopes: str) -> Any: ...


@dataclass(frozen=True)
class Remote:
    """Where the broker is and which audience its tokens have."""

    base_url: str
    app_id_uri: str

    @classmethod
    def of(cls, url: str, app_id_uri: str | None, env: Mapping[str, str]) -> Remote:
        uri = (app_id_uri or env.get(APP_ID_URI_SETTING, "")).strip().rstrip("/")
        if not uri:
            raise ConfigError(
                "--app-id-uri",
                f"is required with --remote (or set {APP_ID_URI_SETTING}): the broker's App ID URI, the audience of "
                f"its tokens. After azd up: azd env get-value {APP_ID_URI_SETTING}",
            )
        if not (_GUID.fullmatch(uri) or (uri[:6].lower() == "api://" and len(uri) > 6)):
            raise ConfigError(
                "--app-id-uri",
                f"must be the broker's App ID URI (api://...) or its client id (a GUID), got {uri[:80]!r}: the token "
                "asked for it is sent to --remote, so any other audience (e.g. https://management.azure.com/) would "
                f"hand that host a token for another API. After azd up: azd env get-value {APP_ID_URI_SETTING}",
            )
        parts = urlsplit(url.strip())
        local = parts.scheme == "http" and is_loopback_host(parts.hostname or "")
        if not parts.hostname or (parts.scheme != "https" and not local) or parts.query or parts.fragment:
            raise ConfigError(
                "--remote",
                f"must be the app's https URL, e.g. https://<app>.azurewebsites.net, got {url!r} (http only for "
                "a loopback host: a bearer token never travels unencrypted)",
            )
        path = parts.path.rstrip("/").removesuffix("/api")
        return cls(f"{parts.scheme}://{parts.netloc}{path}", uri)

    def route(self, provider: str | None) -> str:
        return f"{self.base_url}/api/diagnostics" + (f"/{quote(provider, safe='')}" if provider else "")


@dataclass
class RemoteOutcome:
    """What ``check --remote`` prints and its exit code."""

    text: str
    exit_code: int
    # The route's JSON answer, when there was one; else the verdict alone (for --json).
    answer: dict[str, Any] | None = None

    def as_json(self) -> str:
        answer = self.answer
        if answer is None:
            answer = {"ok": False, "verdict": self.text.removeprefix("verdict: ")}
        return json.dumps(answer, indent=2)


def run_remote_check(
    remote: Remote,
    provider: str | None,
    *,
    credential: TokenCredential | None = None,
    http: httpx.Client | None = None,
) -> RemoteOutcome:
    """Token, route, report. Every failure on the way is a verdict line too, with exit code 1."""
    if provider is not None and not PROVIDER_NAME.fullmatch(provider):
        return _failed(unknown_provider_verdict(provider, []))
    token = _token(remote, credential)
    if isinstance(token, RemoteOutcome):
        return token
    client = http or httpx.Client(timeout=REMOTE_TIMEOUT_S)
    try:
        response = client.get(remote.route(provider), headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        return _failed(f"check the --remote URL: {remote.base_url} cannot be reached ({type(exc).__name__})")
    finally:
        if http is None:
            client.close()
    return _outcome(remote, provider, response)


def _token(remote: Remote, credential: TokenCredential | None) -> str | RemoteOutcome:
    scope = f"{remote.app_id_uri}/.default"
    try:
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
        return str(credential.get_token(scope).token)
    except Exception as exc:  # noqa: BLE001 - azure-identity's failures become a verdict, not a traceback
        message = str(getattr(exc, "message", None) or exc)
        for code, verdict in AADSTS_VERDICTS.items():
            if code in message:
                return _failed(verdict.format(uri=remote.app_id_uri))
        first = (message.strip().splitlines() or [""])[0][:200]
        return _failed(
            f"sign in: DefaultAzureCredential got no token for {scope} ({type(exc).__name__}: {first}). Run az login "
            "with an account that holds the broker's Broker.Operator role, in the broker's tenant"
        )


def _outcome(remote: Remote, provider: str | None, response: httpx.Response) -> RemoteOutcome:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _failed(
            f"check the --remote URL: {remote.route(provider)} answered HTTP {response.status_code} without a JSON "
            "object, so it is not the broker's diagnostics route"
        )
    if response.status_code != 200:
        return _failed(_refusal(remote, provider, response.status_code, body))
    if provider is not None:
        report = CheckReport.from_dict(body)
        return RemoteOutcome(report.render(), report.exit_code, body)
    reports = [CheckReport.from_dict(p) for p in body.get("providers", []) if isinstance(p, dict)]
    lines = [r.render(with_verdict=False) for r in reports]
    instance = body.get("instance")
    if isinstance(instance, dict) and instance.get("summary") and not reports:
        lines.append(f"  instance: {instance['summary']}")
    lines.append(f"verdict: {body.get('verdict', '')}")
    return RemoteOutcome("\n".join(lines), 0 if body.get("ok") is True else 1, body)


def _refusal(remote: Remote, provider: str | None, status: int, body: dict[str, Any]) -> str:
    code = str(body.get("error", ""))
    description = str(body.get("error_description", ""))[:300]
    if status == 401:
        return (
            f"sign in for the broker: it refused the token ({code}: {description}). The App ID URI "
            f"{remote.app_id_uri} must be one of the broker's {Setting.AUDIENCE} values"
        )
    if status == 403:
        return (
            f"get the Broker.Operator role: the broker refused the diagnostics to this sign-in ({code}: "
            f"{description}). A user needs Broker.Operator and the Diagnostics.Run scope (az login gets it); "
            "a new role assignment shows in the next token: az login again"
        )
    if status == 404 and code == "unknown_provider" and provider is not None:
        providers = body.get("providers")
        return unknown_provider_verdict(provider, [str(p) for p in providers] if isinstance(providers, list) else [])
    if status == 404:
        return (
            f"deploy a broker with the diagnostics route: {remote.route(provider)} answered 404 ({code}); "
            "azd deploy brings the current version"
        )
    if code == "broker_misconfigured":
        return f"fix the app's settings: the broker cannot serve ({description})"
    return f"retry later: the broker answered HTTP {status} ({code}: {description})"


def _failed(verdict: str) -> RemoteOutcome:
    return RemoteOutcome(f"verdict: {verdict}", 1)
