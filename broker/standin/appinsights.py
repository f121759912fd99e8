"""STAND-IN for local development and tests; never used in production.

Application Insights' ingestion endpoint, as the Azure Monitor OpenTelemetry exporter calls it:
``POST {IngestionEndpoint}/v2.1/track`` with a JSON array of envelopes (gzip or not), answered
with ``itemsReceived``/``itemsAccepted``. Everything else (live metrics pings) answers 200 empty.
Point a connection string at it with :meth:`Ingestion.connection_string`; read what arrived, by
telemetry type, with :meth:`Ingestion.of_type`.
"""

from __future__ import annotations

import gzip
import json
import threading
from typing import Any

from starlette.types import Receive, Scope, Send

# The instrumentation key is not a secret; Application Insights only routes by it.
INSTRUMENTATION_KEY = "00000000-0000-4000-8000-000000000000"


class Ingestion:
    """An ASGI app that keeps every envelope posted to ``/v2.1/track``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.envelopes: list[dict[str, Any]] = []

    def connection_string(self, url: str) -> str:
        """A connection string whose ingestion and live endpoints are this stand-in at ``url``."""
        return f"InstrumentationKey={INSTRUMENTATION_KEY};IngestionEndpoint={url}/;LiveEndpoint={url}/"

    def of_type(self, base_type: str) -> list[dict[str, Any]]:
        """Envelopes whose ``data.baseType`` is ``base_type`` (MessageData, RemoteDependencyData, MetricData ...)."""
        with self._lock:
            return [e for e in self.envelopes if e.get("data", {}).get("baseType") == base_type]

    def clear(self) -> None:
        with self._lock:
            self.envelopes.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer = b""
        if scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/v2.1/track"):
            headers = dict(scope["headers"])
            if headers.get(b"content-encoding") == b"gzip":
                body = gzip.decompress(body)
            items = json.loads(body)
            items = items if isinstance(items, list) else [items]
            with self._lock:
                self.envelopes.extend(items)
            answer = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})
