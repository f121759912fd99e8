"""STAND-IN for local development and tests; never used in production.

Entra ID's OpenID Connect metadata (v1 and v2) and signing keys (JWKS) for one or more tenants,
plus a minter of Entra-shaped app access tokens, including deliberately bad ones
(``alg=none``, HS256 keyed with the public key, unknown signing key) for rejection tests.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

Alg = Literal["RS256", "HS256", "none"]
TokenVersion = Literal["1.0", "2.0"]
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
_MULTI_TENANT = ("common", "organizations")
_AUTH_METHODS = ("client_secret_post", "private_key_jwt", "client_secret_basic")


@dataclass(frozen=True)
class SigningKey:
    """An RSA signing key with its self-signed certificate; ``kid`` equals ``x5t`` as in Entra."""

    kid: str
    private_key: rsa.RSAPrivateKey
    cert_der: bytes

    @classmethod
    def generate(cls) -> SigningKey:
        """Make a fresh RSA 2048 key and a self-signed certificate for it."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accounts.standin.invalid")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .sign(key, hashes.SHA256())
        )
        der = cert.public_bytes(serialization.Encoding.DER)
        return cls(_b64url(hashlib.sha1(der).digest()), key, der)  # noqa: S324 - x5t is defined as SHA-1

    @property
    def public_pem(self) -> bytes:
        """The public key as PEM (SubjectPublicKeyInfo), e.g. as the HMAC key of a confusion attack."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict[str, object]:
        """The public JWK as Entra publishes it."""
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": _b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
            "x5c": [base64.b64encode(self.cert_der).decode()],
            "alg": "RS256",
        }


class EntraStandin:
    """ASGI app: OpenID metadata and JWKS for some tenants, and a token minter using the same keys."""

    def __init__(self, *, tenants: Iterable[str] | None = None, authority: str = DEFAULT_AUTHORITY) -> None:
        self.tenants: list[str] = list(tenants) if tenants is not None else [str(uuid.uuid4())]
        self.authority = authority.rstrip("/")  # set to the running server's url after start
        self.keys: list[SigningKey] = [SigningKey.generate()]
        self.jwks_fetches = 0
        self.metadata_fetches = 0
        self.fail_jwks = False
        self._app = Starlette(
            routes=[
                Route("/{tenant}/v2.0/.well-known/openid-configuration", self._metadata_v2),
                Route("/{tenant}/.well-known/openid-configuration", self._metadata_v1),
                Route("/{tenant}/discovery/v2.0/keys", self._jwks),
                Route("/{tenant}/discovery/keys", self._jwks),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    # --- keys -----------------------------------------------------------------------------
    @property
    def tenant_id(self) -> str:
        """The first (default) tenant."""
        return self.tenants[0]

    @property
    def current_key(self) -> SigningKey:
        """The key new tokens are signed with."""
        return self.keys[-1]

    def rotate(self) -> SigningKey:
        """Publish a new signing key (new kid) and sign with it from now on; old keys stay published."""
        key = SigningKey.generate()
        self.keys = [*self.keys, key]
        return key

    def drop_old_keys(self) -> None:
        """Stop publishing every key but the current one."""
        self.keys = [self.current_key]

    def jwks(self) -> dict[str, object]:
        """The published key set."""
        return {"keys": [key.jwk() for key in self.keys]}

    def issuer(self, tenant: str, version: TokenVersion) -> str:
        """The ``iss`` of a token (and of the metadata) for this tenant and token version."""
        if version == "1.0":
            return f"https://sts.windows.net/{tenant}/"
        return f"{self.authority}/{tenant}/v2.0"

    # --- minting --------------------------------------------------------------------------
    def mint(
        self,
        tenant: str,
        *,
        aud: str,
        version: TokenVersion = "1.0",
        oid: str | None = None,
        appid: str | None = None,
        roles: Sequence[str] = (),
        expires_in: int = 3600,
        not_before_offset: int = 0,
        alg: Alg = "RS256",
        kid: str | None = None,
        sign_with_unknown_key: bool = False,
        extra_claims: Mapping[str, object] | None = None,
        issuer: str | None = None,
        now: float | None = None,
    ) -> str:
        """Mint an Entra-shaped app access token. ``extra_claims`` values of ``None`` delete that claim."""
        issued_at = int(time.time() if now is None else now)
        object_id = oid or str(uuid.uuid4())
        claims: dict[str, object] = {
            "aud": aud,
            "iss": issuer or self.issuer(tenant, version),
            "iat": issued_at,
            "nbf": issued_at + not_before_offset,
            "exp": issued_at + expires_in,
            "idtyp": "app",
            "oid": object_id,
            "sub": object_id,
            "tid": tenant,
            "uti": _b64url(uuid.uuid4().bytes),
            "ver": version,
        }
        app_id = appid or str(uuid.uuid4())
        if version == "1.0":
            claims.update({"appid": app_id, "appidacr": "2", "idp": f"https://sts.windows.net/{tenant}/"})
        else:
            claims.update({"azp": app_id, "azpacr": "2"})
        if roles:
            claims["roles"] = list(roles)
        for name, value in (extra_claims or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return self._sign(claims, alg=alg, kid=kid or self.current_key.kid, unknown_key=sign_with_unknown_key)

    def _sign(self, claims: dict[str, object], *, alg: Alg, kid: str, unknown_key: bool) -> str:
        header: dict[str, object] = {"typ": "JWT", "alg": alg, "kid": kid}
        if alg == "RS256":
            header["x5t"] = kid
            key = SigningKey.generate() if unknown_key else self._key(kid)
            return jwt.encode(claims, key.private_key, algorithm="RS256", headers=header)
        signing_input = f"{_b64url(_json(header))}.{_b64url(_json(claims))}"
        if alg == "none":
            return signing_input + "."
        # Key confusion: HMAC keyed with the public key PEM that verifiers can download.
        # PyJWT refuses PEM-looking HMAC keys, so sign by hand.
        mac = hmac.new(self._key(kid).public_pem, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64url(mac)}"

    def _key(self, kid: str) -> SigningKey:
        for key in self.keys:
            if key.kid == kid:
                return key
        return self.current_key

    # --- HTTP -----------------------------------------------------------------------------
    def _known(self, tenant: str) -> bool:
        return tenant in self.tenants or tenant in _MULTI_TENANT

    async def _metadata_v2(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        if not self._known(tenant):
            return _tenant_not_found(tenant)
        self.metadata_fetches += 1
        issuer_tenant = "{tenantid}" if tenant in _MULTI_TENANT else tenant
        return JSONResponse(
            {
                "issuer": f"{self.authority}/{issuer_tenant}/v2.0",
                "jwks_uri": f"{self.authority}/{tenant}/discovery/v2.0/keys",
                "token_endpoint": f"{self.authority}/{tenant}/oauth2/v2.0/token",
                "authorization_endpoint": f"{self.authority}/{tenant}/oauth2/v2.0/authorize",
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "subject_types_supported": ["pairwise"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "tenant_region_scope": "EU",
            }
        )

    async def _metadata_v1(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        if not self._known(tenant):
            return _tenant_not_found(tenant)
        self.metadata_fetches += 1
        issuer_tenant = "{tenantid}" if tenant in _MULTI_TENANT else tenant
        return JSONResponse(
            {
                "issuer": f"https://sts.windows.net/{issuer_tenant}/",
                "jwks_uri": f"{self.authority}/common/discovery/keys",
                "token_endpoint": f"{self.authority}/{tenant}/oauth2/token",
                "authorization_endpoint": f"{self.authority}/{tenant}/oauth2/authorize",
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
                "subject_types_supported": ["pairwise"],
            }
        )

    async def _jwks(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        if not self._known(tenant):
            return _tenant_not_found(tenant)
        self.jwks_fetches += 1
        if self.fail_jwks:
            return JSONResponse({"error": "temporarily_unavailable"}, status_code=500)
        return JSONResponse(self.jwks())


def _tenant_not_found(tenant: str) -> Response:
    return JSONResponse(
        {
            "error": "invalid_tenant",
            "error_description": f"AADSTS90002: Tenant '{tenant}' not found. (stand-in)",
        },
        status_code=400,
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json(value: Mapping[str, object]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
