"""``phoenixctl``: the one command for Phoenix's users and operators."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    _add_policy(sub, state_help)
    _add_profile(sub, state_help)
    return parser


def _target_args(parser: argparse.ArgumentParser, state_help: str) -> None:
    parser.add_argument("--state-dir", default=None, help=state_help)
    parser.add_argument("--address", default=None, metavar="HOST:PORT",
                        help="a metrics-pipeline replica's gRPC address (default: the first "
                             "one in the state dir's endpoints.json)")


def _add_policy(sub: Any, state_help: str) -> None:
    policy = sub.add_parser("policy", help="apply, list, delete or dry-run a tenant's policies")
    actions = policy.add_subparsers(dest="action", required=True, metavar="ACTION")
    tenant_help = "the tenant (default: the document's, else `default`)"
    apply = actions.add_parser("apply", help="create or replace policies from a YAML or JSON "
                                             "file (one Policy, a list, or several documents)")
    dry_run = actions.add_parser("dry-run", help="show what policies would do to the last "
                                                 "window's series, without storing them")
    for parser in (apply, dry_run):
        parser.add_argument("file", metavar="FILE", help="Policy document(s); - for stdin")
        parser.add_argument("--tenant", default=None, help=tenant_help)
        _target_args(parser, state_help)
    dry_run.add_argument("-o", "--output", choices=["text", "json"], default="text")
    dry_run.add_argument("--max-examples", type=int, default=20,
                         help="merged groups and dropped series returned (default 20)")
    listing = actions.add_parser("list", help="list policies (every tenant's by default)")
    listing.add_argument("--tenant", default=None, help="only this tenant's")
    listing.add_argument("-o", "--output", choices=["table", "json"], default="table")
    _target_args(listing, state_help)
    delete = actions.add_parser("delete", help="delete a policy")
    delete.add_argument("id", metavar="ID")
    delete.add_argument("--tenant", required=True)
    delete.add_argument("--reason", default="", help="why (recorded in the event)")
    _target_args(delete, state_help)


def _add_profile(sub: Any, state_help: str) -> None:
    profile = sub.add_parser("profile", help="list the profiles or switch the active one")
    actions = profile.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every profile and where it is active")
    listing.add_argument("-o", "--output", choices=["table", "json"], default="table")
    _target_args(listing, state_help)
    chosen = actions.add_parser("set", help="switch the active profile, live")
    chosen.add_argument("name", metavar="NAME")
    chosen.add_argument("--tenant", default=None,
                        help="only this tenant (default: the default for every tenant)")
    chosen.add_argument("--reason", default="", help="why (kept with the pointer)")
    _target_args(chosen, state_help)


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
    if args.command == "policy":
        from phoenixcp.cli.policy import run_policy

        args.state_dir = _state_dir(args.state_dir)
        sys.exit(run_policy(args))
    if args.command == "profile":
        from phoenixcp.cli.profile import run_profile

        args.state_dir = _state_dir(args.state_dir)
        sys.exit(run_profile(args))
