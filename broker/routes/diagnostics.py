"""``/api/diagnostics[/{provider}]``: check's steps inside the app (:mod:`broker.diagnostics`), for operators."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from broker.caller_auth import Accepts
from broker.diagnostics import Diagnostics
from broker.errors import UnknownProvider
from broker.http import Access, Route
from broker.runtime import Broker

# The diagnostics verdict for a HEAD (or a monitor that reads no body): ok or failed.
DIAGNOSTICS_HEADER = "X-Broker-Diagnostics"
# Who may run diagnostics: a user (delegated token) with the Diagnostics.Run scope through a client in
# BROKER_DIAGNOSTICS_CLIENT_IDS, or an application; either way holding the app role Broker.Operator.
OPERATORS = Accepts(
    applications=True, users=True, scope="Diagnostics.Run", role="Broker.Operator", users_via_diagnostics_clients=True
)


async def diagnostics(broker: Broker, request: Request, access: Access, match: re.Match[str]) -> Response:
    """``/api/diagnostics[/{provider}]``: 404 provider → check's steps inside the app (:mod:`broker.diagnostics`).

    200 whatever the verdict: the report is the answer. At most one run per provider per minute reaches
    Key Vault and the token endpoint; in between, the last report with its age.
    """
    name = match.group("provider")
    runner = Diagnostics.of(broker)
    body: dict[str, Any]
    if name:
        if name not in broker.providers:
            # The caller holds Broker.Operator: it may learn which providers there are (check --remote names them).
            raise UnknownProvider(
                f"This broker has no provider {name[:32]!r}; it serves {', '.join(broker.providers)}.",
                providers=tuple(runner.providers),
            )
        access.provider = name
        report = await runner.report(name)
        body, ok = report.as_dict(), report.ok
        access.fields["age_s"] = f"{report.age_s or 0:.0f}"
    else:
        body = await runner.summary()
        ok = body["ok"] is True
    access.outcome = "ok" if ok else "failed"
    response = JSONResponse(body)
    response.headers[DIAGNOSTICS_HEADER] = access.outcome
    return response


DIAGNOSTICS = Route(
    kind="diagnostics",
    path=re.compile(r"^/api/diagnostics(?:/(?P<provider>[^/]*))?/?$"),
    methods=("GET", "HEAD"),
    handler=diagnostics,
    accepts=OPERATORS,
    line=(("outcome", "-"), ("age_s", "-")),
)
