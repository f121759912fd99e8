"""STAND-IN for local development and tests; never used in production.

An iLevel-shaped data API under ``/v1/``: it accepts only bearer tokens that the stand-in
token server (``oauth.TokenServer``) issued, and answers an expired, revoked or foreign
token with 401. It serves what proxy mode must carry:

- ``GET /v1/entities/assets?page[size]=N&page[number]=M``: a JSON:API collection
  (``application/vnd.api+json``) with absolute ``links.next`` until the last page;
- ``GET /v1/exports/assets.csv``: a CSV download (with a BOM and CRLF line ends, so a
  byte-for-byte check means something);
- ``GET /v1/slow?seconds=S``: answers after ``S`` seconds;
- ``GET /v1/large?bytes=N``: ``N`` bytes of ``application/octet-stream``, streamed;
- ``GET|POST /v1/echo``: what arrived (method, headers, body size), as JSON;
- ``GET /v1/cookie``: sets a cookie; ``GET /v1/redirect?to=URL``: a 302 to ``URL``;
- ``GET /v1/reflect``: a hostile echo: the bearer token it received, raw and percent-encoded,
  in its JSON body (a ``links.next`` too; lower-case ``%xx``, JSON ``\\uXXXX``, HTML numeric
  references and the base64 of ``Bearer <token>`` as well), in ``Location`` and in ``Link``;
- ``GET /v1/gzip?bytes=N``: ``N`` zero bytes gzip-compressed (a bomb, for a small ``N`` cap),
  ``Content-Encoding: gzip`` whatever ``Accept-Encoding`` said;
- ``GET /v1/disposition``: a ``Content-Disposition`` with raw UTF-8 bytes (``€``);
- ``GET /v1/outside?header=location|link``: a link on the API's own origin but outside ``/v1/``;
- ``GET /v1/dots[?header=link]``: links with dot segments (``/v1/../../api/token/ilevel``) in the body, or in
  ``Link``; and a ``Link`` target on another host;
- ``GET /v1/bigjson?bytes=N``: a JSON:API page of about ``N`` bytes, streamed, every asset with an
  absolute ``links.self``, no ``Content-Length``;
- ``GET /v1/hold?seconds=S``: like ``slow``, for a caller that holds slots (the slow holder).

Every request is recorded; scripted faults answer the next authenticated requests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from urllib.parse import quote

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from broker.standin.faults import FaultScript, Reply, Scriptable
from broker.standin.oauth import TokenServer

API_ROOT = "/v1/"
ASSETS = 23
DEFAULT_PAGE_SIZE = 10
_CHUNK = 64 * 1024
_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass(frozen=True)
class ApiRequest:
    """One request as the data API saw it. Headers are kept out of ``repr`` (they hold the token)."""

    method: str
    raw_path: str
    query: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    status: int


def asset(number: int) -> dict[str, object]:
    return {"id": f"A{number:04d}", "type": "assets", "attributes": {"name": f"Asset {number}", "number": number}}


def assets_csv() -> bytes:
    rows = ["\ufeffId,Name,Number"] + [f"A{n:04d},Asset {n},{n}" for n in range(1, ASSETS + 1)]
    return ("\r\n".join(rows) + "\r\n").encode("utf-8")


class DataApi(Scriptable):
    """ASGI app: the iLevel-shaped data API, trusting one stand-in token server."""

    def __init__(self, tokens: TokenServer, *, assets: int = ASSETS) -> None:
        self.tokens = tokens
        self.assets = assets
        # Set once the server runs (as the API's own absolute URL, like https://api.ilevelsolutions.com).
        self.public_url: str | None = None
        self.requests: list[ApiRequest] = []
        self.faults = FaultScript()
        self._revoked: set[str] = set()
        self._lock = threading.Lock()
        # Per ?tag=: requests being answered right now, and the most at once (what a concurrency
        # limit must bound). Tagged, so a straggler from an earlier test does not count.
        self._in_flight: dict[str, int] = {}
        self._max_in_flight: dict[str, int] = {}
        self._app = Starlette(routes=[Route("/v1/{path:path}", self._endpoint, methods=_ANY_METHOD)])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    # --- test API -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The API root, e.g. ``http://127.0.0.1:54321/v1/``: what BROKER_<NAME>_API_BASE_URL points at."""
        if self.public_url is None:
            raise RuntimeError("DataApi.public_url is set once the server runs")
        return self.public_url + API_ROOT

    def revoke(self, token: str) -> None:
        """Reject this token from now on, as iLevel would after revoking a credential."""
        with self._lock:
            self._revoked.add(token)

    def revoke_issued(self) -> None:
        """Revoke every token the token server has issued so far."""
        with self._lock:
            self._revoked.update(self.tokens.issued_tokens)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._revoked.clear()
            self._max_in_flight.clear()
        self.faults.clear()

    def max_in_flight(self, tag: str) -> int:
        """The most requests carrying ``?tag=<tag>`` that were being answered at once."""
        with self._lock:
            return self._max_in_flight.get(tag, 0)

    @property
    def authorized_requests(self) -> list[ApiRequest]:
        return [r for r in self.requests if r.status not in (0, 401)]

    # --- HTTP -----------------------------------------------------------------------------
    async def _endpoint(self, request: Request) -> Response:
        body = await request.body()
        raw_path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
        # Recorded on arrival (status 0 until answered), so a slow request belongs to the test that sent it.
        entry = ApiRequest(
            request.method,
            raw_path,
            request.scope.get("query_string", b"").decode("latin-1"),
            {k.lower(): v for k, v in request.headers.items()},
            body,
            0,
        )
        tag = request.query_params.get("tag", "")
        with self._lock:
            self.requests.append(entry)
            self._in_flight[tag] = self._in_flight.get(tag, 0) + 1
            self._max_in_flight[tag] = max(self._max_in_flight.get(tag, 0), self._in_flight[tag])
        try:
            response = await self._answer(request, body)
        finally:
            with self._lock:
                self._in_flight[tag] -= 1
        with self._lock:
            for index, seen in enumerate(self.requests):
                if seen is entry:
                    self.requests[index] = replace(entry, status=response.status_code)
        return response

    def _authenticated(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        with self._lock:
            if token in self._revoked:
                return False
        try:
            self.tokens.decode(token)  # signature, issuer and expiry
        except jwt.InvalidTokenError:
            return False
        return True

    async def _answer(self, request: Request, body: bytes) -> Response:
        if not self._authenticated(request):
            return JSONResponse(
                {"errors": [{"status": "401", "title": "Unauthorized", "detail": "invalid or expired token"}]},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        scripted = self.faults.next_reply()
        if scripted is not None:
            return await scripted.respond()
        path = request.path_params["path"]
        params = request.query_params
        if path == "entities/assets" and request.method in ("GET", "HEAD"):
            return self._assets(request)
        if path == "exports/assets.csv":
            return Response(
                assets_csv(),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": 'attachment; filename="assets.csv"', "ETag": '"assets-v1"'},
            )
        if path == "reflect":
            return self._reflect(request)
        if path == "gzip":
            size = int(params.get("bytes", str(1024 * 1024)))
            return Response(
                _gzip_zeros(size),
                media_type="application/octet-stream",
                headers={"Content-Encoding": "gzip"},
            )
        if path == "disposition":
            response = Response(b"a,b\r\n", media_type="text/csv")
            response.raw_headers.append((b"content-disposition", 'attachment; filename="\u20ac-report.csv"'.encode()))
            return response
        if path == "outside":
            target = f"{self.public_url}/v2/elsewhere"
            if params.get("header") == "link":
                return JSONResponse({"ok": True}, headers={"Link": f'<{target}>; rel="next"'})
            return JSONResponse({"ok": True}, status_code=201, headers={"Location": target})
        if path == "dots":
            return self._dots(request)
        if path == "bigjson":
            return StreamingResponse(
                _big_json(int(params.get("bytes", str(1024 * 1024))), f"{self.public_url}{API_ROOT}"),
                media_type="application/vnd.api+json",
            )
        if path in ("slow", "hold"):
            await asyncio.sleep(float(params.get("seconds", "1")))
            return JSONResponse({"slow": True})
        if path == "large":
            size = int(params.get("bytes", str(1024 * 1024)))
            return StreamingResponse(
                _pattern(size),
                media_type="application/octet-stream",
                headers={"Content-Length": str(size)} if params.get("length", "1") == "1" else {},
            )
        if path == "echo":
            return JSONResponse(
                {
                    "method": request.method,
                    "headers": sorted(k.lower() for k in request.headers),
                    "body_bytes": len(body),
                    "content_type": request.headers.get("content-type"),
                }
            )
        if path == "cookie":
            return JSONResponse(
                {"cookie": request.headers.get("cookie")},
                headers={"Set-Cookie": "session=standin-session; Path=/"},
            )
        if path == "redirect":
            return Response(status_code=302, headers={"Location": params.get("to", "/v1/entities/assets")})
        return JSONResponse({"errors": [{"status": "404", "title": "Not Found"}]}, status_code=404)

    def _reflect(self, request: Request) -> Response:
        token = request.headers.get("authorization", "").partition(" ")[2]
        own = f"{self.public_url}{API_ROOT}"
        document = {
            "echo": {"authorization": f"Bearer {token}"},
            "links": {"next": f"{own}entities/assets?access_token={quote(token, safe='')}"},
            "percent": "".join(f"%{ord(c):02x}" for c in token),
            "html": "".join(f"&#{ord(c)};" if i % 2 else f"&#x{ord(c):X};" for i, c in enumerate(token)),
            "basic": base64.b64encode(f"Bearer {token}".encode()).decode(),
        }
        # Written by hand: JSON's own \uXXXX escapes (as System.Text.Json writes "+"), which json.dumps
        # would not produce for ASCII.
        escaped = "".join(f"\\u{ord(c):04X}" for c in token)
        body = json.dumps(document)[:-1] + f', "json": "{escaped}"}}'
        headers = {
            "Location": f"{own}jobs/1?token={token}",
            "Link": f'<{own}entities/assets?t={quote(token, safe="")}>; rel="next"',
        }
        return Response(body, media_type="application/vnd.api+json", headers=headers)

    def _dots(self, request: Request) -> Response:
        own = f"{self.public_url}{API_ROOT}"
        if request.query_params.get("header") == "link":
            return JSONResponse({"ok": True}, headers={"Link": f'<{own}../../api/token/ilevel>; rel="next"'})
        document = {"links": {"next": f"{own}../../api/token/ilevel", "inner": f"{own}entities/../entities/assets"}}
        link = f'<https://elsewhere.example/v1/help>; rel="help", <{own}entities/assets?page=2>; rel="next"'
        return JSONResponse(document, headers={"Link": link})

    def _assets(self, request: Request) -> Response:
        params = request.query_params
        size = max(1, min(int(params.get("page[size]", DEFAULT_PAGE_SIZE)), 500))
        number = max(1, int(params.get("page[number]", "1")))
        first = (number - 1) * size + 1
        last = min(first + size - 1, self.assets)
        own = self.public_url or str(request.base_url).rstrip("/")
        collection = f"{own}/v1/entities/assets"

        def page(n: int) -> str:
            return f"{collection}?{quote('page[size]')}={size}&{quote('page[number]')}={n}"

        links: dict[str, str] = {"self": page(number), "first": page(1)}
        if last < self.assets:
            links["next"] = page(number + 1)
        document = {
            "data": [asset(n) for n in range(first, last + 1)],
            "links": links,
            "meta": {"total": self.assets},
        }
        headers = {"Link": f'<{links["next"]}>; rel="next"'} if "next" in links else {}
        return JSONResponse(document, media_type="application/vnd.api+json", headers=headers)


async def _pattern(size: int) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * (_CHUNK // 256)
    sent = 0
    while sent < size:
        piece = block[: min(_CHUNK, size - sent)]
        sent += len(piece)
        yield piece


def _gzip_zeros(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    out = []
    for start in range(0, size, len(block)):
        out.append(compressor.compress(block[: min(len(block), size - start)]))
    out.append(compressor.flush())
    return b"".join(out)


_BIG_JSON: dict[tuple[int, str], bytes] = {}


def big_json(size: int, own: str) -> bytes:
    """About ``size`` bytes of JSON:API: every asset links to itself with an absolute URL (made once per size)."""
    key = (size, own)
    if key not in _BIG_JSON:
        rows: list[str] = []
        sent, number = 10, 0
        while sent < size:
            number += 1
            row = json.dumps(
                {**asset(number), "links": {"self": f"{own}entities/assets/A{number:04d}"}}, separators=(",", ":")
            )
            rows.append(("," if number > 1 else "") + row)
            sent += len(rows[-1])
        tail = '], "links": {"next": "' + own + 'entities/assets?page%5Bnumber%5D=2"}}'
        _BIG_JSON.clear()  # one size at a time: the stand-in should not pool pages either
        _BIG_JSON[key] = ('{"data": [' + "".join(rows) + tail).encode()
    return _BIG_JSON[key]


async def _big_json(size: int, own: str) -> AsyncIterator[bytes]:
    body = big_json(size, own)
    for start in range(0, len(body), _CHUNK):
        yield body[start : start + _CHUNK]


def pattern_bytes(size: int) -> bytes:
    """What ``/v1/large?bytes=size`` sends, for byte-for-byte checks."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


__all__ = ["API_ROOT", "ApiRequest", "DataApi", "Reply", "asset", "assets_csv", "big_json", "pattern_bytes"]
