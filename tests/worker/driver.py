"""One Functions worker's life, driven through azure_functions_runtime's own event handlers.

The host's ``proxy_worker`` (not on PyPI) receives the host's gRPC messages and hands each to the
library worker, ``azure_functions_runtime`` (pinned in requirements.txt): ``worker_init_request``,
``functions_metadata_request``, ``function_load_request``, ``invocation_request``. This module plays
the proxy worker's part with the message double of :mod:`tests.worker.protos`:

1. worker init, with the app settings the deployment gives (:func:`deployed_settings`, read from
   infra/app/broker.bicep) in the environment; the runtime indexes function_app.py here, importing it
   from the function app directory (the repository root), as a new worker process does;
2. function metadata, then one load request per function id the metadata names;
3. invocations: HTTP requests as the host builds ``RpcHttp`` (raw body bytes, the capability the runtime
   announces), Event Grid events as the JSON the host passes, each with a W3C trace context. Each
   invocation runs as its own task on the caller's loop, so concurrent invocations share the loop as on
   the worker and the trace context the runtime attaches stays in that invocation's context.

A fresh worker needs no reset of the runtime's module globals: worker init re-indexes (``_metadata_result``
is reassigned) and ``_functions`` is keyed by ``uuid5(function name)``, so the new module's functions replace
the old ones. Only ``sys.modules["function_app"]`` goes, as in a new process. What cannot be reset in one
process is OpenTelemetry's global state: :func:`deployed_settings` can leave the Azure Monitor switch out for
the in-process host; tests/telemetry_child.py runs the exact deployed set in a process of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure_functions_runtime as runtime
import httpx
from azure_functions_runtime.utils import constants

from tests.infra.bicep_settings import app_settings
from tests.worker import protos

ROOT = Path(__file__).resolve().parents[2]
SCRIPT_FILE = ROOT / constants.PYTHON_SCRIPT_FILE_NAME_DEFAULT
HTTP_FUNCTION = "http_app_func"
ROTATION_FUNCTION = "rotation_check"
# What the host's front end serves the routes under (host.json extensions.http.routePrefix).
ROUTE_PREFIX = "/" + json.loads((ROOT / "host.json").read_text(encoding="utf-8"))["extensions"]["http"]["routePrefix"]
# The capabilities the host announces in WorkerInitRequest (none that changes this runtime's paths).
HOST_CAPABILITIES: dict[str, str] = {}


class WorkerRefused(RuntimeError):
    """The runtime answered a request with StatusResult.Failure."""


@dataclass
class Envelope:
    """What the proxy worker hands each handler: the host's message and ``properties``."""

    request: protos.StreamingMessage
    properties: dict[str, Any] = field(default_factory=lambda: {"host": "127.0.0.1", "protos": protos})


def deployed_settings(*, leave_out: tuple[str, ...] = ()) -> dict[str, str]:
    """The literal app settings infra/app/broker.bicep gives the Function App (values from resources are not
    literals: the tests supply their own, e.g. KEY_VAULT_URL from the stand-ins)."""
    return {s.name: s.literal for s in app_settings() if s.literal is not None and s.name not in leave_out}


def worker_settings() -> dict[str, str]:
    """The deployed settings for a worker in a process that hosts many workers (the tests) or exports nowhere.

    Left out: the Azure Monitor switch, which configures OpenTelemetry's process-global providers once per
    process (a second worker init in one process would add a second log handler) and needs an ingestion
    endpoint. In its place PYTHON_ENABLE_OPENTELEMETRY makes the worker attach each invocation's trace context,
    the per-invocation path the deployed settings also take. The exact deployed set runs in a process of its
    own: tests/worker/test_deployed_settings.py, tests/test_telemetry_export.py.
    """
    return {
        **deployed_settings(leave_out=(constants.PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY,)),
        constants.PYTHON_ENABLE_OPENTELEMETRY: constants.TRUE,
    }


def _check(kind: str, result: protos.StatusResult) -> None:
    if result.status != protos.StatusResult.Success:
        raise WorkerRefused(f"{kind}: {result.exception.message}")


