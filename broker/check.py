"""``python -m broker check``: settle "invalid client_id or client_secret" in seconds.

Reads configuration and secrets exactly as the broker does, requests a token, and on
failure says why: the network (DNS, TCP, TLS, timeout, naming the host), the HTTP
status and OAuth error, the stored secrets (whitespace, quotes, newline, BOM, empty:
by name, length and SHA-256 fingerprint, never the value), and which client
authentication variant the token endpoint accepts. Never prints a token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import jwt

from broker.config import Settings
from broker.endpoint import RetryPolicy, TokenEndpoint
from broker.errors import BrokerError, SecretError, TokenRejected
from broker.runtime import Broker, Overrides
from broker.secrets import Credentials, SecretValue
from broker.tokens import Token

# (auth method, Basic encoding, label): the configured one is tried first.
VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("client_secret_basic", "raw", "client_secret_basic with raw client_id:client_secret (iLevel's own clients)"),
    ("client_secret_basic", "form", "client_secret_basic with RFC 6749 form-encoded parts"),
    ("client_secret_post", "raw", "client_secret_post (credentials in the form body)"),
)
SAFE_CLAIMS = ("iss", "aud", "exp", "scope", "client_id")


@dataclass
class CheckReport:
    provider: str
    ok: bool = False
    secrets: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    token: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "ok": self.ok,
            "secrets": self.secrets,
            "attempts": self.attempts,
            "problems": self.problems,
            "advice": self.advice,
            "token": self.token,
        }

    def render(self) -> str:
        lines = [f"provider {self.provider}: {'OK' if self.ok else 'FAILED'}"]
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


async def run_check(settings: Settings, provider_name: str | None, overrides: Overrides | None = None) -> CheckReport:
    name = provider_name or next(iter(settings.providers))
    report = CheckReport(provider=name)
    if name not in settings.providers:
        report.problems.append(f"provider {name!r} is not configured")
        report.advice.append(f"add it to BROKER_PROVIDERS (now: {', '.join(settings.providers)})")
        return report
    broker = Broker(settings, overrides)
    try:
        await _run(broker, name, report, overrides)
    finally:
        await broker.aclose()
    return report


async def _run(broker: Broker, name: str, report: CheckReport, overrides: Overrides | None) -> None:
    provider = broker.providers[name]
    config = provider.config
    try:
        credentials = await provider.source.read_credentials()
    except SecretError as error:
        report.problems.append(error.description)
        report.advice.append(f"fix secret {error.secret!r} in {broker.secrets.location}")
        return
    report.secrets = [_describe_secret(credentials.client_id), _describe_secret(credentials.client_secret)]
    for value in (credentials.client_id, credentials.client_secret):
        if value.problems:
            report.problems.append(f"secret {value.name} has {', '.join(value.problems)}")
            report.advice.append(f"store secret {value.name} again without {', '.join(value.problems)}")

    endpoint = TokenEndpoint(
        broker.http,
        config,
        budget_s=broker.settings.token_budget_s,
        retry=RetryPolicy(max_attempts=1),
        clock=overrides.clock if overrides else time.time,
    )
    configured = (config.auth_method, config.basic_encoding if config.auth_method == "client_secret_basic" else "raw")
    ordered = sorted(VARIANTS, key=lambda v: (v[0], v[1]) != configured)
    for method, encoding, label in ordered:
        outcome = await _attempt(endpoint, credentials, method, encoding)
        if isinstance(outcome, Token):
            report.attempts.append({"variant": label, "result": "accepted"})
            report.ok = True
            report.token = _token_summary(outcome)
            if (method, encoding) != configured:
                report.problems.append(f"the configured variant was rejected; {label} works")
                report.advice.append(f"set {config.setting('AUTH_METHOD')}={method}")
                if method == "client_secret_basic":
                    report.advice.append(f"set {config.setting('BASIC_ENCODING')}={encoding}")
                report.ok = False
            return
        status = f" (HTTP {outcome.upstream_status})" if isinstance(outcome, TokenRejected) else ""
        report.attempts.append({"variant": label, "result": f"{outcome.code}{status}: {outcome.description}"})
        if not isinstance(outcome, TokenRejected) or outcome.upstream_status >= 500:
            # The network or the server failed: trying other variants would say nothing new.
            report.problems.append(outcome.description)
            return
    report.problems.append("the token endpoint rejected every client authentication variant")
    report.advice.append(
        "the credentials themselves are wrong: compare the fingerprints above with the issued values "
        "(python -c \"import hashlib;print(hashlib.sha256(b'VALUE').hexdigest()[:8])\")"
    )


async def _attempt(
    endpoint: TokenEndpoint, credentials: Credentials, method: str, encoding: str
) -> Token | BrokerError:
    try:
        return await endpoint.request(credentials, auth_method=method, basic_encoding=encoding)
    except BrokerError as error:
        return error
