"""The OAuth2 client-credentials request (RFC 6749 §4.4): POST, parse strictly, retry what can succeed.

This module knows OAuth2 and nothing of caching. It turns every httpx failure and
every bad answer into a :mod:`broker.errors` error at the boundary.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlsplit

import httpx

from broker.config import ProviderConfig
from broker.errors import (
    BrokerError,
    InvalidTokenResponse,
    TokenRejected,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from broker.httpclient import USER_AGENT
from broker.redaction import SecretForms
from broker.retry_after import parse_retry_after
from broker.secrets import Credentials
from broker.tokens import Secret, Token

log = logging.getLogger(__name__)

# x/oauth2 caps token responses at 1 MiB; a token response is a few KiB at most.
MAX_BODY_BYTES = 1 << 20
# RFC 6749 makes expires_in optional; without it we cannot know, so keep it briefly.
DEFAULT_LIFETIME_S = 300.0
# A token claiming to live longer than a day is cached for a day at most.
MAX_LIFETIME_S = 24 * 3600.0
# Retry-After for an unreachable or timed-out endpoint with nothing better to go on; the cache
# holds the failure this long, so an earlier retry would only get the same answer.
UNAVAILABLE_RETRY_AFTER_S = 30
# Echoed values shorter than this are not masked: they would garble the text and hide nothing.
MIN_SCRUB_CHARS = 4


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter, inside an overall budget."""

    max_attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 4.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)))


class _Retryable(Exception):
    """One failed attempt worth repeating; carries the error to raise if it is the last."""

    def __init__(self, error: UpstreamError, retry_after: float | None = None) -> None:
        super().__init__(error.description)
        self.error = error
        self.retry_after = retry_after


def basic_header(client_id: str, client_secret: str, *, form_encode: bool) -> str:
    """``Basic base64(id:secret)``; RFC 6749 §2.3.1 form-encodes both parts first, iLevel's clients don't."""
    if form_encode:
        client_id, client_secret = quote_plus(client_id), quote_plus(client_secret)
    return "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")