def trace_parent() -> str:
    """A W3C traceparent as the host sends for one invocation (its request activity, sampled)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


class Worker:
    """azure_functions_runtime in this process, fed the host's messages."""

    def __init__(self, directory: Path = ROOT) -> None:
        self.directory = directory
        self.capabilities: dict[str, str] = {}
        self.functions: dict[str, protos.RpcFunctionMetadata] = {}
        self.invocations = 0
        # Every invocation the runtime refused (StatusResult.Failure), with its exception message.
        self.failures: list[str] = []

    @property
    def module(self) -> Any:
        """function_app as the runtime imported it."""
        return sys.modules["function_app"]

    async def start(self) -> None:
        """Worker init (which indexes function_app.py), function metadata, one load per function."""
        if str(self.directory) not in sys.path:
            sys.path.insert(0, str(self.directory))  # the proxy worker puts the app directory on sys.path
        init = protos.WorkerInitRequest(
            capabilities=HOST_CAPABILITIES,
            function_app_directory=str(self.directory),
            worker_directory=str(Path(runtime.__file__).parent),
        )
        answer = await runtime.worker_init_request(Envelope(protos.StreamingMessage(worker_init_request=init)))
        _check("worker init", answer.result)
        self.capabilities = dict(answer.capabilities)
        metadata = protos.FunctionsMetadataRequest(function_app_directory=str(self.directory))
        listed = await runtime.functions_metadata_request(
            Envelope(protos.StreamingMessage(functions_metadata_request=metadata))
        )
        _check("function metadata", listed.result)
        for function in listed.function_metadata_results or []:
            load = protos.FunctionLoadRequest(function_id=function.function_id, metadata=function)
            loaded = await runtime.function_load_request(Envelope(protos.StreamingMessage(function_load_request=load)))
            _check(f"load {function.name}", loaded.result)
            self.functions[function.name] = function

    async def invoke(
        self, name: str, input_data: list[protos.ParameterBinding], *, traceparent: str | None = None
    ) -> protos.InvocationResponse:
        """One InvocationRequest, as its own task (the caller's context is copied, never changed)."""
        request = protos.InvocationRequest(
            invocation_id=str(uuid.uuid4()),
            function_id=self.functions[name].function_id,
            input_data=input_data,
            trace_context=protos.RpcTraceContext(trace_parent=traceparent or trace_parent(), trace_state=""),
        )
        self.invocations += 1
        envelope = Envelope(protos.StreamingMessage(invocation_request=request))
        answer: protos.InvocationResponse = await asyncio.create_task(runtime.invocation_request(envelope))
        if answer.result.status != protos.StatusResult.Success:
            self.failures.append(f"{name}: {answer.result.exception.message}")
        return answer

    async def event_grid(self, event: Mapping[str, Any], *, traceparent: str | None = None) -> None:
        """One Event Grid event (either schema) to rotation_check; the host invokes once per event of a batch."""
        data = protos.TypedData(json=json.dumps(event))
        answer = await self.invoke(
            ROTATION_FUNCTION, [protos.ParameterBinding(name="event", data=data)], traceparent=traceparent
        )
        _check(ROTATION_FUNCTION, answer.result)

    async def http(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        traceparent: str | None = None,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """One HTTP invocation of http_app_func: status, headers (Set-Cookie from the cookies), body.

        A refused invocation answers 500 with no body, as the host does.
        """
        answer = await self.invoke(
            HTTP_FUNCTION,
            [protos.ParameterBinding(name="req", data=protos.TypedData(http=rpc_http(method, url, headers, body)))],
            traceparent=traceparent,
        )
        if answer.result.status != protos.StatusResult.Success:
            logging.getLogger(__name__).debug("invocation failed: %s", answer.result.exception.message)
            return 500, [], b""
        return http_response(answer.return_value)


def rpc_http(method: str, url: str, headers: Mapping[str, str], body: bytes) -> protos.RpcHttp:
    """The RpcHttp the host builds for a request (raw body bytes; route parameter ``route`` of /{*route})."""
    parts = urlsplit(url)
    route = parts.path.removeprefix(ROUTE_PREFIX).lstrip("/")
    return protos.RpcHttp(
        method=method,
        url=url,
        headers=dict(headers),
        query=dict(parse_qsl(parts.query, keep_blank_values=True)),
        params={"route": route} if route else {},
        body=protos.TypedData(bytes=body),
    )


def http_response(value: protos.TypedData) -> tuple[int, list[tuple[str, str]], bytes]:
    """The host's reading of the function's return value: RpcHttp (status as text, headers, cookies, body)."""
    if value.WhichOneof("data") != "http":
        raise WorkerRefused(f"http_app_func returned {value.WhichOneof('data')!r}, not an HTTP response")
    http = value.http
    headers = list(http.headers.items())
    for cookie in http.cookies:
        morsel = SimpleCookie({cookie.name: cookie.value})[cookie.name]
        if cookie.HasField("path"):
            morsel["path"] = cookie.path.value
        if cookie.HasField("domain"):
            morsel["domain"] = cookie.domain.value
        headers.append(("set-cookie", morsel.OutputString()))
    kind = http.body.WhichOneof("data")
    body = http.body.bytes if kind == "bytes" else http.body.string.encode() if kind == "string" else b""
    return int(http.status_code or 200), headers, body


class FunctionsTransport(httpx.AsyncBaseTransport):
    """httpx request → RpcHttp → the runtime's invocation_request → InvocationResponse → httpx response."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    @property
    def invocations(self) -> int:
        return self.worker.invocations

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        return await self.send_raw(request.method, str(request.url), request.headers.multi_items(), body, request)

    async def send_raw(
        self,
        method: str,
        url: str,
        header_items: list[tuple[str, str]],
        body: bytes = b"",
        request: httpx.Request | None = None,
    ) -> httpx.Response:
        """An invocation for ``url`` exactly as written (dot segments included), as the host passes it on."""
        headers: dict[str, str] = {}
        for key, value in header_items:
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        status, answer_headers, content = await self.worker.http(method, url, headers, body)
        return httpx.Response(
            status_code=status,
            # The host sends header values as (UTF-8) strings; httpx would encode them as ASCII.
            headers=[(k, v.encode("utf-8")) for k, v in answer_headers],
            content=content,
            request=request,
        )
