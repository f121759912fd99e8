"""Command line: ``python -m broker serve`` and ``python -m broker check``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from broker.config import AzdName, Setting, is_loopback_host, load_settings, log_warnings
from broker.errors import ConfigError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def load_local_settings(path: Path) -> int:
    """Copy a local.settings.json's "Values" into the environment (never overriding). Returns how many."""
    try:
        values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError("--settings", f"cannot read {path}: {type(exc).__name__}") from None
    if not isinstance(values, dict):
        raise ConfigError("--settings", f'{path} has no "Values" object')
    count = 0
    for key, value in values.items():
        if isinstance(value, str) and key not in os.environ:
            os.environ[key] = value
            count += 1
    return count


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from broker.app import create_app
    from broker.runtime import Broker
    from broker.serving import BrokerServer, server_config
    from broker.telemetry import configure_exporter

    settings = load_settings(os.environ)
    if settings.caller_auth_disabled and not is_loopback_host(args.host):
        raise ConfigError(
            Setting.INSECURE_DISABLE_CALLER_AUTH,
            f"is refused when binding to a non-loopback address ({args.host}); bind to 127.0.0.1",
        )
    log_warnings(settings)
    configure_exporter(os.environ)
    broker = Broker(settings)
    config = server_config(create_app(broker), host=args.host, port=args.port)
    server = BrokerServer(config, broker, warm_up=True)
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(server.run_until_stopped())
    return 0 if server.started else 1


def _check(args: argparse.Namespace) -> int:
    if args.remote is not None:
        return _remote_check(args)
    from broker.check import run_check

    # check authenticates no caller: BROKER_TENANT_ID and BROKER_AUDIENCE may be absent.
    settings = load_settings(os.environ, check_only=True)
    report = asyncio.run(run_check(settings, args.provider))
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.render())
    return report.exit_code


def _remote_check(args: argparse.Namespace) -> int:
    """check --remote: the app runs the steps with its managed identity; this prints its report."""
    from broker.remote_check import Remote, run_remote_check

    outcome = run_remote_check(Remote.of(args.remote, args.app_id_uri, os.environ), args.provider)
    print(outcome.as_json() if args.json else outcome.text)
    return outcome.exit_code


def _fingerprint() -> int:
    """The 8-hex SHA-256 fingerprint check prints, of a value typed at a prompt (never argv or shell history)."""
    import getpass

    from broker.tokens import fingerprint

    value = getpass.getpass("value (not echoed): ")
    print(f"sha256 {fingerprint(value.strip())} ({len(value.strip())} chars, surrounding whitespace ignored)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker", description="iLevel token broker")
    settings_help = "a local.settings.json whose Values fill the environment"
    parser.add_argument("--settings", type=Path, help=settings_help)
    # --settings is accepted after the subcommand too; SUPPRESS keeps a subcommand without it from
    # overwriting one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--settings", type=Path, default=argparse.SUPPRESS, help=settings_help)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", parents=[common], help="serve the broker's HTTP API under uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7071)
    check = commands.add_parser("check", parents=[common], help="diagnose a provider's credentials and token endpoint")
    check.add_argument("provider", nargs="?", default=None)
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--remote",
        metavar="URL",
        help="run the check inside the deployed app (https://<app>.azurewebsites.net) with your az login",
    )
    check.add_argument(
        "--app-id-uri",
        help=f"with --remote: the broker's App ID URI (default: ${AzdName.APP_ID_URI}, as azd stores it)",
    )
    commands.add_parser("fingerprint", help="print the fingerprint check shows, of a value typed at a prompt")
    args = parser.parse_args(argv)
    if args.command == "fingerprint":
        return _fingerprint()

    # The Logging HOWTO's optimisations: one access line per request is on the hot path, and
    # none of these record fields is in LOG_FORMAT.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # skips findCaller's frame walk (documented in the Logging HOWTO)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    from broker.startup import quiet_libraries

    quiet_libraries()
    try:
        if args.settings is not None:
            load_local_settings(args.settings)
        return _serve(args) if args.command == "serve" else _check(args)
    except ConfigError as error:
        print(f"configuration error: {error.description}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
