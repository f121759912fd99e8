"""``/api/token/{provider}``: the token ADF reads, with its query parameters and its access line.

Every answer but a cached token (``hit``) writes an access line; a hit is counted on
``broker.token.requests`` (with the caller) and timed on ``broker.token.duration`` only: exporting a
log record to Application Insights costs several times the whole hit (bench/README.md, issue 24).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from broker.cache import Served
from broker.caller_auth import LOCAL_DEVELOPER
from broker.config import PROVIDER_NAME
from broker.errors import BrokerError, InvalidRequest
from broker.http import Access, Route
from broker.runtime import Broker
from broker.tokens import Token

MAX_QUERY_BYTES = 4 * 1024
# ADF's Web activity max: min_validity is honoured up to an hour.
MAX_MIN_VALIDITY_S = 3600
DEFAULT_MIN_VALIDITY_S = 300
# "code" is the Functions key, should anyone switch key auth on.
QUERY_PARAMETERS = frozenset({"min_validity", "force_refresh", "code"})
STALE_HEADER = "X-Broker-Token-Stale"
# A force_refresh that was rate-limited still gets 200 and the cached token; this says so, and when.
FORCE_HEADER = "X-Broker-Force-Refresh"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


def token_body(token: Token, now: float) -> dict[str, Any]:
    """The 200 body: what ADF reads as ``@activity('…').output.<field>``."""
    return {
        "access_token": token.access_token.reveal(),
        "token_type": "Bearer",
        "expires_in": max(0, int(token.remaining(now))),
        "expires_on": int(token.expires_at),
    }


def token_origin(served: Served) -> str:
    """The access line's ``origin``: this instance's cache, the fleet cache, or this instance's token request."""
    if served.outcome in ("hit", "stale"):
        return "instance"
    return served.token.origin


def _query(request: Request) -> tuple[int, bool]:
    raw = request.scope.get("query_string", b"")
    if not raw:
        return DEFAULT_MIN_VALIDITY_S, False
    if len(raw) > MAX_QUERY_BYTES:
        raise InvalidRequest("The query string is over 4 KiB.")
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("The query string is malformed.") from None
    seen: dict[str, str] = {}
    for key, value in pairs:
        if key.lower() == "code":
            continue  # the Functions key, in any case, as the Functions host reads it
        if key not in QUERY_PARAMETERS:
            named = repr(key) if _SAFE_NAME.fullmatch(key) else "a parameter"
            raise InvalidRequest(f"Unknown query parameter {named}; allowed: min_validity, force_refresh.")
        if key in seen:
            raise InvalidRequest(f"Query parameter {key!r} is given twice.")
        seen[key] = value
    min_validity = seen.get("min_validity", str(DEFAULT_MIN_VALIDITY_S))
    if not re.fullmatch(r"[0-9]{1,5}", min_validity) or int(min_validity) > MAX_MIN_VALIDITY_S:
        raise InvalidRequest("min_validity must be a whole number of seconds from 0 to 3600.")
    force = seen.get("force_refresh", "false").lower()
    if force not in ("true", "1", "false", "0"):
        raise InvalidRequest("force_refresh must be true, 1, false or 0.")
    return int(min_validity), force in ("true", "1")


async def token(broker: Broker, request: Request, access: Access, match: re.Match[str]) -> Response:
    """``/api/token/{provider}``: 400 parameters → 400 name → 404 provider → 403 → the token."""
    min_validity, force = _query(request)
    name = match.group("provider")
    if not PROVIDER_NAME.fullmatch(name):
        raise InvalidRequest("A provider name is 1 to 32 characters of a-z, 0-9 and '-'.")
    access.provider = name
    served = await broker.token(access.caller or LOCAL_DEVELOPER, name, min_validity=min_validity, force=force)
    now = broker.clock()
    access.outcome = served.outcome
    access.fields["origin"] = token_origin(served)
    access.fields["token"] = served.token.access_token.fingerprint()
    broker.telemetry.token_served(name, served, now, access.caller_ids())
    response: Response = JSONResponse(token_body(served.token, now))
    if served.stale_reason is not None:
        response.headers[STALE_HEADER] = served.stale_reason.code
    if served.force_refused_retry_after is not None:
        response.headers[FORCE_HEADER] = f"refused; retry-after={served.force_refused_retry_after}"
    return response


def _token_observed(broker: Broker, access: Access, error: BrokerError | None) -> None:
    if access.provider == "-":
        return  # refused before a provider was named: the access line (and caller_auth.failures) say so
    if error is not None:
        broker.telemetry.token_failed(access.provider, error, access.caller_ids())
    broker.telemetry.token_answered(access.provider, access.outcome, access.elapsed_s())


TOKEN = Route(
    kind="request",
    path=re.compile(r"^/api/token/(?P<provider>[^/]*)/?$"),
    methods=("GET", "POST"),
    handler=token,
    # origin: where the token came from (instance, fleet, fetch; "-" for none), see token_origin.
    line=(("outcome", "-"), ("origin", "-"), ("token", "-")),
    observe=_token_observed,
    # A cached token is counted and timed on metrics (_token_observed), not logged: see the module's docstring.
    unlogged=frozenset({"hit"}),
)
