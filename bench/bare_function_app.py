"""The cold-start baseline: a bare one-route Azure Functions app with a trivial response."""

from __future__ import annotations

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="health", methods=["GET"])
async def health(req: func.HttpRequest) -> func.HttpResponse:
    """Answer 200 with a constant JSON body."""
    return func.HttpResponse('{"status": "ok"}', status_code=200, mimetype="application/json")
