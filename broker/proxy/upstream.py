"""The upstream call: one proxied request, with the provider's cached token, bounded in time and size.

The body streams: a few chunks are held at a time, decoded with a limit, redacted and rewritten
as they pass (:mod:`broker.proxy.stream`); the slot is held until the body has been sent.

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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from broker.cache import TokenCache
from broker.config import DEFAULT_PROXY_SLOT_WAIT_S as DEFAULT_SLOT_WAIT_S
from broker.config import ProviderConfig, Setting
from broker.errors import InvalidRequest, InvalidUpstreamResponse, UpstreamTimeout, UpstreamUnavailable
from broker.httpclient import USER_AGENT
from broker.proxy.headers import passed_back, request_headers
from broker.proxy.links import Rewriter, canonical_path, is_json, origin
from broker.proxy.slots import Slot, Slots
from broker.proxy.stream import REDACTED, BodyTooLarge, Decoder, JsonLinks, Redactor, token_forms
from broker.tokens import Token

log = logging.getLogger(__name__)

# Proxied POST bodies: enough for any query document; anything bigger is a mistake.
MAX_REQUEST_BODY_BYTES = 1024 * 1024
RETRY_AFTER_S = 30.0
# The body's CPU work (redaction, rewriting) is done this much at a time between event-loop turns:
# about 0.5 ms of work on a JSON page, so 4 large pages at once leave the loop free every ~2 ms.
# A turn is taken once this much work has been done (under two slices when upstream reads are
# smaller), so a page smaller than one slice costs no turn at all.
WORK_SLICE_BYTES = 16 * 1024
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
    # Whose share of the slots this request uses (the caller's oid).
    caller: str = "-"


@dataclass(eq=False, kw_only=True)
class Forwarded:
    """The upstream's answer, filtered, ready to become the caller's response; the body still streams.

    ``body`` yields the decoded, redacted, rewritten chunks; ``sent`` counts them. :meth:`aclose`
    closes the upstream response and frees the slot, whether the body was read to its end or not.
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    upstream_latency_s: float
    token_fingerprint: str
    body: AsyncIterator[bytes] = field(repr=False)
    closer: Callable[[], Awaitable[None]] = field(repr=False)
    sent: int = 0

    async def aclose(self) -> None:
        await self.closer()


