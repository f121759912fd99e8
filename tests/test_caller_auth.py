"""Caller authentication and authorization: Entra tokens checked in code; failures are 401/403, no detail leaks."""

from __future__ import annotations

import time
import uuid

import pytest

from broker.caller_auth import APPLICATIONS_ONLY, Accepts, Caller, CallerAuthenticator, SigningKeys
from broker.errors import InsufficientScope, InvalidCallerToken
from broker.runtime import Broker
from tests.conftest import AUDIENCE, ROLE, Api, Stack
from tests.hosts import open_host


def bad_tokens(stack: Stack) -> dict[str, str]:
    entra, tenant = stack.entra, stack.entra.tenant_id
    valid = stack.caller()
    header, payload, signature = valid.split(".")
    return {
        "malformed": "not-a-jwt",
        "tampered payload": f"{header}.{payload[:-4]}AAAA.{signature}",
        "wrong signature": entra.mint(tenant, aud=AUDIENCE, roles=[ROLE], sign_with_unknown_key=True),
        "alg none": entra.mint(tenant, aud=AUDIENCE, roles=[ROLE], alg="none"),
        "alg HS256 (key confusion)": entra.mint(tenant, aud=AUDIENCE, roles=[ROLE], alg="HS256"),
        "wrong audience": entra.mint(tenant, aud="api://someone-else", roles=[ROLE]),
        "wrong issuer": entra.mint(tenant, aud=AUDIENCE, roles=[ROLE], issuer="https://sts.windows.net/evil/"),
        "other tenant's issuer": entra.mint(
            tenant, aud=AUDIENCE, roles=[ROLE], issuer=f"https://sts.windows.net/{uuid.uuid4()}/"
        ),
        "expired beyond leeway": entra.mint(tenant, aud=AUDIENCE, roles=[ROLE], now=time.time() - 7200),
        "not yet valid": entra.mint(tenant, aud=AUDIENCE, roles=[ROLE], not_before_offset=600),
        "unknown kid": entra.mint(tenant, aud=AUDIENCE, roles=[ROLE], kid="unknown-kid"),
        "no exp": entra.mint(tenant, aud=AUDIENCE, roles=[ROLE], extra_claims={"exp": None}),
        # Neither scp nor idtyp: only oid == sub marks an app-only token.
        "oid differs from sub": entra.mint(
            tenant, aud=AUDIENCE, roles=[ROLE], extra_claims={"idtyp": None, "sub": str(uuid.uuid4())}
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "malformed",
        "tampered payload",
        "wrong signature",
        "alg none",
        "alg HS256 (key confusion)",
        "wrong audience",
        "wrong issuer",
        "other tenant's issuer",
        "expired beyond leeway",
        "not yet valid",
        "unknown kid",
        "no exp",
        "oid differs from sub",
    ],
)
async def test_each_invalid_caller_token_gets_401_and_no_upstream_call(api: Api, stack: Stack, case: str) -> None:
    """Bad caller tokens are refused with 401 invalid_token and a Bearer challenge, before anything upstream."""
    token = bad_tokens(stack)[case]
    response = await api.get("/api/token/ilevel", token=token)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert response.headers["www-authenticate"].startswith("Bearer ")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert AUDIENCE not in response.text
    assert stack.entra.tenant_id not in response.text
    assert stack.tokens.request_count == 0
    assert sum(stack.kv.reads.values()) == 0


async def test_a_request_without_a_token_gets_401_whatever_its_path_or_parameters(api: Api, stack: Stack) -> None:
    """Authentication comes first: unknown paths, bad parameters and unknown providers all look alike."""
    for path in ("/api/token/ilevel", "/api/token/nope?min_validity=-1", "/api/token/BAD!", "/api/other", "/"):
        response = await api.get(path)
        assert response.status_code == 401, path
        assert response.json()["error"] == "invalid_token"


@pytest.mark.parametrize("version", ["1.0", "2.0"])
async def test_v1_and_v2_tokens_from_the_tenant_are_accepted(api: Api, stack: Stack, version: str) -> None:
    """Entra signs v1 (sts.windows.net issuer, appid) and v2 (authority/v2.0 issuer, azp) tokens with one key set."""
    response = await api.get("/api/token/ilevel", token=stack.caller(version=version))
    assert response.status_code == 200


async def test_a_token_expired_within_the_leeway_is_accepted(api: Api, stack: Stack) -> None:
    """exp has 60 s of leeway for clock skew."""
    token = stack.caller(now=time.time() - 3630)
    assert (await api.get("/api/token/ilevel", token=token)).status_code == 200


async def test_a_valid_caller_without_the_role_gets_403(api: Api, stack: Stack) -> None:
    """Authenticated but not allowed for the provider: 403 insufficient_scope, nothing fetched."""
    response = await api.get("/api/token/ilevel", token=stack.caller(roles=()))
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert stack.tokens.request_count == 0


@pytest.mark.parametrize("claim", ["oid", "appid"])
async def test_callers_can_be_allowed_by_object_id_or_application_id(stack: Stack, claim: str) -> None:
    """BROKER_<NAME>_ALLOWED_CALLERS matches the oid, or the appid/azp, of the caller."""
    identity = str(uuid.uuid4())
    broker = stack.broker(stack.settings(BROKER_ILEVEL_ALLOWED_CALLERS=identity, BROKER_ILEVEL_ALLOWED_ROLES=""))
    token = stack.caller(roles=(), **{claim: identity})
    caller = await broker.authenticate(f"Bearer {token}")
    served = await broker.token(caller, "ilevel", min_validity=300, force=False)
    assert served.token.access_token.reveal()
    await broker.aclose()


async def test_the_provider_path_is_validated_after_authentication(api: Api, stack: Stack) -> None:
    """A valid caller learns 400 for a malformed provider name and 404 for an unknown one."""
    token = stack.caller()
    assert (await api.get("/api/token/Not_Valid", token=token)).status_code == 400
    unknown = await api.get("/api/token/other", token=token)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_provider")


async def test_a_new_signing_key_is_picked_up_on_its_first_token(api: Api, stack: Stack) -> None:
    """After Entra publishes a new key, a token signed with it triggers one refresh of the key set."""
    stack.entra.rotate()
    try:
        before = stack.entra.jwks_fetches
        response = await api.get("/api/token/ilevel", token=stack.caller())
        assert response.status_code == 200
        assert stack.entra.jwks_fetches - before <= 2
    finally:
        stack.entra.drop_old_keys()


class Ticking:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def authenticator(
    broker: Broker, stack: Stack, *, keys_clock: Ticking | None = None, clock: Ticking | None = None
) -> CallerAuthenticator:
    """A caller authenticator on the Entra stand-in with clocks the test moves."""
    keys = SigningKeys(
        broker.http, authority=stack.entra.authority, tenant=stack.entra.tenant_id, clock=keys_clock or time.monotonic
    )
    return CallerAuthenticator(broker.settings, keys, clock=clock or time.time)


async def test_unknown_kids_refresh_the_keys_at_most_once_a_minute(stack: Stack) -> None:
    """A stream of tokens with unknown kids causes one key refresh per minute, not one per token."""
    broker = stack.broker()
    clock = Ticking()
    auth = authenticator(broker, stack, keys_clock=clock)
    await auth.authenticate(f"Bearer {stack.caller()}")
    loads = stack.entra.jwks_fetches
    for _ in range(20):
        token = stack.entra.mint(stack.entra.tenant_id, aud=AUDIENCE, kid=str(uuid.uuid4()))
        with pytest.raises(InvalidCallerToken):
            await auth.authenticate(f"Bearer {token}")
        clock.now += 1
    assert stack.entra.jwks_fetches - loads == 0, "within a minute of the first load: no refresh"
    clock.now += 60
    with pytest.raises(InvalidCallerToken):
        await auth.authenticate(f"Bearer {stack.entra.mint(stack.entra.tenant_id, aud=AUDIENCE, kid='x')}")
    assert stack.entra.jwks_fetches - loads == 1
    await broker.aclose()


async def test_a_failed_key_refresh_keeps_the_last_known_good_keys(stack: Stack) -> None:
    """When the JWKS endpoint fails during a refresh, tokens signed with known keys still pass."""
    broker = stack.broker()
    clock = Ticking()
    auth = authenticator(broker, stack, keys_clock=clock)
    await auth.authenticate(f"Bearer {stack.caller()}")
    stack.entra.fail_jwks = True
    clock.now += 120
    with pytest.raises(InvalidCallerToken):
        await auth.authenticate(f"Bearer {stack.entra.mint(stack.entra.tenant_id, aud=AUDIENCE, kid='new')}")
    caller = await auth.authenticate(f"Bearer {stack.caller()}")
    assert caller.roles == {ROLE}
    await broker.aclose()


async def test_an_unreachable_authority_is_a_503_not_a_401(api: Api, stack: Stack) -> None:
    """If the signing keys were never loaded and Entra's metadata fails, the caller is told to retry."""
    stack.entra.fail_jwks = True
    response = await api.get("/api/token/ilevel", token=stack.caller())
    assert response.status_code == 503
    assert response.json()["error"] == "authority_unavailable"
    assert "retry-after" in response.headers


async def test_an_identical_verified_token_is_not_verified_again_but_still_expires(stack: Stack) -> None:
    """The verified-token cache answers repeat tokens, and stops honouring them after exp plus leeway."""
    broker = stack.broker()
    clock = Ticking()
    clock.now = time.time()
    auth = authenticator(broker, stack, clock=clock)
    token = stack.caller(expires_in=120)
    first = await auth.authenticate(f"Bearer {token}")
    assert await auth.authenticate(f"Bearer {token}") is first
    clock.now += 120 + 61
    with pytest.raises(InvalidCallerToken):
        await auth.authenticate(f"Bearer {token}")
    await broker.aclose()


async def test_a_remembered_token_is_refused_once_its_signing_key_leaves_the_key_set(stack: Stack) -> None:
    """The verified-token cache honours key rotation: a token signed by a key Entra dropped is refused."""
    broker = stack.broker()
    keys_clock = Ticking()
    auth = authenticator(broker, stack, keys_clock=keys_clock)
    old = stack.caller()
    await auth.authenticate(f"Bearer {old}")
    stack.entra.rotate()
    try:
        stack.entra.drop_old_keys()
        keys_clock.now += 61
        # A token with the new kid makes the broker reload the key set, which no longer holds the old key.
        await auth.authenticate(f"Bearer {stack.caller()}")
        with pytest.raises(InvalidCallerToken) as refused:
            await auth.authenticate(f"Bearer {old}")
        assert refused.value.reason == "unknown_key"
    finally:
        await broker.aclose()


def hostile_claims() -> dict[str, dict[str, object]]:
    return {
        "exp 10**400": {"exp": 10**400},
        "exp NaN": {"exp": float("nan")},
        "exp Infinity": {"exp": float("inf")},
        "exp a fraction": {"exp": time.time() + 3600.5},
        "exp a string": {"exp": str(int(time.time()) + 3600)},
        "exp true": {"exp": True},
        "nbf NaN": {"nbf": float("nan")},
        "nbf -Infinity": {"nbf": float("-inf")},
        "nbf 10**400": {"nbf": 10**400},
        "oid with a newline": {"oid": f"{uuid.uuid4()}\nrequest id=forged outcome=hit"},
        "oid not a GUID": {"oid": "local-developer"},
        "no oid": {"oid": None},
        "appid not a GUID": {"appid": "app id with spaces"},
        "no appid or azp": {"appid": None},
        "tid common": {"tid": "common"},
        "no tid": {"tid": None},
    }


