"""Azure Functions entry point. It only wires: the broker's ASGI app and the rotation check.

The HTTP surface is the same Starlette app that ``python -m broker serve`` runs under
uvicorn; host.json's routePrefix "api" and the app's /api/... routes agree, so the
token URL is https://<app>.azurewebsites.net/api/token/<provider>.
"""

from __future__ import annotations

import os

import azure.functions as func

from broker.config import load_settings, log_warnings
from broker.http import create_app
from broker.rotation import check_rotation_event
from broker.runtime import Broker
from broker.telemetry import configure_exporter

configure_exporter(os.environ)
settings = load_settings(os.environ)
log_warnings(settings)
broker = Broker(settings)

# Anonymous at the Functions layer: callers are authenticated in code (Entra tokens),
# optionally behind App Service Authentication. Function keys are not for production auth.
app = func.AsgiFunctionApp(app=create_app(broker), http_auth_level=func.AuthLevel.ANONYMOUS)


@app.function_name("rotation_check")
@app.event_grid_trigger(arg_name="event")
async def rotation_check(event: func.EventGridEvent) -> None:
    """Microsoft.KeyVault.SecretNewVersionCreated → verify the new version against the token endpoint."""
    await check_rotation_event(broker, event.get_json(), subject=event.subject, event_type=event.event_type)
