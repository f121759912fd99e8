"""``make run``: the broker on an embedded default, with no Azure and no iLevel.

STAND-IN for local development only; never used in production. Two stand-ins run
beside the real broker: a sample OAuth2 token endpoint playing iLevel, and an
Entra-style metadata/JWKS server that signs a caller token. Secrets come from the
environment (no KEY_VAULT_URL), exactly as documented for local development. The
broker itself is the production app (create_app + Broker) under uvicorn.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys

import uvicorn

from broker.config import load_settings, local_secret_variable, log_warnings
from broker.http import create_app
from broker.runtime import Broker
from broker.standin.entra import EntraStandin
from broker.standin.oauth import TOKEN_PATH, TokenServer
from broker.standin.serve import run_server

AUDIENCE = "api://ilevel-token-broker"
ROLE = "Token.Read.ilevel"
CALLER_TOKEN_LIFETIME_S = 8 * 3600


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the broker against local stand-ins (no Azure needed).")
    parser.add_argument("--port", type=int, default=7071)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    ilevel = TokenServer()
    entra = EntraStandin()
    ilevel_server = run_server(ilevel)
    entra_server = run_server(entra)
    entra.authority = entra_server.url

    client_id, client_secret = secrets.token_urlsafe(16), secrets.token_urlsafe(32)
    ilevel.accept(client_id, client_secret)
    os.environ.update(
        {
            local_secret_variable("ilevel-client-id"): client_id,
            local_secret_variable("ilevel-client-secret"): client_secret,
            "AZURE_AUTHORITY_HOST": entra_server.url,
            "BROKER_TENANT_ID": entra.tenant_id,
            "BROKER_AUDIENCE": AUDIENCE,
            "BROKER_PROVIDERS": "ilevel",
            "BROKER_ILEVEL_TOKEN_URL": ilevel_server.url + TOKEN_PATH,
            "BROKER_ILEVEL_ALLOWED_ROLES": ROLE,
        }
    )
    os.environ.pop("KEY_VAULT_URL", None)
    settings = load_settings(os.environ)
    log_warnings(settings)
    caller = entra.mint(entra.tenant_id, aud=AUDIENCE, roles=[ROLE], expires_in=CALLER_TOKEN_LIFETIME_S)

    base = f"http://127.0.0.1:{args.port}"
    print(
        "\n"
        "iLevel token broker: local run on an embedded default\n"
        f"  STAND-IN iLevel token endpoint (sample OAuth2 server): {ilevel_server.url}{TOKEN_PATH}\n"
        f"  STAND-IN Entra ID metadata and signing keys:          {entra_server.url}/{entra.tenant_id}/\n"
        "  Secrets: from the environment (no KEY_VAULT_URL), generated for this run\n"
        f"  Caller token: a stand-in Entra token with role {ROLE}, valid {CALLER_TOKEN_LIFETIME_S // 3600} h\n"
        "\nTry it:\n"
        f"  curl -s {base}/api/health\n"
        f"  curl -s -H 'Authorization: Bearer {caller}' '{base}/api/token/ilevel'\n",
        flush=True,
    )
    try:
        uvicorn.run(create_app(Broker(settings)), host="127.0.0.1", port=args.port, log_config=None, access_log=False)
    finally:
        ilevel_server.stop()
        entra_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