class TokenEndpoint:
    """Requests tokens from one provider's token endpoint."""

    def __init__(
        self,
        http: Callable[[], httpx.AsyncClient],
        provider: ProviderConfig,
        *,
        budget_s: float,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._http = http
        self._provider = provider
        self._budget_s = budget_s
        self._retry = retry or RetryPolicy()
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._host = urlsplit(provider.token_url).netloc

    async def request(
        self,
        credentials: Credentials,
        *,
        auth_method: str | None = None,
        basic_encoding: str | None = None,
    ) -> Token:
        """One token, retrying network errors, 5xx and 429 within the budget."""
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            left = self._budget_s - (time.monotonic() - start)
            try:
                return await self._attempt(credentials, left, auth_method, basic_encoding)
            except _Retryable as failure:
                left = self._budget_s - (time.monotonic() - start)
                delay = self._delay(failure, attempt, left)
                if delay is None:
                    error = failure.error
                    if failure.retry_after is not None:
                        error.retry_after = failure.retry_after
                    raise error from None
                log.info(
                    "token endpoint %s attempt %d failed (%s); retrying in %.2f s",
                    self._host,
                    attempt,
                    failure.error.code,
                    delay,
                )
                await self._sleep(delay)

    def _delay(self, failure: _Retryable, attempt: int, left: float) -> float | None:
        """How long to wait before the next attempt, or None to give up now."""
        if attempt >= self._retry.max_attempts:
            return None
        if failure.retry_after is not None:
            # Honour Retry-After when it fits the budget; otherwise give up and pass it on.
            return failure.retry_after if failure.retry_after < left - 1 else None
        delay = self._retry.backoff(attempt, self._rng)
        return delay if delay < left - 1 else None

    async def _attempt(self, credentials: Credentials, left: float, method: str | None, encoding: str | None) -> Token:
        if left <= 0:
            raise UpstreamTimeout(
                f"The token endpoint {self._host} did not answer within the budget; retry later.",
                retry_after=UNAVAILABLE_RETRY_AFTER_S,
            )
        headers, form = self._compose(credentials, method, encoding)
        timeout = httpx.Timeout(
            connect=min(self._retry.connect_timeout_s, left),
            read=min(self._retry.read_timeout_s, left),
            write=min(self._retry.read_timeout_s, left),
            pool=min(self._retry.connect_timeout_s, left),
        )
        sent_at = self._clock()
        try:
            # httpx's read timeout bounds each read, not the body: a body trickling in just under
            # it would outlast the budget, so the whole attempt gets what is left of the budget.
            async with asyncio.timeout(left):
                async with self._http().stream(
                    "POST", self._provider.token_url, data=form, headers=headers, timeout=timeout
                ) as response:
                    body = await _read_capped(response, self._host)
        except BrokerError:
            raise
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"The token endpoint {self._host} did not answer within the budget; retry later.",
                retry_after=UNAVAILABLE_RETRY_AFTER_S,
            ) from exc
        except httpx.TimeoutException as exc:
            phase = "connecting to" if isinstance(exc, httpx.ConnectTimeout) else "waiting for"
            raise _Retryable(
                UpstreamTimeout(
                    f"Timed out {phase} the token endpoint {self._host}; retry later.",
                    retry_after=UNAVAILABLE_RETRY_AFTER_S,
                )
            ) from exc
        except httpx.TransportError as exc:
            raise self._network_error(exc) from exc
        return self._parse(response, body, sent_at, credentials)

    def _compose(
        self, credentials: Credentials, method: str | None, encoding: str | None
    ) -> tuple[dict[str, str], dict[str, str]]:
        method = method or self._provider.auth_method
        encoding = encoding or self._provider.basic_encoding
        client_id = credentials.client_id.value.reveal()
        client_secret = credentials.client_secret.value.reveal()
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        form = {"grant_type": "client_credentials"}
        form.update(self._provider.extra_params)
        if method == "client_secret_post":
            form.update(client_id=client_id, client_secret=client_secret)
        else:
            headers["Authorization"] = basic_header(client_id, client_secret, form_encode=encoding == "form")
        return headers, form

    def _network_error(self, exc: httpx.TransportError) -> Exception:
        chain = exception_chain(exc)
        tls = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
        if tls is not None:
            # A certificate problem won't fix itself on retry.
            reason = getattr(tls, "reason", None) or "SSL error"
            return UpstreamUnavailable(
                f"TLS handshake with the token endpoint {self._host} failed ({reason}); "
                "check the URL and the CA trust (SSL_CERT_FILE).",
                retry_after=60,
            )
        if any(isinstance(e, socket.gaierror) for e in chain):
            reason = "DNS lookup failed"
        elif any(isinstance(e, ConnectionRefusedError) for e in chain):
            reason = "connection refused"
        elif any(isinstance(e, ConnectionResetError) for e in chain):
            reason = "connection reset"
        else:
            reason = type(exc).__name__
        return _Retryable(
            UpstreamUnavailable(
                f"The token endpoint {self._host} is unreachable ({reason}); check the provider's TOKEN_URL "
                "setting and the network, or retry later.",
                retry_after=UNAVAILABLE_RETRY_AFTER_S,
            )
        )

    def _parse(self, response: httpx.Response, body: bytes, sent_at: float, credentials: Credentials) -> Token:
        status = response.status_code
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock())
            unavailable = UpstreamUnavailable(
                f"The token endpoint {self._host} answered {status}; retry later.",
                retry_after=retry_after or UNAVAILABLE_RETRY_AFTER_S,
            )
            unavailable.upstream_status = status
            raise _Retryable(unavailable, retry_after)
        payload = _json_object(body)
        if status != 200 or (payload is not None and "error" in payload):
            raise self._rejection(status, payload, credentials)
        if payload is None:
            raise InvalidTokenResponse(
                f"The token endpoint {self._host} returned an invalid response: the body is not a JSON object "
                f"(content type {response.headers.get('content-type', 'none')!r}). Check the provider's TOKEN_URL."
            )
        return self._token(payload, sent_at, credentials)

    def _rejection(self, status: int, payload: dict[str, Any] | None, credentials: Credentials) -> BrokerError:
        if payload is not None and isinstance(payload.get("error"), str):
            error = _scrub(payload["error"], credentials)[:64]
            detail = _scrub(str(payload.get("error_description") or ""), credentials)
        elif status == 401:
            error, detail = "invalid_client", ""
        else:
            return TokenRejected(
                f"The token endpoint {self._host} answered HTTP {status} without an OAuth2 error; "
                "check the provider's TOKEN_URL setting.",
                upstream_error="upstream_error",
                upstream_status=status,
            )
        description = f"The token endpoint {self._host} rejected the request: {error}"
        if detail:
            description += f" ({detail})"
        if error in TokenRejected.CREDENTIAL_ERRORS:
            description += f". It refused the client credentials in {credentials.describe()}: check their values"
            description += f" and BROKER_{self._provider.name.upper().replace('-', '_')}_AUTH_METHOD."
        else:
            description += "."
        return TokenRejected(description, upstream_error=error, upstream_status=status)

    def _token(self, payload: dict[str, Any], sent_at: float, credentials: Credentials) -> Token:
        def invalid(problem: str) -> InvalidTokenResponse:
            return InvalidTokenResponse(f"The token endpoint {self._host} returned an invalid response: {problem}.")

        access_token = payload.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise invalid("access_token is missing or empty")
        token_type = payload.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise invalid(f"token_type is {str(token_type)[:20]!r}, only Bearer is supported")
        lifetime = _lifetime(payload.get("expires_in"), "expires_in" in payload)
        if lifetime is None:
            raise invalid("expires_in must be a positive number of seconds")
        return Token(
            access_token=Secret(access_token),
            obtained_at=sent_at,
            expires_at=sent_at + lifetime,
            token_type="Bearer",
            credential_versions=credentials.versions,
        )


