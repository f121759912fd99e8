"""The broker's ASGI application: the request's shape (:mod:`broker.http`) handed the route table."""

from __future__ import annotations

from broker.http import BrokerApp
from broker.routes import NOT_FOUND, ROUTES
from broker.runtime import Broker


def create_app(broker: Broker) -> BrokerApp:
    """The broker's ASGI application (no lifespan work: the caller owns ``broker`` and closes it)."""
    return BrokerApp(broker, ROUTES, fallback=NOT_FOUND)
