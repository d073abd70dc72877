"""``phoenixctl``: the one command for Phoenix's users and operators."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from phoenixcp import __version__
from phoenixcp.core.identity import SERVICES

__all__ = ["STATE_DIR_ENV", "main"]

STATE_DIR_ENV = "PHOENIX_STATE_DIR"


def _state_dir(value: str | None) -> Path:
    return Path(value or os.environ.get(STATE_DIR_ENV) or ".phoenix")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phoenixctl", description=(
        "Phoenix keeps OpenTelemetry and Prometheus metrics affordable and safe."))
    parser.add_argument("--version", action="version", version=f"phoenixctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run one replica of a service")
    serve.add_argument("service", choices=[s.name for s in SERVICES])
    serve.add_argument("--config", type=Path, default=None, help="YAML config file")

    state_help = f"state dir (default: ${STATE_DIR_ENV}, else ./.phoenix)"
    up = sub.add_parser("up", help="start the local stack: NATS, etcd, a CA and all services")
    up.add_argument("--replicas", type=_positive, default=1, help="replicas of each service")
    up.add_argument("--state-dir", default=None, help=state_help)
    up.add_argument("--backend", action="append", default=[], type=_backend,
                    metavar="remote-write=URL|otlp=HOST:PORT",
                    help="where the pipeline forwards (repeatable); default: a built-in sink "
                         "that counts what it receives")
    up.add_argument("--vault", action="store_true",
                    help="run OpenBao (bao server -dev) and take every certificate from its PKI "
                         "engine instead of the local CA (needs the vault extra)")
    up.add_argument("--timeout", type=float, default=30.0,
                    help="seconds to wait for every replica to be SERVING (default 30)")

    status = sub.add_parser("status", help="show each replica's address, health and leadership")
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")
    status.add_argument("--state-dir", default=None, help=state_help)
    return parser


def _backend(text: str) -> object:
    from phoenixcp.cli.stack import Backend

    try:
        return Backend.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 9:
        raise argparse.ArgumentTypeError(f"{value} is out of range; use 1 to 9")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from phoenixcp.platform.runner import serve

        sys.exit(serve(args.service, args.config))
    if args.command == "up":
        from phoenixcp.cli.up import run_up

        sys.exit(run_up(state_dir=_state_dir(args.state_dir), replicas=args.replicas,
                        timeout=args.timeout, vault=args.vault, backends=args.backend))
    if args.command == "status":
        from phoenixcp.cli.status import run_status

        sys.exit(run_status(state_dir=_state_dir(args.state_dir), output=args.output))
