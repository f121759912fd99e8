"""The stand-ins speak the real protocols: real clients work against them and see real failures."""

from __future__ import annotations

import secrets
import ssl
import time
from urllib.parse import quote_plus

import httpx
import jwt
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.keyvault.secrets import SecretClient

from broker.standin.entra import Alg, EntraStandin, TokenVersion
from broker.standin.faults import Reply
from broker.standin.identity import ManagedIdentityServer
from broker.standin.keyvault import KeyVaultServer
from broker.standin.oauth import TokenServer, Variant
from broker.standin.serve import Served, blackhole_listener, closed_port, run_server
from broker.standin.tls import PKIFiles

GRANT = {"grant_type": "client_credentials"}


def _client(vault: Served[KeyVaultServer], identity: Served[ManagedIdentityServer], ca: str) -> SecretClient:
    credential = ManagedIdentityCredential(client_id=identity.app.client_id)
    return SecretClient(vault.url, credential, verify_challenge_resource=False, connection_verify=ca, retry_total=0)


def test_key_vault_standin_answers_the_real_client_after_a_challenge(
    key_vault: Served[KeyVaultServer], identity: Served[ManagedIdentityServer], pki: PKIFiles
) -> None:
    """The real SecretClient is challenged, fetches a managed-identity token, then reads latest and old versions."""
    old = key_vault.app.set_secret("client-secret", secrets.token_urlsafe())
    new = key_vault.app.set_secret("client-secret", "new-value")
    client = _client(key_vault, identity, pki.ca)

    latest = client.get_secret("client-secret")
    versions = {p.version for p in client.list_properties_of_secret_versions("client-secret")}
    by_version = client.get_secret("client-secret", old)

    assert (latest.value, latest.properties.version) == ("new-value", new)
    assert versions == {old, new}
    assert by_version.properties.version == old
    first = key_vault.app.requests[0]
    assert (first.path, first.authenticated, first.status) == ("/secrets/client-secret/", False, 401)
    assert identity.app.requests[0].params["resource"] == "https://vault.azure.net"
    assert identity.app.requests[0].params["client_id"] == identity.app.client_id
    assert key_vault.app.reads["client-secret"] == 2
    assert key_vault.app.list_calls["client-secret"] == 1


def test_key_vault_standin_fails_like_azure(
    key_vault: Served[KeyVaultServer], identity: Served[ManagedIdentityServer], pki: PKIFiles
) -> None:
    """Disabled, missing, RBAC-denied and throttled reads raise the SDK's exceptions with Azure's codes."""
    version = key_vault.app.set_secret("client-secret", secrets.token_urlsafe())
    key_vault.app.set_enabled("client-secret", version, False)
    client = _client(key_vault, identity, pki.ca)

    with pytest.raises(HttpResponseError) as disabled:
        client.get_secret("client-secret")
    with pytest.raises(ResourceNotFoundError):
        client.get_secret("missing")
    key_vault.app.forbid()
    with pytest.raises(HttpResponseError) as denied:
        client.get_secret("client-secret")
    key_vault.app.allow()
    key_vault.app.script(Reply(status=429, json={"error": {"code": "Throttled"}}, headers={"Retry-After": "1"}))
    with pytest.raises(HttpResponseError) as throttled:
        client.get_secret("client-secret")

    assert disabled.value.status_code == 403
    assert disabled.value.error is not None
    assert disabled.value.error.innererror["code"] == "SecretDisabled"
    assert denied.value.status_code == 403
    assert denied.value.error is not None
    assert denied.value.error.innererror["code"] == "ForbiddenByRbac"
    assert throttled.value.status_code == 429


