"""``python -m broker check``: settle "invalid client_id or client_secret" in seconds.

Reads configuration and secrets exactly as the broker does, requests a token, and ends
with one verdict line that says what to fix: the Key Vault credential (``az login``, the
managed identity), ``KEY_VAULT_URL``, a secret (a paste accident, by name, length and
SHA-256 fingerprint, never the value), the token URL, the client authentication
variant, or the credentials themselves. It stops at the first of these that fails, so a
verdict never blames the credentials for a wrong URL. Never prints a secret or a token.

The steps are :func:`diagnose`, run with any broker: ``check`` builds its own; the diagnostics
route (:mod:`broker.diagnostics`) runs them inside the app with the app's, which is where a
private vault is reachable. A vault's 403 is told apart by its inner code: the network
(``ForbiddenByConnection``, ``ForbiddenByFirewall``), which no role fixes, or a missing role.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt

from broker.config import AzdName, ProviderConfig, Setting, Settings, local_secret_variable
from broker.endpoint import RetryPolicy, TokenEndpoint
from broker.errors import (
    BrokerError,
    InvalidTokenResponse,
    SecretError,
    TokenRejected,
    UpstreamUnavailable,
)
from broker.report import CheckReport, unknown_provider_verdict
from broker.runtime import Broker, Overrides
from broker.secrets import Credentials, SecretValue, read_pair, value_problems
from broker.tokens import Token, fingerprint

# (auth method, Basic encoding, label): the configured one is tried first.
VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("client_secret_basic", "raw", "client_secret_basic with raw client_id:client_secret (iLevel's own clients)"),
    ("client_secret_basic", "form", "client_secret_basic with RFC 6749 form-encoded parts"),
    ("client_secret_post", "raw", "client_secret_post (credentials in the form body)"),
)
SAFE_CLAIMS = ("iss", "aud", "exp", "scope")
# Claims shown by fingerprint only: a token's client_id is the iLevel client id, half of the credentials.
FINGERPRINTED_CLAIMS = ("client_id",)
# Key Vault Secrets User: reads secret values in an RBAC vault (shared/DOMAIN.md).
SECRETS_USER_ROLE = "Key Vault Secrets User"
# One SDK retry instead of the broker's two: a diagnosis should not sit through backoff to say
# "unreachable"; a persistent failure gets the same verdict either way.
CHECK_SECRET_CLIENT_OPTIONS: Mapping[str, Any] = {"retry_total": 1, "retry_backoff_factor": 0.2}
# The safe way to compare a stored value with the issued one: read from a prompt, never argv or history.
FINGERPRINT_HINT = "run .venv/bin/python -m broker fingerprint and paste each value at its prompt"
CREDENTIAL_VERDICTS = ("sign in:", "fix the managed identity:")


def _describe_secret(value: SecretValue) -> dict[str, Any]:
    """Name, version, id, enabled, created, length and fingerprint: never the value."""
    created = (
        datetime.datetime.fromtimestamp(value.created, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if value.created is not None
        else None
    )
    return {
        "name": value.name,
        "version": value.version,
        "id": value.id,
        "enabled": value.enabled,
        "created": created,
        "length": len(value.value),
        "sha256": value.value.fingerprint(),
        "problems": list(value.problems),
    }


def _token_summary(token: Token) -> dict[str, Any]:
    """Type, lifetime and fingerprint; for a JWT its header and a few claims. Never the token."""
    summary: dict[str, Any] = {
        "token_type": token.token_type,
        "lifetime_s": round(token.lifetime),
        "sha256": token.access_token.fingerprint(),
    }
    try:
        raw = token.access_token.reveal()
        header = jwt.get_unverified_header(raw)
        claims = jwt.decode(raw, options={"verify_signature": False})
    except jwt.PyJWTError:
        summary["format"] = "opaque (not a JWT)"
        return summary
    summary["format"] = "JWT"
    summary["jwt_header"] = {k: header[k] for k in ("alg", "typ", "kid") if k in header}
    shown = {k: claims[k] for k in SAFE_CLAIMS if k in claims}
    shown.update({f"{k}_sha256": fingerprint(str(claims[k])) for k in FINGERPRINTED_CLAIMS if k in claims})
    summary["jwt_claims"] = shown
    return summary


def start_up_warnings(settings: Settings) -> list[str]:
    """What ``serve`` logs at start-up (config.log_warnings), as report lines."""
    warnings = list(settings.warnings)
    if settings.caller_auth_disabled:
        warnings.append(
            f"caller authentication is off ({Setting.INSECURE_DISABLE_CALLER_AUTH}): local development only"
        )
    return warnings


@dataclass(frozen=True)
class Where:
    """Where the steps run, which decides the advice: the environment, and whether it is the app itself."""

    env: Mapping[str, str]
    # True inside the Function App (its managed identity and network path): the diagnostics route, or
    # check run in the app's console, where App Service sets IDENTITY_ENDPOINT.
    inside_app: bool

    @classmethod
    def of(cls, env: Mapping[str, str], *, inside_app: bool | None = None) -> Where:
        return cls(env, bool(env.get("IDENTITY_ENDPOINT")) if inside_app is None else inside_app)


async def run_check(
    settings: Settings,
    provider_name: str | None,
    overrides: Overrides | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> CheckReport:
    """``python -m broker check``: the steps with a broker of its own, closed afterwards."""
    name = provider_name or next(iter(settings.providers))
    if name not in settings.providers:
        report = CheckReport(provider=name, warnings=start_up_warnings(settings))
        report.fail(unknown_provider_verdict(name, list(settings.providers)))
        return report
    if overrides is None:
        overrides = Overrides(secret_client_options=CHECK_SECRET_CLIENT_OPTIONS)
    broker = Broker(settings, overrides)
    try:
        return await diagnose(broker, name, Where.of(os.environ if env is None else env))
    finally:
        await broker.aclose()


async def diagnose(broker: Broker, name: str, where: Where) -> CheckReport:
    """The check's steps for one provider, with ``broker``'s secret store and HTTP client: configuration,
    Key Vault, then the token endpoint (the configured client authentication first), ending in one verdict.
    ``check`` runs them with a broker of its own; the diagnostics route with the app's (its managed identity)."""
    settings = broker.settings
    report = CheckReport(provider=name, warnings=start_up_warnings(settings))
    if name not in broker.providers:
        report.fail(unknown_provider_verdict(name, list(settings.providers)))
        return report
    config = broker.providers[name].config
    try:
        credentials = await _read_secrets(broker, config, report, where)
        if credentials is not None:
            await _request_token(broker, config, credentials, report)
    except Exception as exc:  # noqa: BLE001 - a diagnosis tool ends with a verdict, not a traceback
        # SDK set-up errors (e.g. azure-identity refusing an http AZURE_AUTHORITY_HOST) carry no secrets.
        report.fail(f"the check itself failed: {type(exc).__name__}: {_first_line(str(exc))}")
    return report


