"""The process-start warm-up: the first token of a new process waits on as few round trips as the job allows.

Every request to the stand-ins here waits an injected round trip (:class:`broker.standin.trips.RoundTrips`)
and is logged with when it started and ended, so the tests count the trips the first token waited on one
after another (:func:`broker.standin.trips.critical_path`) rather than time them.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from bench.server import ROOT
from bench.stack import StandIns, standins
from broker.app import create_app
from broker.config import load_settings
from broker.runtime import Broker
from broker.serving import BrokerServer, server_config
from broker.standin.trips import Trip, critical_path
from broker.startup import Process, start_functions
from broker.warmup import warm_up
from tests.conftest import Stack

# Long beside the CPU work of a cold start (imports, TLS set-up), so trips that overlap do so clearly.
TRIP_S = 0.4
URL = "http://func-broker.test"


@pytest.fixture(scope="module")
def delayed() -> Iterator[StandIns]:
    with standins() as servers:
        yield servers


@pytest.fixture
def environ(delayed: StandIns, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The app settings of a broker on the delayed stand-ins, in the process environment as in Azure."""
    delayed.reset()
    delayed.trips.latency_s = TRIP_S
    env = delayed.broker_env()
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "REQUESTS_CA_BUNDLE", *delayed.settings_env()):
        monkeypatch.setenv(name, env[name])
    return env


def timeline(trips: list[Trip]) -> str:
    """The trips, ms from the first one's start: what a failure shows."""
    start = min((t.started for t in trips), default=0.0)
    return "\n".join(
        f"{t.server:9} {1000 * (t.started - start):5.0f}-{1000 * (t.ended - start):5.0f} ms {t.path[-40:]}"
        for t in sorted(trips, key=lambda t: t.started)
    )


async def first_token(process: Process, caller: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=process), base_url=URL) as client:
        return await client.get("/api/token/ilevel", headers={"Authorization": f"Bearer {caller}"})


async def close(process: Process) -> None:
    if process.warming is not None:
        await asyncio.gather(process.warming, return_exceptions=True)
    if process.broker is not None:
        await process.broker.aclose()


@pytest.mark.slow
async def test_a_new_process_s_first_token_waits_on_three_round_trips(
    delayed: StandIns, environ: dict[str, str]
) -> None:
    """Warmed from process start: Key Vault's challenge beside the identity token, the reads, the token endpoint."""
    caller = delayed.caller()
    process = start_functions(environ)
    assert process.warming is not None, "the Functions entry point starts the warm-up in the worker's loop"
    try:
        response = await first_token(process, caller)
        assert response.status_code == 200, response.text
        chain = critical_path(delayed.trips.trips)
        assert len(chain) == 3 and chain[-1].server == "tokens", timeline(delayed.trips.trips)
        assert delayed.token_requests == 1
    finally:
        await close(process)


@pytest.mark.slow
async def test_without_the_warm_up_the_first_request_walks_five_or_six_round_trips_in_turn(
    delayed: StandIns, environ: dict[str, str]
) -> None:
    """The cold path the warm-up removes: Entra metadata, keys, (Key Vault's challenge, which the SDK remembers
    per process after the first,) the identity token, the reads, the token endpoint."""
    caller = delayed.caller()
    process = start_functions(environ)
    process.install(Broker(load_settings(environ)))  # cancels the warm-up before it ran
    try:
        response = await first_token(process, caller)
        assert response.status_code == 200, response.text
        chain = critical_path(delayed.trips.trips)
        servers = [t.server for t in chain]
        assert servers[:2] == ["entra", "entra"] and servers[-3:] == ["identity", "key_vault", "tokens"], timeline(
            delayed.trips.trips
        )
        assert len(chain) >= 5
    finally:
        await close(process)


class QuietServer(BrokerServer):
    def install_signal_handlers(self) -> None:
        """pytest owns the signals."""


