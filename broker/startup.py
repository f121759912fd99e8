"""What a host runs for the life of its process: the broker, or the configuration error that stops it.

The broker belongs to the process, not to the ASGI lifespan. Under Azure Functions it is
built when the worker imports function_app.py and is never closed: the process ends
with it. Under ``python -m broker serve`` the CLI closes it after uvicorn stops. No
request and no framework message can close or replace it while the process serves.

A configuration error does not stop the Functions app from indexing (a failed import
leaves zero functions, every call a bare 404 and no log line). It is logged at ERROR
once, and every request answers 503 ``broker_misconfigured`` naming the setting.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any, Protocol

from starlette.types import Receive, Scope, Send

from broker.app import create_app
from broker.config import load_settings, log_warnings
from broker.errors import ConfigError
from broker.http import BrokerApp, MisconfiguredApp
from broker.rotation import check_rotation_event
from broker.runtime import Broker
from broker.telemetry import Exporter, configure_exporter
from broker.warmup import start_warm_up

log = logging.getLogger("broker.startup")

# INFO noise from the libraries under the broker (a line per outbound request); their warnings still show.
QUIET_LOGGERS = ("httpx", "httpcore", "azure", "msal", "urllib3")


def quiet_libraries() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


# azure-functions' ASGI bridge logs every ASGI message it gets on the root logger at DEBUG,
# response bodies (our served tokens) included: ``logging.debug("Received %s from ASGI worker.", m)``.
_ASGI_MESSAGE_FORMATS = frozenset({"Received %s from ASGI worker.", "Received lifespan message %s."})


class AsgiMessageScrubber(logging.Filter):
    """Keeps the bridge's DEBUG lines but replaces each ASGI message by its type, status and body size."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in _ASGI_MESSAGE_FORMATS:
            # LogRecord unwraps a lone mapping argument: the ASGI message dict is ``record.args`` itself.
            message = record.args[0] if isinstance(record.args, tuple) and record.args else record.args
            record.args = (_summary(message),)
        return True


def _summary(message: Any) -> str:
    if not isinstance(message, Mapping):
        return "<ASGI message>"
    parts = [str(message.get("type", "?"))]
    if "status" in message:
        parts.append(f"status={message['status']}")
    body = message.get("body")
    if isinstance(body, (bytes, bytearray)):
        parts.append(f"body={len(body)} bytes (not logged)")
    return "{" + ", ".join(parts) + "}"


def scrub_asgi_debug_messages() -> None:
    """Install the scrubber on the root logger, whose own records (``logging.debug``) it sees; once."""
    root = logging.getLogger()
    if not any(isinstance(f, AsgiMessageScrubber) for f in root.filters):
        root.addFilter(AsgiMessageScrubber())


class _Event(Protocol):
    """An Event Grid trigger's argument: ``func.EventGridEvent`` or ``func.CloudEvent``."""

    @property
    def subject(self) -> str | None: ...

    def get_json(self) -> Any: ...


def event_type(event: _Event) -> str:
    """The event's type in either schema: Event Grid's ``eventType`` or CloudEvents 1.0's ``type``."""
    for attribute in ("event_type", "type"):
        value = getattr(event, attribute, None)
        if isinstance(value, str) and value:
            return value
    return ""


class Process:
    """The ASGI app a host serves for the process's life, and the broker behind it (or why there is none)."""

    def __init__(self, broker: Broker | None, error: ConfigError | None = None, *, exporter: Exporter = "none") -> None:
        self.error = error
        # Who sends this process's telemetry to Application Insights (broker.telemetry.configure_exporter).
        self.exporter = exporter
        self.broker = broker
        # The process-start warm-up (broker.warmup), when one was started.
        self.warming: asyncio.Task[dict[str, str]] | None = None
        self._app: BrokerApp | MisconfiguredApp
        if broker is not None and error is None:
            self._app = create_app(broker)
        elif broker is None and error is not None:
            self._app = MisconfiguredApp(error)
        else:
            raise ValueError("a Process has a broker or a configuration error, not both")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    def install(self, broker: Broker) -> None:
        """Serve ``broker`` from now on: for tests and benchmarks whose broker has injected parts (a clock).

        The replaced broker's warm-up, if it has not run yet, never will."""
        if self.warming is not None:
            self.warming.cancel()
            self.warming = None
        self.broker, self.error = broker, None
        self._app = create_app(broker)

    async def rotation_check(self, event: _Event) -> None:
        """The Event Grid trigger's work, for events in the Event Grid or the CloudEvents 1.0 schema."""
        kind = event_type(event)
        app = self._app
        if isinstance(app, MisconfiguredApp):
            log.error("rotation check skipped (%s): %s", kind or "unknown event", app.error.description)
            return
        await check_rotation_event(app.broker, event.get_json(), subject=event.subject or "", event_type=kind)


def start_functions(environ: Mapping[str, str] | None = None) -> Process:
    """The Functions entry point's process: never raises, so the app always indexes."""
    env = os.environ if environ is None else environ
    quiet_libraries()
    scrub_asgi_debug_messages()
    exporter = configure_exporter(env)
    try:
        settings = load_settings(env, functions_host=True)
    except ConfigError as error:
        log.error(
            "configuration error: %s. Every request answers 503 broker_misconfigured until the app setting "
            "is fixed and the app restarted.",
            error.description,
        )
        return Process(None, error, exporter=exporter)
    log_warnings(settings)
    broker = Broker(settings)
    process = Process(broker, exporter=exporter)
    # The worker imports function_app.py inside its running event loop (azure_functions_runtime's
    # async worker_init_request calls load_function_metadata, which imports it): the warm-up starts
    # there, with the process. Without a running loop (a plain import) there is nothing to start it on.
    process.warming = start_warm_up(broker)
    return process
