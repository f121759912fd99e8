"""Caller authentication: Entra ID access tokens (v1 and v2) from managed identities.

Signature (RS256 only) against the tenant's signing keys, ``aud`` in BROKER_AUDIENCE,
issuer from the tenant's own v1 and v2 metadata documents, ``exp``/``nbf`` with 60 s
leeway. The caller is an application (a managed identity or service principal: no ``scp``, and
``idtyp`` is ``app``, or without ``idtyp`` its ``oid`` equals its ``sub``) or otherwise a user (a
delegated token); each route says which kinds it accepts (:class:`Accepts`). Then per-provider authorization by ``oid``,
``appid``/``azp`` or ``roles``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import jwt

from broker.config import ProviderConfig, Setting, Settings
from broker.errors import AuthorityUnavailable, InsufficientScope, InvalidCallerToken

log = logging.getLogger(__name__)

LEEWAY_S = 60
# After the first load, signing keys are refetched for an unknown kid at most this often.
KEY_REFRESH_INTERVAL_S = 60.0
# When the metadata has never loaded, a failing authority is retried at most this often.
METADATA_RETRY_S = 10.0
# Verified tokens are remembered by SHA-256 so an identical token is not re-verified
# (RS256 verification costs ~150 µs). Bounded; each entry still honours its exp.
VERIFIED_CACHE_SIZE = 4096
MAX_TOKEN_BYTES = 16 * 1024
# The app roles the deployment defines are named Token.Read.<provider>.
ROLE_PREFIX = "Token.Read."
# exp/nbf are NumericDates; Entra writes whole seconds. Anything past year 9999 is not a date.
MAX_TIMESTAMP = 253_402_300_799
# Entra object, application and tenant ids are GUIDs; nothing else may reach a log line.
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


CallerKind = Literal["application", "user"]

# What a person sees when a caller signed a user in. The usual cause is a connection set to
# "Organizational account" (Fabric, Power Automate) or a notebook's own token; docs/callers.md has
# each caller's recipe. It names no claim: only what the caller chose, never what its token holds.
USER_TOKEN_REFUSED = (
    "The caller token is a delegated (user) token: the caller signed a user in, e.g. a connection set to "
    '"Organizational account" (Fabric, Power Automate) or a notebook\'s own token (notebookutils). This route '
    "requires an application token: authenticate with a managed identity or a service principal that holds the "
    "broker's Token.Read app role. docs/callers.md has the settings for each caller."
)


@dataclass(frozen=True)
class Caller:
    """Who is calling, as far as authorization cares.

    ``kind`` is ``user`` for a delegated token (one with ``scp``, or an ``idtyp`` other than
    ``app``) and ``application`` otherwise; ``scopes`` are the delegated scopes (``scp``).
    """

    oid: str | None
    app_id: str | None
    roles: frozenset[str]
    expires_at: float
    kind: CallerKind = "application"
    scopes: frozenset[str] = frozenset()
    # The token's client (appid/azp) is one of BROKER_DIAGNOSTICS_CLIENT_IDS (the Azure CLI by default).
    diagnostics_client: bool = False

    def allowed(self, provider: ProviderConfig) -> bool:
        ids = {i for i in (self.oid, self.app_id) if i}
        return bool(ids & provider.allowed_callers) or bool(self.roles & provider.allowed_roles)


LOCAL_DEVELOPER = Caller(oid="local-developer", app_id=None, roles=frozenset(), expires_at=float("inf"))


@dataclass(frozen=True)
class Accepts:
    """Which authenticated callers a route takes, checked right after authentication.

    ``applications``: application tokens (managed identities). ``users``: delegated tokens, and
    only those whose ``scp`` holds ``scope`` when one is named. ``role``: an app role every caller
    must hold (``roles``), e.g. ``Broker.Operator``. A caller of a kind the route does not take
    gets 401 ``invalid_token``; one without the scope or role gets 403 ``insufficient_scope``.
    """

    applications: bool = True
    users: bool = False
    scope: str | None = None
    role: str | None = None
    # Users only through a client in BROKER_DIAGNOSTICS_CLIENT_IDS: a delegated token is not tied to the
    # client the user consented to, so any app the user signed in to could otherwise act as them here.
    users_via_diagnostics_clients: bool = False

    def admit(self, caller: Caller) -> None:
        if caller.kind == "user" and not self.users:
            raise InvalidCallerToken(USER_TOKEN_REFUSED, reason="not_application")
        if caller.kind == "application" and not self.applications:
            raise InvalidCallerToken(
                "The caller token is an application token; this route requires a signed-in user's (delegated) token.",
                reason="not_user",
            )
        if caller.kind == "user" and self.scope is not None and self.scope not in caller.scopes:
            raise InsufficientScope(
                f"The caller's token lacks the delegated scope {self.scope!r}; sign in again asking for "
                f"<App ID URI>/{self.scope}."
            )
        if caller.kind == "user" and self.users_via_diagnostics_clients and not caller.diagnostics_client:
            raise InsufficientScope(
                f"The caller's delegated token was issued to the client application {caller.app_id or 'none'}, "
                "which may not run the diagnostics for a user: sign in with the Azure CLI (az login), or ask the "
                f"broker's operator to add that client's id to {Setting.DIAGNOSTICS_CLIENT_IDS}."
            )
        if self.role is not None and self.role not in caller.roles:
            raise InsufficientScope(
                f"This caller (object id (oid) {caller.oid or 'none'}) lacks the app role {self.role!r}; ask the "
                "broker's operator to assign it on the broker's app registration (it can take up to 24 h to "
                "reach a managed identity's tokens)."
            )


APPLICATIONS_ONLY = Accepts()
ANY_CALLER = Accepts(applications=True, users=True)


def authorize(caller: Caller, provider: ProviderConfig, *, auth_disabled: bool) -> None:
    if auth_disabled or caller.allowed(provider):
        return
    # Names exactly what the operator can grant, and who the broker saw: oid and appid are
    # validated GUIDs (see _guid_claim), so echoing them cannot forge anything.
    roles = " or ".join(sorted(provider.allowed_roles)) or f"{ROLE_PREFIX}{provider.name}"
    seen = f"object id (oid) {caller.oid or 'none'}, application id (appid/azp) {caller.app_id or 'none'}"
    raise InsufficientScope(
        f"This caller ({seen}) is not allowed tokens for provider {provider.name!r}. Ask the broker's operator "
        f"to assign this identity the app role {roles} on the broker's app registration, or to allow its "
        "object id for this provider. A new role assignment can take up to 24 h to reach a managed "
        "identity's tokens."
    )


class SigningKeys:
    """The tenant's issuers and signing keys, loaded lazily, refreshed sparingly, never emptied by a failure."""

    def __init__(
        self,
        http: Callable[[], httpx.AsyncClient],
        *,
        authority: str,
        tenant: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._v2_url = f"{authority}/{tenant}/v2.0/.well-known/openid-configuration"
        self._v1_url = f"{authority}/{tenant}/.well-known/openid-configuration"
        self._clock = clock
        self._jwks_uri: str | None = None
        self.issuers: frozenset[str] = frozenset()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._loaded_at = float("-inf")
        self._failed_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK | None:
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            if kid not in self._keys and self._may_refresh():
                await self._refresh()
        return self._keys.get(kid)

    def knows(self, kid: str) -> bool:
        """Whether ``kid`` is among the keys loaded now (a key dropped at rotation is not)."""
        return kid in self._keys

    async def ensure_loaded(self) -> None:
        if self._jwks_uri is not None:
            return
        async with self._lock:
            if self._jwks_uri is None:
                if self._clock() - self._failed_at < METADATA_RETRY_S:
                    raise self._unavailable()
                await self._refresh()

    async def warm(self) -> None:
        """Load the metadata and keys ahead of the first caller (process start). A failure here is
        neither logged nor remembered: the first caller then loads them itself, as without a warm-up."""
        async with self._lock:
            if self._jwks_uri is None:
                await self._refresh(warming=True)

    def _may_refresh(self) -> bool:
        return self._clock() - max(self._loaded_at, self._failed_at) >= KEY_REFRESH_INTERVAL_S

    async def _refresh(self, *, warming: bool = False) -> None:
        try:
            if self._jwks_uri is None:
                # Both issuers are needed (v1 and v2 tokens); the two documents are independent trips.
                v2, v1 = await asyncio.gather(self._get_json(self._v2_url), self._get_json(self._v1_url))
                issuers = {v2.get("issuer"), v1.get("issuer")}
                if not all(isinstance(i, str) and i for i in issuers) or not isinstance(v2.get("jwks_uri"), str):
                    raise ValueError("metadata lacks issuer or jwks_uri")
                jwks = await self._get_json(v2["jwks_uri"])
                self.issuers = frozenset(str(i) for i in issuers)
                self._jwks_uri = v2["jwks_uri"]
            else:
                jwks = await self._get_json(self._jwks_uri)
            keys = jwt.PyJWKSet.from_dict(jwks).keys
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            if warming:
                raise
            self._failed_at = self._clock()
            if self._jwks_uri is None:
                log.error("caller-auth: cannot load the tenant's signing keys from %s: %s", self._v2_url, exc)
                raise self._unavailable() from exc
            log.warning("caller-auth: signing-key refresh failed (%s); keeping the %d known keys", exc, len(self._keys))
            return
        self._keys = {k.key_id: k for k in keys if k.key_id}
        self._loaded_at = self._clock()
        log.info("caller-auth: loaded %d signing keys", len(self._keys))

    async def _get_json(self, url: str) -> dict[str, Any]:
        response = await self._http().get(url, timeout=10.0)
        response.raise_for_status()
        payload = response.json()
        if not isinstance(payload, dict):
            raise ValueError(f"{url} did not return a JSON object")
        return payload

    def _unavailable(self) -> AuthorityUnavailable:
        return AuthorityUnavailable(
            "The broker cannot load Entra ID signing keys to check the caller's token; "
            f"check {Setting.AZURE_AUTHORITY_HOST} and {Setting.TENANT_ID}, or retry later.",
            retry_after=METADATA_RETRY_S,
        )


class CallerAuthenticator:
    """Validates bearer tokens; remembers verified ones until they expire.

    The memory holds, per SHA-256 of a token (never the token), the validated :class:`Caller` and the
    ``kid`` that signed it: an entry ends at the token's ``exp`` (plus leeway), or as soon as that key is
    no longer among the tenant's signing keys (rotation). ``nbf`` was checked when it was verified and
    only recedes. At most :data:`VERIFIED_CACHE_SIZE` entries, oldest dropped first.
    """

    def __init__(
        self,
        settings: Settings,
        keys: SigningKeys,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._audiences = list(settings.audiences)
        self._diagnostics_clients = settings.diagnostics_client_ids
        self._keys = keys
        self._clock = clock
        self._verified: OrderedDict[bytes, tuple[Caller, str]] = OrderedDict()

    async def warm(self) -> None:
        """Load the tenant's metadata and signing keys now, ahead of any caller (see :meth:`SigningKeys.warm`)."""
        await self._keys.warm()

    async def authenticate(self, authorization: str | None) -> Caller:
        token = _bearer(authorization)
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        cached = self._remembered(digest, now)
        if cached is not None:
            return cached
        kid = _signing_kid(token)
        await self._keys.ensure_loaded()
        # A burst of identical tokens all waited for the keys: the first one verified is enough.
        cached = self._remembered(digest, now)
        if cached is not None:
            return cached
        caller = await self._verify(token, kid, now)
        # _verify refused a token without a known kid, so kid is set here.
        self._verified[digest] = (caller, kid or "")
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return caller

    def _remembered(self, digest: bytes, now: float) -> Caller | None:
        entry = self._verified.get(digest)
        if entry is None:
            return None
        caller, kid = entry
        if now >= caller.expires_at + LEEWAY_S or not self._keys.knows(kid):
            del self._verified[digest]
            return None
        return caller

    async def _verify(self, token: str, kid: str | None, now: float) -> Caller:
        key = await self._keys.key(kid) if kid is not None else None
        if key is None:
            raise _invalid("unknown_key", "the token is not signed by a key of the configured tenant")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=self._audiences,
                issuer=self._keys.issuers,
                # exp/nbf are checked below against the injected clock.
                options={
                    "require": ["exp", "iss", "aud"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise _invalid(
                "audience", "the token's audience is not accepted (check the resource the caller asks for)"
            ) from None
        except jwt.InvalidIssuerError:
            raise _invalid("issuer", "the token was not issued by the configured tenant") from None
        except jwt.InvalidSignatureError:
            raise _invalid("signature", "the token's signature is invalid") from None
        except jwt.PyJWTError:
            raise _invalid("invalid", "the token could not be validated") from None
        exp = _timestamp(claims, "exp")
        nbf = _timestamp(claims, "nbf") if "nbf" in claims else None
        if now > exp + LEEWAY_S:
            raise _invalid("expired", "the token has expired")
        if nbf is not None and now < nbf - LEEWAY_S:
            raise _invalid("not_yet_valid", "the token is not yet valid")
        _guid_claim(claims, "tid", required=True)
        app_id = _guid_claim(claims, "appid") or _guid_claim(claims, "azp")
        if app_id is None:
            raise _invalid("claims", "the token names no application (appid or azp)")
        roles = claims.get("roles")
        scopes = claims.get("scp")
        oid = _guid_claim(claims, "oid", required=True)
        return Caller(
            oid=oid,
            app_id=app_id,
            roles=frozenset(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else frozenset(),
            expires_at=float(exp),
            kind="application" if _application(claims, oid) else "user",
            scopes=frozenset(scopes.split()) if isinstance(scopes, str) else frozenset(),
            diagnostics_client=app_id.lower() in self._diagnostics_clients,
        )


def _application(claims: dict[str, Any], oid: str | None) -> bool:
    """Whether the token is app-only. ``scp`` means delegated; else ``idtyp`` decides (``app``), which
    Entra writes only as an optional claim (the hook asks for it: ``optionalClaims.accessToken``);
    without either, the token is app-only only when ``oid == sub``, the app-only signal Microsoft's
    guidance for protected web APIs gives ("Protected web API: verify scopes and app roles",
    learn.microsoft.com/entra/identity-platform/scenario-protected-web-api-verification-scope-app-roles,
    as cited in issue 22 on 2026-12-06). Anything else is not taken for an application."""
    if "scp" in claims:
        return False
    if "idtyp" in claims:
        return bool(claims["idtyp"] == "app")
    return oid is not None and claims.get("sub") == oid


def _signing_kid(token: str) -> str | None:
    """Checks that need no keys: a JWT, RS256. Returns its kid."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _invalid("malformed", "the token is not a well-formed JWT") from None
    if header.get("alg") != "RS256":
        raise _invalid("alg", "the token is not signed with RS256")
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None


def _timestamp(claims: dict[str, Any], name: str) -> int:
    """A NumericDate as Entra writes it: a whole number of seconds. NaN, Infinity, 1e400, 10**400 are not."""
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIMESTAMP:
        raise _invalid("claims", f"the token's {name} is not a whole number of seconds since 1970")
    return value


def _guid_claim(claims: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    """An id claim that Entra always writes as a GUID; anything else is refused, absent only if optional."""
    value = claims.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not GUID.fullmatch(value):
        raise _invalid("claims", f"the token's {name} is {'missing' if value is None else 'not a GUID'}")
    return value


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise _invalid("missing", "no bearer token was sent (Authorization: Bearer <Entra ID access token>)")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _invalid("malformed", "the Authorization header is not 'Bearer <token>'")
    if len(token) > MAX_TOKEN_BYTES:
        raise _invalid("malformed", "the token is too large")
    return token


def _invalid(reason: str, explanation: str) -> InvalidCallerToken:
    return InvalidCallerToken(f"The caller token is missing or invalid: {explanation}.", reason=reason)