@pytest.mark.parametrize("case", list(hostile_claims()))
async def test_signed_but_malformed_claims_are_401_never_500_and_never_logged(
    api: Api, stack: Stack, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Timestamps must be finite whole seconds and oid/appid/azp/tid GUIDs; anything else is 401 invalid_token."""
    token = stack.caller(extra_claims=hostile_claims()[case])
    response = await api.get("/api/token/ilevel", token=token)
    assert (response.status_code, response.json()["error"]) == (401, "invalid_token")
    assert stack.tokens.request_count == 0
    assert not any("forged" in record.getMessage() for record in caplog.records)


async def test_a_v2_token_with_a_non_guid_azp_is_refused(api: Api, stack: Stack) -> None:
    """v2 tokens name the application in azp, which must be a GUID too."""
    token = stack.caller(version="2.0", extra_claims={"azp": "not-a-guid"})
    response = await api.get("/api/token/ilevel", token=token)
    assert response.status_code == 401


async def test_the_403_names_the_app_role_and_the_caller_as_seen(api: Api, stack: Stack) -> None:
    """A caller without the role learns the role to ask for and the oid/appid the broker saw, to pass on."""
    oid, appid = str(uuid.uuid4()), str(uuid.uuid4())
    response = await api.get("/api/token/ilevel", token=stack.caller(roles=(), oid=oid, appid=appid))
    assert response.status_code == 403
    description = response.json()["error_description"]
    assert ROLE in description and oid in description and appid in description
    assert "operator" in description


# --- application tokens only on the token and proxy routes ----------------------------------------


def delegated_claims() -> dict[str, dict[str, object]]:
    """Delegated (user) tokens as Entra writes them, and the edge cases around ``idtyp``."""
    return {
        "v1 user token with scp": {"scp": "user_impersonation", "idtyp": None},
        "scp and idtyp user": {"scp": "Diagnostics.Run", "idtyp": "user"},
        "idtyp user without scp": {"idtyp": "user"},
        "scp beside idtyp app": {"scp": "user_impersonation"},
        "empty scp": {"scp": ""},
        "idtyp device": {"idtyp": "device"},
        "neither scp nor idtyp, oid differs from sub": {"idtyp": None, "sub": "a-user-pairwise-subject"},
    }


@pytest.mark.parametrize("case", list(delegated_claims()))
async def test_a_delegated_token_gets_401_on_the_token_route_even_when_its_appid_is_allowed(
    stack: Stack, host: str, case: str
) -> None:
    """Only application (managed identity) tokens get tokens: scp, or an idtyp other than app, is 401."""
    appid = str(uuid.uuid4())
    broker = stack.broker(stack.settings(BROKER_ILEVEL_ALLOWED_CALLERS=appid))
    token = stack.caller(appid=appid, extra_claims=delegated_claims()[case])
    async with open_host(host, broker) as client:
        response = await Api(client, stack).get("/api/token/ilevel", token=token)
    assert (response.status_code, response.json()["error"]) == (401, "invalid_token")
    assert "requires an application token" in response.json()["error_description"]
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert stack.tokens.request_count == 0
    await broker.aclose()


@pytest.mark.parametrize(
    "case", ["v1 user token with scp", "idtyp user without scp", "neither scp nor idtyp, oid differs from sub"]
)
async def test_a_delegated_token_gets_401_on_the_proxy_route_before_anything_upstream(
    stack: Stack, host: str, case: str
) -> None:
    """The proxy route takes application tokens only, too; nothing is fetched or forwarded."""
    settings = stack.settings(BROKER_ILEVEL_MODE="both", BROKER_ILEVEL_API_BASE_URL="http://127.0.0.1:9/v1/")
    broker = stack.broker(settings)
    token = stack.caller(extra_claims=delegated_claims()[case])
    async with open_host(host, broker) as client:
        response = await Api(client, stack).get("/api/proxy/ilevel/entities/assets", token=token)
    assert (response.status_code, response.json()["error"]) == (401, "invalid_token")
    assert response.headers["x-broker-error"] == "invalid_token"
    assert "requires an application token" in response.json()["error_description"]
    assert stack.tokens.request_count == 0
    await broker.aclose()


async def test_an_application_token_with_idtyp_app_and_one_without_idtyp_are_accepted(api: Api, stack: Stack) -> None:
    """v1 managed-identity tokens may lack idtyp (then their oid equals their sub); with it, it says app."""
    for claims in ({"idtyp": "app"}, {"idtyp": None}):
        response = await api.get("/api/token/ilevel", token=stack.caller(extra_claims=claims))
        assert response.status_code == 200


async def test_the_caller_records_its_kind_and_delegated_scopes(broker: Broker, stack: Stack) -> None:
    """What a route's Accepts decides on: application or user, and the scp scopes."""
    app = await broker.authenticate(f"Bearer {stack.caller()}")
    user = await broker.authenticate(
        f"Bearer {stack.caller(extra_claims={'scp': 'Diagnostics.Run other', 'idtyp': 'user'})}"
    )
    assert (app.kind, app.scopes) == ("application", frozenset())
    assert (user.kind, user.scopes) == ("user", {"Diagnostics.Run", "other"})


def test_a_route_can_take_users_with_a_scope_and_a_role() -> None:
    """E.g. diagnostics: users need the delegated scope; every caller needs the app role; else 403."""
    accepts = Accepts(applications=True, users=True, scope="Diagnostics.Run", role="Broker.Operator")
    operator = frozenset({"Broker.Operator"})
    user = Caller(
        oid=None, app_id=None, roles=operator, expires_at=0, kind="user", scopes=frozenset({"Diagnostics.Run"})
    )
    accepts.admit(user)
    accepts.admit(Caller(oid=None, app_id=None, roles=operator, expires_at=0))
    with pytest.raises(InsufficientScope):
        accepts.admit(Caller(oid=None, app_id=None, roles=operator, expires_at=0, kind="user"))
    with pytest.raises(InsufficientScope):
        accepts.admit(Caller(oid=None, app_id=None, roles=frozenset(), expires_at=0, kind="user", scopes=user.scopes))
    with pytest.raises(InvalidCallerToken):
        APPLICATIONS_ONLY.admit(user)
    with pytest.raises(InvalidCallerToken):
        Accepts(applications=False, users=True).admit(Caller(oid=None, app_id=None, roles=operator, expires_at=0))