# --- Key Vault -------------------------------------------------------------------------------


async def _read_secrets(
    broker: Broker, config: ProviderConfig, report: CheckReport, where: Where
) -> Credentials | None:
    try:
        # Read now: never the pair a token source read earlier (that would hide a failing vault).
        credentials = await read_pair(broker.secrets, config)
    except SecretError as error:
        verdict = _secret_verdict(error, broker.settings, where)
        if not verdict.startswith(CREDENTIAL_VERDICTS):
            # The broker's own description guesses at the managed identity; the verdict knows better.
            report.problems.append(error.description)
        report.fail(verdict)
        return None
    report.secrets = [_describe_secret(credentials.client_id), _describe_secret(credentials.client_secret)]
    for value in (credentials.client_id, credentials.client_secret):
        if value.problems:
            report.problems.append(f"secret {value.name} has {', '.join(value.problems)}")
    return credentials


def _secret_verdict(error: SecretError, settings: Settings, where: Where) -> str:
    """The verdict for why the secret could not be read, as :mod:`broker.secrets` classified it."""
    vault = urlsplit(settings.key_vault_url or "").netloc
    match error.cause:
        case "identity":
            return _credential_verdict(error.detail, settings, where.env)
        case "unreachable":
            return (
                f"check {Setting.KEY_VAULT_URL}: the vault host {vault} cannot be reached ({error.detail}); "
                "is the vault name right, and does its firewall admit this machine?"
            )
        case "timeout":
            return (
                f"check {Setting.KEY_VAULT_URL}: the vault host {vault} did not answer in time; is it the right vault?"
            )
        case "throttled" | "failing":
            return f"retry later: Key Vault {vault} is throttling or failing ({error.description})"
        case "forbidden":
            return _forbidden_verdict(error.detail or None, vault, settings, where)
        case "not_found" | "disabled" | "empty":
            return f"fix secret {error.secret!r} in {_where(settings)}: {error.description}"