def _lifetime(value: Any, present: bool) -> float | None:
    if not present or value is None:
        return DEFAULT_LIFETIME_S
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or value != value or value <= 0:
        return None
    return min(float(value), MAX_LIFETIME_S)


async def _read_capped(response: httpx.Response, host: str) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise InvalidTokenResponse(f"The token endpoint {host} returned an invalid response: the body is over 1 MiB.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise InvalidTokenResponse(
                f"The token endpoint {host} returned an invalid response: the body is over 1 MiB."
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def _scrub(text: str, credentials: Credentials) -> str:
    """Upstream text may echo what we sent: mask every form of it, keep it short, keep it one line."""
    data = text.encode("utf-8", "replace")
    out: list[bytes] = []
    last = 0
    for start, end in _secret_forms(credentials).spans(data):
        out += [data[last:start], b"***"]
        last = end
    out.append(data[last:])
    return " ".join(b"".join(out).decode("utf-8", "replace").split())[:200]


def _secret_forms(credentials: Credentials) -> SecretForms:
    """The client id and secret as an upstream may echo them (:mod:`broker.redaction`): raw, form- or
    percent-encoded (either hex case), JSON- or HTML-escaped, and inside the Basic header's base64
    (padded or not, standard or URL-safe alphabet, raw or form-encoded parts)."""
    client_id = credentials.client_id.value.reveal()
    client_secret = credentials.client_secret.value.reveal()
    values = [value for value in (client_id, client_secret) if len(value) >= MIN_SCRUB_CHARS]
    pairs = (f"{client_id}:{client_secret}", f"{quote_plus(client_id)}:{quote_plus(client_secret)}", client_secret)
    # Case-insensitive: over-masking a look-alike in an error text costs nothing.
    return SecretForms(values, base64_of=[pair for pair in pairs if len(pair) >= MIN_SCRUB_CHARS], ignore_case=True)


def exception_chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain
