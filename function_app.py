"""Azure Functions entry point. It only wires: the broker's ASGI app and the rotation check.

The HTTP surface is the same ASGI app that ``python -m broker serve`` runs under uvicorn;
host.json's routePrefix "api" and the app's /api/... routes agree, so the token URL is
https://<app>.azurewebsites.net/api/token/<provider>. The broker lives as long as the
worker process (:mod:`broker.startup`); an invalid configuration still indexes and
answers 503 ``broker_misconfigured``.
"""

from __future__ import annotations

import azure.functions as func

from broker.startup import start_functions

process = start_functions()

# Anonymous at the Functions layer: callers are authenticated in code (Entra tokens),
# optionally behind App Service Authentication. Function keys are not for production auth.
app = func.AsgiFunctionApp(app=process, http_auth_level=func.AuthLevel.ANONYMOUS)


@app.function_name("rotation_check")
@app.event_grid_trigger(arg_name="event")
async def rotation_check(event: func.EventGridEvent) -> None:
    """Microsoft.KeyVault.SecretNewVersionCreated → verify the new version against the token endpoint.

    The worker passes a func.CloudEvent instead when the subscription uses the CloudEvents 1.0 schema.
    """
    await process.rotation_check(event)