class ProviderProxy:
    """Forwards requests to one provider's API over its fair-share slots (:class:`~broker.proxy.slots.Slots`).

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
        slot_wait_s: float = DEFAULT_SLOT_WAIT_S,
        on_slot_wait: Callable[[bool], None] | None = None,
    ) -> None:
        self.config = config
        self._cache = cache
        self._client = client
        self._timeout_s = timeout_s
        self._max_response_bytes = max_response_bytes
        self._host = urlsplit(config.api_base_url).netloc
        self.slots = Slots(
            config.proxy_concurrency,
            wait_s=slot_wait_s,
            describe=lambda: f"{config.setting('PROXY_CONCURRENCY')}={config.proxy_concurrency}",
            on_wait=on_slot_wait,
        )

    async def forward(self, call: Call) -> Forwarded:
        """Send ``call`` upstream and read the answer's head; raise a broker error for what the broker refuses.

        Everything that can still become an error response happens here, before a status is sent:
        the slot (503 proxy_busy), the token, the API's status and headers (within the proxy
        timeout), a Content-Length over the cap, and a compressed body's decoded size.
        """
        url = self.config.api_base_url + call.path + (f"?{call.query}" if call.query else "")
        self._refuse_token_url(url)
        slot = await self.slots.acquire(call.caller)
        response: httpx.Response | None = None
        try:
            stage = "a token"
            deadline = time.monotonic() + self._timeout_s
            async with asyncio.timeout(self._timeout_s):
                served = await self._cache.get(min_validity=0)
                stage = "the API"
                started = time.perf_counter()
                response, token = await self._exchange(call, url, served.token)
                return await self._head(call, url, response, token, started, deadline, slot)
        except TimeoutError:
            if response is not None:
                await response.aclose()
            await slot.release()
            raise UpstreamTimeout(
                f"The request to {self._host} did not finish within {Setting.PROXY_TIMEOUT_SECONDS}="
                f"{self._timeout_s:g} (waiting for {stage}). Retry later, or ask for smaller pages.",
                retry_after=RETRY_AFTER_S,
            ) from None
        except BaseException:
            if response is not None:
                await response.aclose()
            await slot.release()
            raise

    def _refuse_token_url(self, url: str) -> None:
        """A proxied path that lands on the provider's own token endpoint would POST there with our token."""
        if _same_resource(url, self.config.token_url):
            raise InvalidRequest(
                f"The proxied path resolves to the provider's token endpoint ({self.config.setting('TOKEN_URL')}); "
                "the proxy never forwards there. Nothing was sent upstream."
            )

    async def _exchange(self, call: Call, url: str, token: Token) -> tuple[httpx.Response, Token]:
        response = await self._send(call, url, token)
        if response.status_code == 401:
            renewed = (await self._cache.renew(token)).token
            # The same token back means the forced refresh was rate-limited: the 401 is passed through.
            if renewed != token:
                await response.aclose()
                log.info("proxy: %s answered 401; retrying once with a renewed token", self._host)
                token = renewed
                response = await self._send(call, url, token)
        return response, token

    async def _send(self, call: Call, url: str, token: Token) -> httpx.Response:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request_headers(call.headers)]
        headers += [
            (b"Authorization", f"Bearer {token.access_token.reveal()}".encode()),
            (b"User-Agent", USER_AGENT.encode()),
            (b"X-Request-Id", call.request_id.encode()),
            # Uncompressed, so the cap counts what is held; a compressed answer anyway is decoded with a limit.
            (b"Accept-Encoding", b"identity"),
        ]
        # No body on GET or HEAD, whatever the caller sent.
        content = call.body if call.body and call.method not in _IDEMPOTENT else None
        attempts = 2 if call.method in _IDEMPOTENT else 1
        for attempt in range(1, attempts + 1):
            client = self._client()
            request = client.build_request(call.method, url, headers=headers, content=content)
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

    async def _head(
        self,
        call: Call,
        url: str,
        response: httpx.Response,
        token: Token,
        started: float,
        deadline: float,
        slot: Slot,
    ) -> Forwarded:
        status = response.status_code
        rewriter = Rewriter(self.config.api_base_url, call.root)
        redactor = Redactor(token_forms(token.access_token.reveal()))
        headers = passed_back(
            response.headers.raw,
            status=status,
            request_url=url,
            rewriter=rewriter,
            redactor=redactor,
            host=self._host,
            base_setting=self.config.setting("API_BASE_URL"),
        )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_response_bytes:
            raise self._too_big()
        decoder = Decoder(response.headers.get("content-encoding"), self._max_response_bytes, self._too_big())
        source: AsyncIterator[bytes] = response.aiter_raw()
        if call.method == "HEAD":
            source = _nothing()
        elif decoder.compressed:
            source = await self._measured(response, decoder)
        json = is_json(response.headers.get("content-type"))
        links = JsonLinks(self.config.api_base_url, call.root) if json else None

        async def close() -> None:
            try:
                await response.aclose()
            finally:
                await slot.release()
                if redactor.found:
                    log.warning(
                        "proxy: %s reflected the broker's token in its answer (%d times); replaced with %s. "
                        "request id=%s",
                        self._host,
                        redactor.found,
                        REDACTED.decode(),
                        call.request_id,
                    )

        forwarded = Forwarded(
            status=status,
            headers=headers,
            upstream_latency_s=time.perf_counter() - started,
            token_fingerprint=token.access_token.fingerprint(),
            body=_nothing(),
            closer=close,
        )
        forwarded.body = self._body(source, decoder, redactor, links, forwarded, deadline)
        return forwarded

    async def _measured(self, response: httpx.Response, decoder: Decoder) -> AsyncIterator[bytes]:
        """A compressed body (sent although identity was asked for): held compressed, its decoded size
        measured with bounded steps, so one over the cap is refused before anything is sent."""
        held: list[bytes] = []
        size = 0
        probe = decoder.twin()
        try:
            async for raw in response.aiter_raw():
                size += len(raw)
                if size > self._max_response_bytes:
                    raise self._too_big()
                held.append(raw)
                probe.feed(raw)
                await asyncio.sleep(0)
            probe.finish()
        except httpx.TimeoutException:
            raise self._timed_out() from None
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        return _replay(held)

    async def _body(
        self,
        source: AsyncIterator[bytes],
        decoder: Decoder,
        redactor: Redactor,
        links: JsonLinks | None,
        forwarded: Forwarded,
        deadline: float,
    ) -> AsyncIterator[bytes]:
        worked = 0  # bytes of CPU work since the event loop last had its turn
        try:
            async for raw in source:
                for decoded in decoder.feed(raw):
                    for start in range(0, len(decoded), WORK_SLICE_BYTES):
                        piece = decoded[start : start + WORK_SLICE_BYTES]
                        out = redactor.feed(piece)
                        if links is not None:
                            out = links.feed(out)
                        if out:
                            forwarded.sent += len(out)
                            yield out
                        # A slice's worth of work at a time; a page under one slice costs no extra loop turn.
                        worked += len(piece)
                        if worked >= WORK_SLICE_BYTES:
                            worked = 0
                            await asyncio.sleep(0)
                if time.monotonic() > deadline:
                    raise self._timed_out()
            tail = b"".join(redactor.feed(piece) for piece in decoder.finish()) + redactor.finish()
            if links is not None:
                tail = links.feed(tail) + links.finish()
            if tail:
                forwarded.sent += len(tail)
                yield tail
        except httpx.TimeoutException:
            raise self._timed_out() from None
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def _too_big(self) -> InvalidUpstreamResponse:
        return BodyTooLarge(
            f"{self._host} answered with a body over {Setting.PROXY_MAX_RESPONSE_MB}="
            f"{self._max_response_bytes // (1024 * 1024)}; ask for smaller pages or raise the setting."
        )

    def _timed_out(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"{self._host} did not answer within {Setting.PROXY_TIMEOUT_SECONDS}={self._timeout_s:g}.",
            retry_after=RETRY_AFTER_S,
        )

    def _unreachable(self, exc: httpx.TransportError) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"Could not reach {self._host} ({type(exc).__name__}); check "
            f"{self.config.setting('API_BASE_URL')} and the API's status, then retry.",
            retry_after=RETRY_AFTER_S,
        )


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def _replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    while chunks:
        yield chunks.pop(0)


def _same_resource(url: str, other: str) -> bool:
    """The same origin (normalised) and the same :func:`~broker.proxy.links.canonical_path`."""
    here = origin(url)
    if here is None or here != origin(other):
        return False
    return canonical_path(urlsplit(url).path) == canonical_path(urlsplit(other).path)
