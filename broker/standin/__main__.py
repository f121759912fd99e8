"""``python -m broker.standin token-server``: the sample OAuth2 token endpoint, on its own, for trying
``check`` and ``serve`` without writing a script.

STAND-IN for local development only; never used in production. It accepts one generated
client id and secret (throwaway values of no real system) and prints the settings that
point the broker at it, with secrets read from the environment (no Key Vault).
"""

from __future__ import annotations

import argparse
import secrets
import shlex
import signal
import sys
import threading
from collections.abc import Sequence

from broker.config import Setting, local_secret_variable, provider_setting
from broker.standin.oauth import ALL_VARIANTS, TOKEN_PATH, TokenServer, Variant
from broker.standin.serve import run_server


def settings_for(token_url: str, client_id: str, client_secret: str) -> dict[str, str]:
    """The environment that makes ``python -m broker check`` (and ``serve``) use this token endpoint."""
    return {
        Setting.PROVIDERS: "ilevel",
        provider_setting("ilevel", "TOKEN_URL"): token_url,
        local_secret_variable("ilevel-client-id"): client_id,
        local_secret_variable("ilevel-client-secret"): client_secret,
    }


def token_server(port: int, variants: Sequence[Variant], echo: bool) -> int:
    server = TokenServer(variants=variants)
    server.echo_request = echo
    client_id, client_secret = secrets.token_urlsafe(12), secrets.token_urlsafe(24)
    server.accept(client_id, client_secret)
    running = run_server(server, port=port)
    token_url = running.url + TOKEN_PATH
    settings = settings_for(token_url, client_id, client_secret)
    exports = "\n".join(f"  export {key}={shlex.quote(value)}" for key, value in settings.items())
    print(
        f"STAND-IN iLevel token endpoint (sample OAuth2 server) listening on {token_url}\n"
        f"  accepts: {', '.join(sorted(variants))}{'; echoes requests in error_description' if echo else ''}\n"
        "  the client id and secret below are generated for this run and belong to no real system\n"
        f"\nIn another shell, point the broker at it (no {Setting.KEY_VAULT_URL}: secrets come from the environment):\n"
        f"{exports}\n"
        f"  unset {Setting.KEY_VAULT_URL}\n"
        "  .venv/bin/python -m broker check\n"
        f"  {Setting.INSECURE_DISABLE_CALLER_AUTH}=true .venv/bin/python -m broker serve"
        "  # loopback only, no caller auth\n"
        "\nStop it with Ctrl+C.",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker.standin", description="Local stand-in servers.")
    commands = parser.add_subparsers(dest="command", required=True)
    tokens = commands.add_parser("token-server", help="the sample OAuth2 client-credentials token endpoint")
    tokens.add_argument("--port", type=int, default=0, help="default: a free port")
    tokens.add_argument(
        "--accept",
        default="basic_raw",
        help=f"comma-separated client authentication variants to accept ({', '.join(sorted(ALL_VARIANTS))})",
    )
    tokens.add_argument("--echo", action="store_true", help="echo the request into error_description (hostile)")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.accept.split(",") if v.strip()]
    unknown = sorted(set(variants) - ALL_VARIANTS)
    if unknown or not variants:
        parser.error(f"--accept takes {', '.join(sorted(ALL_VARIANTS))}; got {args.accept!r}")
    return token_server(args.port, variants, args.echo)


if __name__ == "__main__":
    sys.exit(main())
