"""Proxy-mode fixtures: the stand-in data API beside the shared stand-ins, and the broker in proxy mode on a host.

``proxy`` is the broker (``BROKER_ILEVEL_MODE=proxy``, API root = the stand-in data API) on the
test's host, like the shared ``api`` fixture; ``rig.open(...)`` gives one with other settings or
injected parts. Every answer is checked for iLevel tokens, in headers and bodies alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from broker.runtime import Broker
from broker.standin.dataapi import DataApi
from broker.standin.serve import Served, run_server
from tests.conftest import Api, Servers, Stack, leaks, sensitive
from tests.hosts import open_host


@pytest.fixture(scope="session")
def data_api_server(servers: Servers) -> Iterator[Served[DataApi]]:
    app = DataApi(servers.tokens)
    with run_server(app) as server:
        app.public_url = server.url
        yield Served(app, server)


@pytest.fixture
def data_api(data_api_server: Served[DataApi]) -> DataApi:
    data_api_server.app.reset()
    return data_api_server.app


class ProxyApi(Api):
    """:class:`tests.conftest.Api`, plus: no iLevel token in any answer, whatever its status."""

    async def get(self, path: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        response = await super().get(path, token=token, **kwargs)
        for issued in self.stack.tokens.issued_tokens:
            sensitive(issued)
        text = response.text + " " + " ".join(f"{k}: {v}" for k, v in response.headers.multi_items())
        found = leaks(text)
        assert not found, f"the answer leaks {found}"
        return response


@dataclass
class Rig:
    """Builds brokers in proxy mode on the test's host."""

    stack: Stack
    data_api: DataApi
    host: str

    def proxy_settings(self, **changes: str) -> dict[str, str]:
        values = {"BROKER_ILEVEL_MODE": "proxy", "BROKER_ILEVEL_API_BASE_URL": self.data_api.base_url}
        values.update(changes)
        return values

    def broker(self, *, settings: dict[str, str] | None = None, **overrides: Any) -> Broker:
        return self.stack.broker(self.stack.settings(**self.proxy_settings(**(settings or {}))), **overrides)

    @contextlib.asynccontextmanager
    async def open(self, broker: Broker | None = None, **settings: str) -> AsyncIterator[ProxyApi]:
        """The broker (given, or built in proxy mode with these settings) on this test's host."""
        # The Functions host imports function_app, which reads the process environment, as in Azure.
        self.stack.export_environment()
        broker = broker or self.broker(settings=settings)
        try:
            async with open_host(self.host, broker) as client:
                yield ProxyApi(client, self.stack)
        finally:
            await broker.aclose()


@pytest.fixture
def rig(stack: Stack, data_api: DataApi, host: str) -> Rig:
    return Rig(stack, data_api, host)


@pytest.fixture
async def proxy(rig: Rig) -> AsyncIterator[ProxyApi]:
    async with rig.open() as api:
        yield api
