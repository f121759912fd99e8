"""The hooks' Graph client over a real socket: a local server plays a recorded Graph conversation."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra" / "hooks"))
from graph_client import Graph, GraphError, http_send  # noqa: E402

RECORDING = Path(__file__).parent / "recordings" / "graph_wire.json"
SP = "9c2d4e6f-8a1b-4c3d-9e5f-7a8b9c0d1e2f"
TOKEN = "graph-token-for-the-test"


class Player(ThreadingHTTPServer):
    """Answers each request with the next recorded reply, after checking it is the recorded request."""

    def __init__(self, exchanges: list[dict[str, Any]]) -> None:
        super().__init__(("127.0.0.1", 0), PlayerHandler)
        self.base = f"http://127.0.0.1:{self.server_address[1]}"
        self.exchanges = exchanges
        self.mismatches: list[str] = []
        self.authorizations: list[str | None] = []


class PlayerHandler(BaseHTTPRequestHandler):
    server: Player

    def _play(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.authorizations.append(self.headers.get("Authorization"))
        if not self.server.exchanges:
            self.server.mismatches.append(f"unexpected {self.command} {self.path}")
            self._reply(500, {"error": {"code": "player", "message": "conversation over"}})
            return
        exchange = self.server.exchanges.pop(0)
        want = exchange["request"]
        got = {"method": self.command, "path": self.path, **({"body": body} if body is not None else {})}
        if got != want:
            self.server.mismatches.append(f"expected {want}, got {got}")
        reply = json.dumps(exchange["response"]["body"]).replace("{base}", self.server.base)
        self._reply(exchange["response"]["status"], json.loads(reply))

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = _play  # noqa: N815 - http.server's naming

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature from the base class
        return


@pytest.fixture
def player() -> Iterator[Player]:
    server = Player(json.loads(RECORDING.read_text(encoding="utf-8"))["exchanges"])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_paging_retries_and_errors_follow_the_recorded_conversation(player: Player) -> None:
    """nextLink is followed to the last page, a replication race is retried once, a 404 becomes GraphError."""
    sleeps: list[float] = []
    graph = Graph(http_send(TOKEN, timeout_s=5), sleep=sleeps.append, log=lambda _: None)
    base = f"{player.base}/v1.0"

    assigned = graph.list(f"{base}/servicePrincipals/{SP}/appRoleAssignedTo")
    body = {
        "principalId": "c0ffee00-0000-4000-8000-000000000009",
        "resourceId": SP,
        "appRoleId": "7a7a7a7a-1c3b-4d6e-8f7a-9b0c1d2e3f40",
    }
    created = graph.request("POST", f"{base}/servicePrincipals/{SP}/appRoleAssignedTo", body, just_created=True)
    with pytest.raises(GraphError) as missing:
        graph.request("GET", f"{base}/applications(appId='00000000-0000-4000-8000-000000000000')")

    assert [a["id"] for a in assigned] == ["asg-1", "asg-2"]
    assert created["id"] == "asg-9"
    assert sleeps == [2.0]
    assert (missing.value.status, missing.value.code) == (404, "Request_ResourceNotFound")
    assert player.mismatches == [] and player.exchanges == []
    assert set(player.authorizations) == {f"Bearer {TOKEN}"}


def test_a_replication_race_is_not_retried_unless_an_object_was_just_created(player: Player) -> None:
    """Without just_created the 400 from the recording is final: lookups must not wait a minute for nothing."""
    graph = Graph(http_send(TOKEN, timeout_s=5), sleep=lambda _: None, log=lambda _: None)
    base = f"{player.base}/v1.0"
    graph.list(f"{base}/servicePrincipals/{SP}/appRoleAssignedTo")
    body = {
        "principalId": "c0ffee00-0000-4000-8000-000000000009",
        "resourceId": SP,
        "appRoleId": "7a7a7a7a-1c3b-4d6e-8f7a-9b0c1d2e3f40",
    }
    with pytest.raises(GraphError, match="Permission being assigned was not found"):
        graph.request("POST", f"{base}/servicePrincipals/{SP}/appRoleAssignedTo", body)
