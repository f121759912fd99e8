"""The upstream call: one proxied request, with the provider's cached token, bounded in time and size.

Shares the provider's :class:`~broker.cache.TokenCache` with the token route (same
single-flight, refresh-ahead and stale rules). Retries exactly two things and nothing
else, because ADF retries by its own policy: a 401 once with a renewed token, and a
GET or HEAD whose connection failed before any byte was sent. Redirects are never
followed. The HTTP client keeps no cookies: it serves every caller.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from broker import __version__
from broker.cache import TokenCache
from broker.config import ProviderConfig
from broker.errors import InvalidUpstreamResponse, UpstreamTimeout, UpstreamUnavailable
from broker.proxy.headers import request_headers, response_headers
from broker.proxy.links import Rewriter, is_json
from broker.tokens import Token

log = logging.getLogger(__name__)

USER_AGENT = f"ilevel-token-broker/{__version__}"
# Proxied POST bodies: enough for any query document; anything bigger is a mistake.
MAX_REQUEST_BODY_BYTES = 1024 * 1024
RETRY_AFTER_S = 30.0
CONNECT_TIMEOUT_S = 10.0
_IDEMPOTENT = frozenset({"GET", "HEAD"})


class NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that never stores: a Set-Cookie for one caller must not ride along for the next."""

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None

    def extract_cookies(self, response: object, request: object) -> None:
        return None


def build_client(*, timeout_s: float) -> httpx.AsyncClient:
    """The proxy's own client: no cookies, no redirects, the proxy timeout for reads."""
    return httpx.AsyncClient(
        cookies=NoCookies(),
        follow_redirects=False,
        timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
    )


@dataclass(frozen=True, kw_only=True)
class Call:
    """One request to forward. ``path`` is already checked (:func:`broker.proxy.paths.safe_path`)."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]] = field(repr=False)
    body: bytes = field(default=b"", repr=False)
    request_id: str
    root: str


@dataclass(frozen=True, kw_only=True)
class Forwarded:
    """The upstream's answer, filtered and rewritten, ready to become the caller's response."""

    status: int
    headers: list[tuple[str, str]]
    chunks: list[bytes] = field(repr=False)
    size: int
    upstream_latency_s: float
    token_fingerprint: str


class ProviderProxy:
    """Forwards requests to one provider's API; at most ``proxy_concurrency`` in flight at once.

    ``client`` returns the live proxy client (:class:`broker.httpclient.SharedClient`).
    """

    def __init__(
        self,
        config: ProviderConfig,
        cache: TokenCache,
        client: Callable[[], httpx.AsyncClient],
        *,
        timeout_s: float,
        max_response_bytes: int,
    ) -> None:
        self.config = config
        self._cache = cache
        self._client = client
        self._timeout_s = timeout_s
        self._max_response_bytes = max_response_bytes
        self._slots = asyncio.Semaphore(config.proxy_concurrency)
        self._host = urlsplit(config.api_base_url).netloc

    async def forward(self, call: Call) -> Forwarded:
        """Send ``call`` upstream and read the answer; raise a broker error for what the broker itself refuses."""
        stage = "a free upstream slot"
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._slots:
                    stage = "a token"
                    served = await self._cache.get(min_validity=0)
                    stage = "the API"
                    return await self._exchange(call, served.token)
        except TimeoutError:
            raise UpstreamTimeout(
                f"The request to {self._host} did not finish within BROKER_PROXY_TIMEOUT_SECONDS="
                f"{self._timeout_s:g} (waiting for {stage}; at most {self.config.proxy_concurrency} requests "
                f"per instance are in flight, {self.config.setting('PROXY_CONCURRENCY')}). Retry later, or ask "
                "for smaller pages.",
                retry_after=RETRY_AFTER_S,
            ) from None

    async def _exchange(self, call: Call, token: Token) -> Forwarded:
        url = self.config.api_base_url + call.path + (f"?{call.query}" if call.query else "")
        started = time.perf_counter()
        response = await self._send(call, url, token)
        if response.status_code == 401:
            renewed = (await self._cache.renew(token)).token
            # The same token back means the forced refresh was rate-limited: the 401 is passed through.
            if renewed != token:
                await response.aclose()
                log.info("proxy: %s answered 401; retrying once with a renewed token", self._host)
                token = renewed
                response = await self._send(call, url, token)
        try:
            return await self._read(call, url, response, token, started)
        finally:
            await response.aclose()

    async def _send(self, call: Call, url: str, token: Token) -> httpx.Response:
        headers = request_headers(call.headers)
        headers += [
            ("Authorization", f"Bearer {token.access_token.reveal()}"),
            ("User-Agent", USER_AGENT),
            ("X-Request-Id", call.request_id),
        ]
        attempts = 2 if call.method in _IDEMPOTENT else 1
        for attempt in range(1, attempts + 1):
            client = self._client()
            request = client.build_request(call.method, url, headers=headers, content=call.body or None)
            try:
                return await client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing reached the API: the one case where a retry cannot repeat an effect.
                if attempt < attempts:
                    log.info("proxy: connecting to %s failed (%s); retrying once", self._host, type(exc).__name__)
                    continue
                raise self._unreachable(exc) from None
            except httpx.TimeoutException:
                raise self._timed_out() from None
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _read(self, call: Call, url: str, response: httpx.Response, token: Token, started: float) -> Forwarded:
        status = response.status_code
        rewriter = Rewriter(self.config.api_base_url, call.root)
        headers: list[tuple[str, str]] = []
        for name, value in response_headers(response.headers.multi_items()):
            if name == "link":
                value = rewriter.link_header(value)
            elif name == "location":
                value, inside = rewriter.location(value, url)
                if not inside and 300 <= status < 400:
                    raise InvalidUpstreamResponse(
                        f"{self._host} answered {status} with a redirect outside "
                        f"{self.config.setting('API_BASE_URL')}; the broker follows no redirects and passes none "
                        "that would leave the API root."
                    )
            headers.append((name, value))
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_response_bytes:
            raise self._too_big()
        chunks: list[bytes] = []
        size = 0
        if call.method != "HEAD":
            try:
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self._max_response_bytes:
                        raise self._too_big()
                    chunks.append(chunk)
            except httpx.TimeoutException:
                raise self._timed_out() from None
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from None
        if chunks and is_json(response.headers.get("content-type")):
            body = rewriter.json_body(b"".join(chunks))
            chunks, size = [body], len(body)
        return Forwarded(
            status=status,
            headers=headers,
            chunks=chunks,
            size=size,
            upstream_latency_s=time.perf_counter() - started,
            token_fingerprint=token.access_token.fingerprint(),
        )

    def _too_big(self) -> InvalidUpstreamResponse:
        return InvalidUpstreamResponse(
            f"{self._host} answered with a body over BROKER_PROXY_MAX_RESPONSE_MB="
            f"{self._max_response_bytes // (1024 * 1024)}; ask for smaller pages or raise the setting."
        )

    def _timed_out(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"{self._host} did not answer within BROKER_PROXY_TIMEOUT_SECONDS={self._timeout_s:g}.",
            retry_after=RETRY_AFTER_S,
        )

    def _unreachable(self, exc: httpx.TransportError) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"Could not reach {self._host} ({type(exc).__name__}); check "
            f"{self.config.setting('API_BASE_URL')} and the API's status, then retry.",
            retry_after=RETRY_AFTER_S,
        )