def test_identity_standin_serves_default_azure_credential(
    identity: Served[ManagedIdentityServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DefaultAzureCredential finds the App Service endpoint through the environment and gets an issued token."""
    for name in ("AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USERNAME"):
        monkeypatch.delenv(name, raising=False)

    token = DefaultAzureCredential().get_token("https://vault.azure.net/.default")

    assert token.token in identity.app.issued_tokens


@pytest.mark.parametrize(
    ("variants", "accepted_styles"),
    [({"basic_raw"}, {"raw"}), ({"basic_form"}, {"form"}), ({"post"}, {"post"})],
)
def test_token_server_accepts_only_the_configured_client_auth_variant(
    token_server: Served[TokenServer], variants: set[Variant], accepted_styles: set[str]
) -> None:
    """Credentials with special characters authenticate only in the style the server is set to accept."""
    client_id, secret = "MTIzOmFAYi5jb20=", secrets.token_urlsafe() + "+/: ="
    token_server.app.variants = variants
    token_server.app.accept(client_id, secret)
    url = f"{token_server.url}/oauth/token"

    statuses = {
        "raw": httpx.post(url, data=GRANT, auth=(client_id, secret)).status_code,
        "form": httpx.post(url, data=GRANT, auth=(quote_plus(client_id), quote_plus(secret))).status_code,
        "post": httpx.post(url, data={**GRANT, "client_id": client_id, "client_secret": secret}).status_code,
    }

    assert {style for style, status in statuses.items() if status == 200} == accepted_styles
    assert {status for style, status in statuses.items() if style not in accepted_styles} == {401}


def test_token_server_rejects_malformed_requests_and_replays_faults(token_server: Served[TokenServer]) -> None:
    """Malformed requests get RFC 6749 errors, and scripted replies answer one request each, in order."""
    client_id, secret = secrets.token_urlsafe(), secrets.token_urlsafe()
    token_server.app.accept(client_id, secret)
    url = f"{token_server.url}/oauth/token"

    as_json = httpx.post(url, json=GRANT, auth=(client_id, secret))
    wrong_grant = httpx.post(url, data={"grant_type": "password"}, auth=(client_id, secret))
    both = httpx.post(url, data={**GRANT, "client_id": client_id}, auth=(client_id, secret))
    token_server.app.script(Reply(status=503, body=b"down"), Reply(status=200, json={"error": "server_error"}))
    scripted = [httpx.post(url, data=GRANT, auth=(client_id, secret)) for _ in range(3)]

    assert (as_json.status_code, as_json.json()["error"]) == (400, "invalid_request")
    assert (wrong_grant.status_code, wrong_grant.json()["error"]) == (400, "unsupported_grant_type")
    assert (both.status_code, both.json()["error"]) == (400, "invalid_request")
    assert [r.status_code for r in scripted] == [503, 200, 200]
    assert token_server.app.decode(scripted[2].json()["access_token"])["client_id"] == client_id
    assert [r.outcome for r in token_server.app.requests][-3:] == ["scripted", "scripted", "issued"]


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_entra_minted_token_verifies_against_served_metadata(
    entra: Served[EntraStandin], version: TokenVersion
) -> None:
    """A minted token verifies with PyJWT using the JWKS named by the served OpenID metadata."""
    tenant = entra.app.tenant_id
    path = "v2.0/.well-known/openid-configuration" if version == "2.0" else ".well-known/openid-configuration"
    metadata = httpx.get(f"{entra.url}/{tenant}/{path}").json()
    token = entra.app.mint(tenant, aud="api://broker", version=version, roles=["Token.Read"])

    key = jwt.PyJWKClient(metadata["jwks_uri"]).get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key, algorithms=["RS256"], audience="api://broker", issuer=metadata["issuer"])

    assert (claims["tid"], claims["ver"], claims["roles"]) == (tenant, version, ["Token.Read"])


@pytest.mark.parametrize(("alg", "unknown_key"), [("none", False), ("HS256", False), ("RS256", True)])
def test_entra_forged_tokens_fail_verification(entra: Served[EntraStandin], alg: Alg, unknown_key: bool) -> None:
    """Tokens signed with no key, the public key as HMAC secret, or an unpublished key do not verify."""
    token = entra.app.mint(entra.app.tenant_id, aud="api://broker", alg=alg, sign_with_unknown_key=unknown_key)
    key = jwt.PyJWKClient(f"{entra.url}/common/discovery/keys").get_signing_key_from_jwt(token)

    with pytest.raises(jwt.InvalidTokenError):
        jwt.decode(token, key, algorithms=["RS256"], audience="api://broker")


def test_network_failure_helpers_time_out_refuse_and_fail_tls(
    key_vault: Served[KeyVaultServer], untrusted_ca: str
) -> None:
    """The blackhole hangs connects, the closed port refuses them, and an unrelated CA fails TLS verification."""
    with blackhole_listener() as (host, port), pytest.raises(httpx.ConnectTimeout):
        httpx.get(f"http://{host}:{port}/", timeout=0.5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{closed_port()}/", timeout=2)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{key_vault.url}/secrets/x/", verify=ssl.create_default_context(cafile=untrusted_ca), timeout=2)


def test_a_stand_in_with_an_idle_tls_keep_alive_connection_stops_at_once(pki: PKIFiles) -> None:
    """A pooled client never answers close_notify: stopping aborts its connection instead of waiting it out."""
    server = run_server(KeyVaultServer(accepted_tokens=set()), certfile=pki.cert, keyfile=pki.key)
    with httpx.Client(verify=ssl.create_default_context(cafile=pki.ca)) as client:
        assert client.get(f"{server.url}/secrets/x?api-version=7.5").status_code == 401
        started = time.monotonic()
        server.stop()
        stopped_in = time.monotonic() - started
    assert stopped_in < 3, f"the stand-in took {stopped_in:.1f} s to stop"