@pytest.mark.slow
async def test_serve_starts_the_warm_up_with_the_server(delayed: StandIns, environ: dict[str, str]) -> None:
    """``python -m broker serve``'s server warms the broker while uvicorn starts: the token is cached before
    any request arrives."""
    broker = Broker(load_settings(environ))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    config = server_config(create_app(broker), host="127.0.0.1", port=listener.getsockname()[1])
    server = QuietServer(config, broker, warm_up=True)
    task = asyncio.create_task(server.run_until_stopped(sockets=[listener]))
    try:
        while server.warming is None and not task.done():
            await asyncio.sleep(0.01)
        assert server.warming is not None
        assert await server.warming == {}
        assert broker.providers["ilevel"].cache.token is not None
        assert delayed.token_requests == 1
    finally:
        server.should_exit = True
        await task
    assert server.warming.done()


@pytest.mark.slow
async def test_an_unauthenticated_request_adds_no_upstream_work(delayed: StandIns, environ: dict[str, str]) -> None:
    """The warm-up is the process's work: requests without a valid caller token add no trip to it, during or after."""
    process = start_functions(environ)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=process), base_url=URL) as client:
            during = await client.get("/api/token/ilevel")
            assert process.warming is not None
            await process.warming
            trips = len(delayed.trips.trips)
            after = await client.get("/api/token/ilevel", headers={"Authorization": "Bearer not-a-token"})
            unknown = await client.get("/api/token/other")
        assert [r.status_code for r in (during, after, unknown)] == [401, 401, 401]
        assert len(delayed.trips.trips) == trips
    finally:
        await close(process)


async def test_a_failed_warm_up_is_a_cold_cache_logged_once(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    """Entra and Key Vault down at start: one WARNING naming the steps by code; once they are back, the first
    request is served at once (no failure held against it)."""
    broker = stack.broker()
    stack.entra.fail_jwks = True
    stack.kv.forbid("rbac")
    failed = await warm_up(broker)
    assert failed == {"signing keys": "HTTPStatusError", "token for provider ilevel": "key_vault_forbidden"}
    lines = [r for r in caplog.records if r.name == "broker.warmup"]
    assert [r.levelname for r in lines] == ["WARNING"]
    assert "signing keys (HTTPStatusError), token for provider ilevel (key_vault_forbidden)" in lines[0].getMessage()

    stack.entra.fail_jwks = False
    stack.kv.allow()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(broker)), base_url=URL) as client:
        response = await client.get("/api/token/ilevel", headers={"Authorization": f"Bearer {stack.caller()}"})
    assert response.status_code == 200, response.text
    await broker.aclose()


async def test_a_warm_up_finds_its_work_done_and_does_nothing(stack: Stack) -> None:
    """A cache that holds a token is not refetched by a later warm-up."""
    broker = stack.broker()
    await broker.providers["ilevel"].cache.get()
    assert await warm_up(broker) == {}
    assert stack.tokens.request_count == 1
    await broker.aclose()


def test_the_worker_imports_the_app_inside_its_running_event_loop() -> None:
    """Why the Functions entry point can start the warm-up at import: azure_functions_runtime's worker-init
    handler is a coroutine that indexes (imports) function_app.py."""
    from azure_functions_runtime import handle_event, loader

    assert inspect.iscoroutinefunction(handle_event.worker_init_request)
    assert "load_function_metadata(" in inspect.getsource(handle_event.worker_init_request)
    assert "imported_module = importlib.import_module(module_name)" in inspect.getsource(loader)


# What the first request (or the warm-up) imports, never function_app.py's import itself.
LAZY_MODULES = (
    "azure.identity",
    "msal",
    "azure.storage.blob",
    "azure.monitor.opentelemetry",
    "opentelemetry.sdk",
    "uvicorn",
    "broker.serving",
    "broker.standin",
)


@pytest.mark.slow
def test_importing_function_app_leaves_the_lazy_modules_unimported(delayed: StandIns) -> None:
    """Import stays lean: the credential, storage, exporter and server modules load on first use."""
    code = f"import json, sys, function_app; print(json.dumps([m for m in {LAZY_MODULES!r} if m in sys.modules]))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=delayed.broker_env(), cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
