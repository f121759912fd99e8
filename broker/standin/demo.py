"""``make run``: the broker on an embedded default, with no Azure and no iLevel.

STAND-IN for local development only; never used in production. Two stand-ins run
beside the real broker: a sample OAuth2 token endpoint playing iLevel, and an
Entra-style metadata/JWKS server that signs a caller token. Secrets come from the
environment (no KEY_VAULT_URL), exactly as documented for local development. The
broker itself is the production app under the same uvicorn configuration as
``python -m broker serve`` (broker.serving). The port is bound first, so a busy port is
one line and nothing else; the banner prints once the broker is listening.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import secrets
import socket
import sys

import uvicorn

from broker.app import create_app
from broker.config import (
    DEFAULT_FLEET_KEY_SECRET,
    Setting,
    load_settings,
    local_secret_variable,
    log_warnings,
    provider_setting,
)
from broker.runtime import Broker
from broker.serving import BrokerServer, server_config
from broker.standin.dataapi import DataApi
from broker.standin.entra import EntraStandin
from broker.standin.oauth import TOKEN_PATH, TokenServer
from broker.standin.serve import run_server
from broker.startup import quiet_libraries

AUDIENCE = "api://ilevel-token-broker"
ROLE = "Token.Read.ilevel"
CALLER_TOKEN_LIFETIME_S = 8 * 3600


def listen_socket(port: int) -> socket.socket:
    """Bind 127.0.0.1:port now, so a busy port is known before anything starts or prints."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "busy"
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


class _DemoServer(BrokerServer):
    """Prints the banner once the broker is listening, and only then."""

    def __init__(self, config: uvicorn.Config, broker: Broker, banner: str) -> None:
        super().__init__(config, broker)
        self._banner = banner

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            print(self._banner, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the broker against local stand-ins (no Azure needed).")
    parser.add_argument("--port", type=int, default=7071, help="0 picks a free port")
    args = parser.parse_args(argv)
    try:
        listener = listen_socket(args.port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(
                f"make run: port {args.port} on 127.0.0.1 is already in use (another make run?); "
                "stop that, or pick another port: make run PORT=8080",
                file=sys.stderr,
            )
        else:
            print(f"make run: cannot listen on 127.0.0.1:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    port = int(listener.getsockname()[1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()

    ilevel = TokenServer()
    entra = EntraStandin()
    ilevel_server = run_server(ilevel)
    data_api = DataApi(ilevel)
    data_api_server = run_server(data_api)
    data_api.public_url = data_api_server.url
    entra_server = run_server(entra)
    entra.authority = entra_server.url

    client_id, client_secret = secrets.token_urlsafe(16), secrets.token_urlsafe(32)
    ilevel.accept(client_id, client_secret)
    os.environ.update(
        {
            local_secret_variable("ilevel-client-id"): client_id,
            local_secret_variable("ilevel-client-secret"): client_secret,
            # The fleet cache's key (used only if BROKER_FLEET_CACHE_CONNECTION_STRING points at an Azurite).
            local_secret_variable(DEFAULT_FLEET_KEY_SECRET): secrets.token_urlsafe(48),
            Setting.AZURE_AUTHORITY_HOST: entra_server.url,
            Setting.TENANT_ID: entra.tenant_id,
            Setting.AUDIENCE: AUDIENCE,
            Setting.PROVIDERS: "ilevel",
            provider_setting("ilevel", "TOKEN_URL"): ilevel_server.url + TOKEN_PATH,
            provider_setting("ilevel", "ALLOWED_ROLES"): ROLE,
            # Both routes, so the token curl and the proxy curl in the banner each work.
            provider_setting("ilevel", "MODE"): "both",
            provider_setting("ilevel", "API_BASE_URL"): data_api.base_url,
        }
    )
    os.environ.pop(Setting.KEY_VAULT_URL, None)
    try:
        settings = load_settings(os.environ)
        log_warnings(settings)
        caller = entra.mint(entra.tenant_id, aud=AUDIENCE, roles=[ROLE], expires_in=CALLER_TOKEN_LIFETIME_S)
        broker = Broker(settings)
        config = server_config(create_app(broker), host="127.0.0.1", port=port)
        server = _DemoServer(
            config,
            broker,
            banner(port, ilevel_server.url, entra_server.url, entra.tenant_id, caller, data_api.base_url),
        )
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(server.run_until_stopped(sockets=[listener]))
    finally:
        listener.close()
        ilevel_server.stop()
        data_api_server.stop()
        entra_server.stop()
    return 0 if server.started else 1


def banner(port: int, ilevel_url: str, entra_url: str, tenant: str, caller: str, api_url: str = "") -> str:
    """What to paste into another terminal: the caller token once, as TOKEN, then curls that use it."""
    base = f"http://127.0.0.1:{port}"
    if os.name == "nt":  # PowerShell: curl is an alias there, curl.exe the real one
        assign, curl, token_ref = f"$TOKEN = '{caller}'", "curl.exe -s", '"Authorization: Bearer $TOKEN"'
    else:
        assign, curl, token_ref = f"TOKEN={caller}", "curl -s", '"Authorization: Bearer $TOKEN"'
    return (
        "\n"
        f"iLevel token broker: listening on {base} (local run on an embedded default)\n"
        f"  STAND-IN iLevel token endpoint (sample OAuth2 server): {ilevel_url}{TOKEN_PATH}\n"
        f"  STAND-IN Entra ID metadata and signing keys:          {entra_url}/{tenant}/\n"
        f"  STAND-IN iLevel data API (the proxy route's upstream): {api_url}\n"
        f"  Secrets: from the environment (no {Setting.KEY_VAULT_URL}), generated for this run\n"
        f"  Caller token: a stand-in Entra token with role {ROLE}, valid {CALLER_TOKEN_LIFETIME_S // 3600} h\n"
        "\nTry it from another terminal (paste the TOKEN line first):\n"
        f"  {assign}\n"
        f"  {curl} {base}/api/health\n"
        f"  {curl} -H {token_ref} '{base}/api/token/ilevel'\n"
        f"  {curl} -H {token_ref} '{base}/api/proxy/ilevel/entities/assets?page%5Bsize%5D=5'\n"
        "\nNext: README.md, 'ADF quick path' (deploy it and run a pipeline); every endpoint: docs/reference.md\n"
        "Stop it with Ctrl+C.\n"
    )


if __name__ == "__main__":
    sys.exit(main())
