"""The route table: each route in a room of its own, listed here in the order they are tried.

The shape (:mod:`broker.http`) runs whichever route matches; it does not import this table, it is
handed it (:func:`broker.app.create_app`). A new route is a module here with its handler and its
:class:`~broker.http.Route`, plus a line in :data:`ROUTES`.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from broker.caller_auth import ANY_CALLER
from broker.errors import NotFound
from broker.http import Access, Route
from broker.routes.diagnostics import DIAGNOSTICS
from broker.routes.health import HEALTH
from broker.routes.proxy import PROXY
from broker.routes.token import TOKEN
from broker.runtime import Broker


async def not_found(broker: Broker, request: Request, access: Access, match: re.Match[str]) -> Response:
    """Any other path, once the caller is authenticated: a 404 that says where tokens are."""
    raise NotFound("No such endpoint; tokens are at /api/token/<provider>.")


ROUTES: tuple[Route, ...] = (HEALTH, TOKEN, PROXY, DIAGNOSTICS)
# Anything else: authenticated first (so an unauthenticated caller learns nothing), then 404.
NOT_FOUND = Route(
    kind="request",
    path=re.compile(""),
    methods=(),
    handler=not_found,
    accepts=ANY_CALLER,
    line=(("outcome", "-"), ("origin", "-"), ("token", "-")),
)