def _forbidden_verdict(denial: str | None, vault: str, settings: Settings, where: Where) -> str:
    """Key Vault's 403: its network rules (no role helps), or a missing role (the network is fine)."""
    if denial == "ForbiddenByConnection" and where.inside_app:
        return (
            f"reach the vault through its private endpoint: Key Vault {vault} answered 403 ForbiddenByConnection: "
            "its public network access is disabled and the app's request did not come through its private endpoint. "
            "Check the app's VNet integration, the vault's private endpoint and the privatelink.vaultcore.azure.net "
            "DNS zone linked to the VNet (azd: VNET_ENABLED=true); no role assignment changes this"
        )
    if denial == "ForbiddenByConnection":
        return (
            f"check from inside the app: Key Vault {vault} answered 403 ForbiddenByConnection: its public network "
            "access is disabled, so this machine cannot read it, and no role assignment changes that. Run "
            "python -m broker check --remote https://<app>.azurewebsites.net --app-id-uri <App ID URI>, or open the "
            "vault to your address "
            f"(azd env set {AzdName.OPERATOR_IP_ADDRESSES} <your public IPv4>, then azd provision)"
        )
    if denial == "ForbiddenByFirewall" and where.inside_app:
        return (
            f"reach the vault through its private endpoint: Key Vault {vault} answered 403 ForbiddenByFirewall: "
            "the app's request reached the vault from an address its firewall does not admit. The vault's name "
            "must resolve to its private endpoint inside the VNet (privatelink.vaultcore.azure.net DNS zone linked "
            "to the VNet); no role assignment changes this"
        )
    if denial == "ForbiddenByFirewall":
        return (
            f"open the vault's firewall to this machine: Key Vault {vault} answered 403 ForbiddenByFirewall: its "
            "firewall does not admit this address, and no role assignment changes that. Add it (azd env set "
            f"{AzdName.OPERATOR_IP_ADDRESSES} <your public IPv4>, then azd provision), or run python -m broker check "
            "--remote https://<app>.azurewebsites.net --app-id-uri <App ID URI>"
        )
    if where.inside_app:
        client_id = settings.managed_identity_client_id
        who = (
            f"the app's managed identity ({Setting.AZURE_CLIENT_ID}={client_id})"
            if client_id
            else "the app's managed identity"
        )
        extra = " (azd up assigns it; a new assignment can take a few minutes to apply)"
    else:
        who = "the account DefaultAzureCredential signed in with (az login)"
        extra = " or Key Vault Secrets Officer; a new assignment can take a few minutes to apply"
    code = f"403 {denial}" if denial else "403"
    return (
        f"grant the {SECRETS_USER_ROLE} role: Key Vault {vault} refused {who} ({code}): the network let the request "
        f"through, but the identity has no role that reads secrets. Assign {SECRETS_USER_ROLE} on the vault to it"
        f"{extra}"
    )


def _credential_verdict(message: str, settings: Settings, env: Mapping[str, str]) -> str:
    """Which credential read Key Vault (the rule of broker.secrets.secret_client) and what to do about it;
    ``message`` is the credential's own."""
    client_id = settings.managed_identity_client_id
    if env.get("IDENTITY_ENDPOINT"):
        who = (
            f"user-assigned, {Setting.AZURE_CLIENT_ID}={client_id}"
            if client_id
            else f"system-assigned (no {Setting.AZURE_CLIENT_ID})"
        )
        detail = _first_line(message)
        return (
            f"fix the managed identity: ManagedIdentityCredential ({who}) got no token for Key Vault ({detail}). "
            "In Azure, assign the user-assigned identity to the Function App and set "
            f"{Setting.AZURE_CLIENT_ID} to its client id (azd up does both)"
        )
    cli = _credential_line(message, "AzureCliCredential")
    tried = f" (Azure CLI: {cli})" if cli else ""
    return (
        f"sign in: DefaultAzureCredential found no credential for Key Vault{tried}. Run `az login` with an account "
        "that may read the vault's secrets (Key Vault Secrets User or Officer), then run check again; on an Azure "
        f"VM or container, set {Setting.AZURE_CLIENT_ID} to its managed identity's client id"
    )


def _credential_line(message: str, credential: str) -> str:
    for line in message.splitlines():
        name, _, rest = line.strip().partition(":")
        if name == credential:
            return rest.strip()[:120]
    return ""


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:160]


def _where(settings: Settings) -> str:
    return f"Key Vault {settings.key_vault_url}" if settings.key_vault_url else "the environment"


# --- the token endpoint ----------------------------------------------------------------------


