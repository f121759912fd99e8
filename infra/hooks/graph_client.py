"""Microsoft Graph for the azd hooks: one function sends, everything else is plain Python.

Every request goes through a ``Send`` callable, ``(method, url, body) -> Reply``. The real one
(``http_send``) is urllib with a Graph token from ``az account get-access-token``; tests pass a
recorded Graph instead. Why not ``az rest`` for each call: on Windows ``az`` is a ``.cmd`` file, and
cmd.exe re-parses its arguments, so JSON bodies and ``$filter`` URLs with quotes and ``%`` break.
One ``az`` call with plain arguments, then HTTPS from Python, behaves the same on every shell.

Around ``Send``: Graph errors as one exception, ``@odata.nextLink`` paging, and retries with
backoff for throttling and for replication races (an object created a moment ago that another
Graph replica does not know yet).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

GRAPH = "https://graph.microsoft.com/v1.0"
# Waits between attempts: about a minute in all, the time Entra usually needs to replicate a new
# application or service principal to every replica.
RETRY_DELAYS_S: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0, 30.0)
# Graph's own messages for a reference to an object it has not replicated yet.
_REPLICATION_MESSAGES = (
    "does not reference a valid application object",
    "does not exist or one of its queried reference-property objects are not present",
    "permission being assigned was not found on application",
)


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any


Send = Callable[[str, str, object | None], Reply]


class HookError(Exception):
    """A failure the person running azd can fix; the message says what happened and what to do."""


class GraphError(HookError):
    """Graph answered with an error status."""

    def __init__(self, method: str, url: str, status: int, code: str, message: str) -> None:
        self.method, self.url, self.status, self.code, self.message = method, url, status, code, message
        super().__init__(f"Microsoft Graph refused {method} {url.removeprefix(GRAPH)}: {status} {code}: {message}")

    @classmethod
    def from_reply(cls, method: str, url: str, reply: Reply) -> GraphError:
        error = reply.body.get("error", {}) if isinstance(reply.body, dict) else {}
        code = str(error.get("code") or "unknown")
        message = str(error.get("message") or reply.body or "no error body")
        return cls(method, url, reply.status, code, message)

    @property
    def throttled(self) -> bool:
        return self.status in (429, 503, 504)

    @property
    def replication_race(self) -> bool:
        """True when Graph does not know an object yet: worth retrying only right after creating one."""
        return self.status == 404 or (
            self.status == 400 and any(text in self.message.lower() for text in _REPLICATION_MESSAGES)
        )


class Graph:
    """Graph calls with retries and paging, over any ``Send``."""

    def __init__(
        self,
        send: Send,
        *,
        sleep: Callable[[float], None] = time.sleep,
        delays: tuple[float, ...] = RETRY_DELAYS_S,
        log: Callable[[str], None] = print,
    ) -> None:
        self._send = send
        self._sleep = sleep
        self._delays = delays
        self._log = log

    def request(self, method: str, path: str, body: object | None = None, *, just_created: bool = False) -> Any:
        """One Graph call. With ``just_created``, a replication race is retried too, not only throttling."""
        url = path if "://" in path else f"{GRAPH}{path}"
        for delay in (*self._delays, None):
            reply = self._send(method, url, body)
            if reply.status < 400:
                return reply.body
            error = GraphError.from_reply(method, url, reply)
            retry = error.throttled or (just_created and error.replication_race)
            if not retry or delay is None:
                raise error
            self._log(f"entra-app: Graph is not ready ({error.status} {error.code}); retrying in {delay:.0f} s")
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def list(self, path: str) -> list[dict[str, Any]]:
        """Every item of a collection, following ``@odata.nextLink`` to the last page."""
        return list(self._pages(path))

    def _pages(self, path: str) -> Iterator[dict[str, Any]]:
        next_url: str | None = path
        while next_url:
            page = self.request("GET", next_url) or {}
            yield from page.get("value", [])
            next_url = page.get("@odata.nextLink")


def az_graph_token(subscription: str) -> str:
    """A Graph access token for the tenant of ``subscription`` (azd's, not az's default). Never printed."""
    exe = shutil.which("az")
    if exe is None:
        raise HookError("the Azure CLI (az) is required: install it, then run `az login --tenant <tenant id>`")
    args = [exe, "account", "get-access-token", "--resource-type", "ms-graph", "--subscription", subscription]
    args += ["--query", "accessToken", "-o", "tsv"]
    done = subprocess.run(args, capture_output=True, text=True, check=False)  # noqa: S603
    token = done.stdout.strip()
    if done.returncode != 0 or not token:
        raise HookError(f"`az account get-access-token` for Graph failed; run `az login`.\n{done.stderr.strip()}")
    return token


def http_send(token: str, *, timeout_s: float = 60.0) -> Send:
    """The real ``Send``: HTTPS to Graph with the bearer token (proxies from HTTPS_PROXY apply)."""

    def send(method: str, url: str, body: object | None) -> Reply:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 - https URLs only
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
                return Reply(response.status, _json(response.read()))
        except urllib.error.HTTPError as error:
            return Reply(error.code, _json(error.read()))

    return send


def _json(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"error": {"code": "not_json", "message": raw[:200].decode("utf-8", "replace")}}
