"""docs/callers.md's Python example reads a whole collection through the proxy (python -m broker serve's host)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from azure.core.credentials import AccessToken

from broker.standin.dataapi import DataApi, asset
from tests.conftest import AUDIENCE, Stack
from tests.proxy.conftest import Rig

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "read_through_proxy.py"


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("read_through_proxy", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CallerCredential:
    """A TokenCredential handing out the test's Entra caller token, as a managed identity would."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes += scopes
        return AccessToken(self.token, 2**31)


@pytest.mark.parametrize("host", ["serve"])
async def test_the_python_example_pages_through_the_proxy(rig: Rig, stack: Stack, data_api: DataApi) -> None:
    """iter_pages follows links.next through the broker: every asset once, the broker's scope asked for."""
    module = example()
    credential = CallerCredential(stack.caller())
    scope = f"{AUDIENCE}/.default"
    async with rig.open() as api:
        base = str(api.client.base_url)

        def read() -> list[Any]:
            with httpx.Client(timeout=30) as client:
                pages = module.iter_pages(base, scope, "entities/assets?page%5Bsize%5D=10", credential, client=client)
                return [item for page in pages for item in page["data"]]

        items = await asyncio.to_thread(read)
    assert items == [asset(n) for n in range(1, data_api.assets + 1)]
    assert set(credential.scopes) == {scope}


@pytest.mark.parametrize("host", ["serve"])
async def test_the_python_example_says_whose_error_it_is(rig: Rig, stack: Stack) -> None:
    """A broker refusal names the broker's code; the API's own error says it came from the API."""
    module = example()
    credential = CallerCredential(stack.caller(roles=()))
    async with rig.open() as api:
        base = str(api.client.base_url)

        def first_page() -> None:
            with httpx.Client(timeout=30) as client:
                next(module.iter_pages(base, f"{AUDIENCE}/.default", "entities/assets", credential, client=client))

        with pytest.raises(module.ProxyError) as caught:
            await asyncio.to_thread(first_page)
    assert caught.value.status == 403
    assert caught.value.broker_error == "insufficient_scope"


def test_the_python_example_follows_only_links_under_the_brokers_proxy_root() -> None:
    """A next link on the API's own host (or anywhere else) is refused, so the Entra token goes nowhere else."""
    module = example()
    root = "https://func-broker.azurewebsites.net/api/proxy/ilevel/"
    assert module.under_root("https://FUNC-broker.azurewebsites.net:443/api/proxy/ilevel/entities?p=2", root)
    for url in (
        "https://api.ilevelsolutions.com/v1/entities?p=2",
        "https://func-broker.azurewebsites.net/api/token/ilevel",
        "http://func-broker.azurewebsites.net/api/proxy/ilevel/x",
        "https://func-broker.azurewebsites.net.evil.example/api/proxy/ilevel/x",
    ):
        assert not module.under_root(url, root), url

    class OneHostilePage(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json={"data": [], "links": {"next": "https://api.ilevelsolutions.com/v1/x"}})

    pages = module.iter_pages(
        "https://func-broker.azurewebsites.net",
        "scope",
        "entities",
        CallerCredential("entra-token"),
        client=httpx.Client(transport=OneHostilePage()),
    )
    assert next(pages) == {"data": [], "links": {"next": "https://api.ilevelsolutions.com/v1/x"}}
    with pytest.raises(module.UnsafeLink):
        next(pages)