async def _request_token(broker: Broker, config: ProviderConfig, credentials: Credentials, report: CheckReport) -> None:
    endpoint = TokenEndpoint(
        broker.http,
        config,
        budget_s=broker.settings.token_budget_s,
        retry=RetryPolicy(max_attempts=1),
        clock=broker.clock,
    )
    configured = (config.auth_method, config.basic_encoding if config.auth_method == "client_secret_basic" else "raw")
    ordered = sorted(VARIANTS, key=lambda v: (v[0], v[1]) != configured)
    accidents = _accidents(credentials)
    if accidents:
        # A value with a paste accident is wrong in every variant: one request is enough to show it.
        ordered = ordered[:1]
    rejections: list[TokenRejected] = []
    for method, encoding, label in ordered:
        started = time.perf_counter()
        outcome = await _attempt(endpoint, credentials, method, encoding)
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        if isinstance(outcome, Token):
            report.attempts.append({"variant": label, "result": "accepted", "latency_ms": latency_ms})
            report.token = _token_summary(outcome)
            _accepted(report, config, credentials, (method, encoding) == configured, method, encoding, label)
            return
        status = f" (HTTP {outcome.upstream_status})" if isinstance(outcome, TokenRejected) else ""
        report.attempts.append(
            {"variant": label, "result": f"{outcome.code}{status}: {outcome.description}", "latency_ms": latency_ms}
        )
        verdict = _endpoint_verdict(outcome, config)
        if verdict is not None:
            report.problems.append(outcome.description)
            report.fail(verdict)
            return
        assert isinstance(outcome, TokenRejected)  # _endpoint_verdict returns None for nothing else
        rejections.append(outcome)
    if accidents:
        report.fail(_accident_verdict(accidents, broker.settings))
        return
    if any(r.bad_credentials for r in rejections):
        report.problems.append("the token endpoint rejected every client authentication variant")
        report.fail(
            f"fix the credentials: the token endpoint refused {credentials.describe()} in every client "
            f"authentication variant. Compare the fingerprints above with the values iLevel issued: {FINGERPRINT_HINT}"
        )
        return
    codes = ", ".join(sorted({r.upstream_error for r in rejections}))
    report.fail(
        f"fix the token request: the token endpoint refused it with {codes}; check {config.setting('SCOPE')}, "
        f"{config.setting('AUDIENCE')} and {config.setting('RESOURCE')} against the provider's documentation"
    )


def _endpoint_verdict(outcome: BrokerError, config: ProviderConfig) -> str | None:
    """The verdict for an outcome no other client authentication variant can change; None to try the next."""
    url_setting = config.setting("TOKEN_URL")
    if isinstance(outcome, TokenRejected):
        if outcome.upstream_error == "upstream_error":
            return (
                f"fix {url_setting}: {config.token_url} answered HTTP {outcome.upstream_status} without an OAuth2 "
                "error, so it is not the token endpoint"
            )
        return None
    if isinstance(outcome, InvalidTokenResponse):
        return f"fix {url_setting}: {outcome.description}"
    if isinstance(outcome, UpstreamUnavailable) and outcome.upstream_status is not None:
        return f"retry later: the token endpoint is failing ({outcome.description})"
    # Unreachable, TLS, timeout: the URL's host or the network.
    return f"fix {url_setting} or the network: {outcome.description}"


def _accepted(
    report: CheckReport,
    config: ProviderConfig,
    credentials: Credentials,
    is_configured: bool,
    method: str,
    encoding: str,
    label: str,
) -> None:
    if not is_configured:
        report.problems.append(f"the configured variant was rejected; {label} works")
        change = f"{config.setting('AUTH_METHOD')}={method}"
        if method == "client_secret_basic":
            change += f" and {config.setting('BASIC_ENCODING')}={encoding}"
        report.fail(f"set {change}: the token endpoint accepts {label}, not the configured variant")
        return
    report.ok = True
    accidents = [v for v in (credentials.client_id, credentials.client_secret) if v.problems]
    report.verdict = f"OK: provider {config.name} gets tokens with the configured settings"
    for value in accidents:
        report.advice.append(
            f"secret {value.name} has {', '.join(value.problems)}; the broker strips it, but store it again without"
        )


def _accidents(credentials: Credentials) -> list[SecretValue]:
    """Secrets whose value, after the broker's whitespace strip, still has a paste accident."""
    return [v for v in (credentials.client_id, credentials.client_secret) if value_problems(v.value.reveal())]


def _accident_verdict(accidents: list[SecretValue], settings: Settings) -> str:
    """Names the accident and a way to store the value again that keeps it off the command line."""
    vault = (urlsplit(settings.key_vault_url or "").hostname or "").split(".")[0]
    fixes = []
    for value in accidents:
        how = (
            f"az keyvault secret set --vault-name {vault} --name {value.name} --file <a file holding only the value>"
            if settings.key_vault_url
            else f"set {local_secret_variable(value.name)} to the value alone"
        )
        fixes.append(f"store secret {value.name} again without {', '.join(value.problems)} ({how})")
    return "; ".join(fixes) + "; the token endpoint refused the value as stored"


async def _attempt(
    endpoint: TokenEndpoint, credentials: Credentials, method: str, encoding: str
) -> Token | BrokerError:
    try:
        return await endpoint.request(credentials, auth_method=method, basic_encoding=encoding)
    except BrokerError as error:
        return error
