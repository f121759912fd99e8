"""``python -m broker check``: settle "invalid client_id or client_secret" in seconds.

Reads configuration and secrets exactly as the broker does, requests a token, and ends
with one verdict line that says what to fix: the Key Vault credential (``az login``, the
managed identity), ``KEY_VAULT_URL``, a secret (a paste accident, by name, length and
SHA-256 fingerprint, never the value), the token URL, the client authentication
variant, or the credentials themselves. It stops at the first of these that fails, so a
verdict never blames the credentials for a wrong URL. Never prints a secret or a token.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError

from broker.config import ProviderConfig, Settings, local_secret_variable
from broker.endpoint import RetryPolicy, TokenEndpoint, exception_chain
from broker.errors import (
    BrokerError,
    InvalidTokenResponse,
    SecretError,
    SecretForbidden,
    SecretStoreUnavailable,
    TokenRejected,
    UpstreamUnavailable,
)
from broker.runtime import Broker, Overrides
from broker.secrets import Credentials, SecretValue, _network_reason, value_problems
from broker.tokens import Token

# (auth method, Basic encoding, label): the configured one is tried first.
VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("client_secret_basic", "raw", "client_secret_basic with raw client_id:client_secret (iLevel's own clients)"),
    ("client_secret_basic", "form", "client_secret_basic with RFC 6749 form-encoded parts"),
    ("client_secret_post", "raw", "client_secret_post (credentials in the form body)"),
)
SAFE_CLAIMS = ("iss", "aud", "exp", "scope", "client_id")
# One SDK retry instead of the broker's two: a diagnosis should not sit through backoff to say
# "unreachable"; a persistent failure gets the same verdict either way.
CHECK_SECRET_CLIENT_OPTIONS: Mapping[str, Any] = {"retry_total": 1, "retry_backoff_factor": 0.2}
# The safe way to compare a stored value with the issued one: read from a prompt, never argv or history.
FINGERPRINT_HINT = "run python -m broker fingerprint and paste each value at its prompt"
CREDENTIAL_VERDICTS = ("sign in:", "fix the managed identity:")


@dataclass
class CheckReport:
    provider: str
    ok: bool = False
    verdict: str = ""
    warnings: list[str] = field(default_factory=list)
    secrets: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    token: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def fail(self, verdict: str) -> None:
        self.ok = False
        self.verdict = verdict

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "ok": self.ok,
            "verdict": self.verdict,
            "warnings": self.warnings,
            "secrets": self.secrets,
            "attempts": self.attempts,
            "problems": self.problems,
            "advice": self.advice,
            "token": self.token,
        }

    def render(self) -> str:
        lines = [f"provider {self.provider}: {'OK' if self.ok else 'FAILED'}"]
        lines += [f"  warning: {w}" for w in self.warnings]
        for s in self.secrets:
            notes = "; ".join(s["problems"]) or "looks clean"
            lines.append(
                f"  secret {s['name']} version {s['version']}: {s['length']} chars, sha256 {s['sha256']}, {notes}"
            )
        for a in self.attempts:
            lines.append(f"  tried {a['variant']}: {a['result']}")
        if self.token:
            lines.append(f"  token: {self.token['token_type']}, lifetime {self.token['lifetime_s']} s")
            if "jwt_header" in self.token:
                lines.append(f"  JWT header: {self.token['jwt_header']}")
                lines.append(f"  JWT claims: {self.token['jwt_claims']}")
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  do: {a}" for a in self.advice]
        lines.append(f"verdict: {self.verdict}")
        return "\n".join(lines)


def _describe_secret(value: SecretValue) -> dict[str, Any]:
    return {
        "name": value.name,
        "version": value.version,
        "length": len(value.value),
        "sha256": value.value.fingerprint(),
        "problems": list(value.problems),
    }


def _token_summary(token: Token) -> dict[str, Any]:
    summary: dict[str, Any] = {"token_type": token.token_type, "lifetime_s": round(token.lifetime)}
    try:
        raw = token.access_token.reveal()
        header = jwt.get_unverified_header(raw)
        claims = jwt.decode(raw, options={"verify_signature": False})
    except jwt.PyJWTError:
        summary["format"] = "opaque (not a JWT)"
        return summary
    summary["format"] = "JWT"
    summary["jwt_header"] = {k: header[k] for k in ("alg", "typ", "kid") if k in header}
    summary["jwt_claims"] = {k: claims[k] for k in SAFE_CLAIMS if k in claims}
    return summary


def start_up_warnings(settings: Settings) -> list[str]:
    """What ``serve`` logs at start-up (config.log_warnings), as report lines."""
    warnings = list(settings.warnings)
    if settings.caller_auth_disabled:
        warnings.append("caller authentication is off (BROKER_INSECURE_DISABLE_CALLER_AUTH): local development only")
    return warnings


async def run_check(
    settings: Settings,
    provider_name: str | None,
    overrides: Overrides | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> CheckReport:
    name = provider_name or next(iter(settings.providers))
    report = CheckReport(provider=name, warnings=start_up_warnings(settings))
    if name not in settings.providers:
        report.fail(
            f"add provider {name!r} to BROKER_PROVIDERS (now: {', '.join(settings.providers)}), or check its spelling"
        )
        return report
    if overrides is None:
        overrides = Overrides(secret_client_options=CHECK_SECRET_CLIENT_OPTIONS)
    broker = Broker(settings, overrides)
    try:
        credentials = await _read_secrets(broker, name, report, os.environ if env is None else env)
        if credentials is not None:
            await _request_token(broker, broker.providers[name].config, credentials, report, overrides)
    except Exception as exc:  # noqa: BLE001 - a diagnosis tool ends with a verdict, not a traceback
        # SDK set-up errors (e.g. azure-identity refusing an http AZURE_AUTHORITY_HOST) carry no secrets.
        report.fail(f"the check itself failed: {type(exc).__name__}: {_first_line(str(exc))}")
    finally:
        await broker.aclose()
    return report


# --- Key Vault -------------------------------------------------------------------------------


async def _read_secrets(broker: Broker, name: str, report: CheckReport, env: Mapping[str, str]) -> Credentials | None:
    try:
        credentials = await broker.providers[name].source.read_credentials()
    except SecretError as error:
        verdict = _secret_verdict(error, broker.settings, env)
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


def _secret_verdict(error: SecretError, settings: Settings, env: Mapping[str, str]) -> str:
    chain = exception_chain(error)
    vault = urlsplit(settings.key_vault_url or "").netloc
    credential_error = next(
        (e for e in chain if isinstance(e, ClientAuthenticationError) and getattr(e, "status_code", None) is None),
        None,
    )
    if credential_error is not None:
        return _credential_verdict(credential_error, settings, env)
    network = next((e for e in chain if isinstance(e, (ServiceRequestError, ServiceResponseError))), None)
    if network is not None:
        return (
            f"check KEY_VAULT_URL: the vault host {vault} cannot be reached ({_network_reason(network)}); "
            "is the vault name right, and does its firewall admit this machine?"
        )
    if isinstance(error, SecretStoreUnavailable) and error.__cause__ is None:
        return f"check KEY_VAULT_URL: the vault host {vault} did not answer in time; is it the right vault?"
    if isinstance(error, SecretStoreUnavailable):
        return f"retry later: Key Vault {vault} is throttling or failing ({error.description})"
    if isinstance(error, SecretForbidden):
        return f"grant access to the vault: {error.description}"
    return f"fix secret {error.secret!r} in {_where(settings)}: {error.description}"


def _credential_verdict(error: ClientAuthenticationError, settings: Settings, env: Mapping[str, str]) -> str:
    """Which credential read Key Vault (the rule of broker.secrets.secret_client) and what to do about it."""
    client_id = settings.managed_identity_client_id
    if env.get("IDENTITY_ENDPOINT"):
        who = f"user-assigned, AZURE_CLIENT_ID={client_id}" if client_id else "system-assigned (no AZURE_CLIENT_ID)"
        detail = _first_line(str(error.message or error))
        return (
            f"fix the managed identity: ManagedIdentityCredential ({who}) got no token for Key Vault ({detail}). "
            "In Azure, assign the user-assigned identity to the Function App and set AZURE_CLIENT_ID to its client "
            "id (azd up does both)"
        )
    cli = _credential_line(str(error.message or error), "AzureCliCredential")
    tried = f" (Azure CLI: {cli})" if cli else ""
    return (
        f"sign in: DefaultAzureCredential found no credential for Key Vault{tried}. Run `az login` with an account "
        "that may read the vault's secrets (Key Vault Secrets User or Officer), then run check again; on an Azure "
        "VM or container, set AZURE_CLIENT_ID to its managed identity's client id"
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


async def _request_token(
    broker: Broker, config: ProviderConfig, credentials: Credentials, report: CheckReport, overrides: Overrides
) -> None:
    endpoint = TokenEndpoint(
        broker.http,
        config,
        budget_s=broker.settings.token_budget_s,
        retry=RetryPolicy(max_attempts=1),
        clock=overrides.clock,
    )
    configured = (config.auth_method, config.basic_encoding if config.auth_method == "client_secret_basic" else "raw")
    ordered = sorted(VARIANTS, key=lambda v: (v[0], v[1]) != configured)
    accidents = _accidents(credentials)
    if accidents:
        # A value with a paste accident is wrong in every variant: one request is enough to show it.
        ordered = ordered[:1]
    rejections: list[TokenRejected] = []
    for method, encoding, label in ordered:
        outcome = await _attempt(endpoint, credentials, method, encoding)
        if isinstance(outcome, Token):
            report.attempts.append({"variant": label, "result": "accepted"})
            report.token = _token_summary(outcome)
            _accepted(report, config, credentials, (method, encoding) == configured, method, encoding, label)
            return
        status = f" (HTTP {outcome.upstream_status})" if isinstance(outcome, TokenRejected) else ""
        report.attempts.append({"variant": label, "result": f"{outcome.code}{status}: {outcome.description}"})
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
