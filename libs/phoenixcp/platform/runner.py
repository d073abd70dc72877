"""``main`` for a service process: load config, build, serve until SIGTERM, drain, exit.

Exit codes: 0 after a clean drain; 2 for a configuration error (one line on stderr naming the
key, the value and what is allowed); 1 when start-up fails otherwise; 128+N when a second
signal N arrives during the drain (exit at once).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, Protocol

from phoenixcp.core.identity import service as service_identity
from phoenixcp.errors import ConfigError, PhoenixError
from phoenixcp.platform import logs
from phoenixcp.platform.config import ServiceConfig, load_service_config
from phoenixcp.platform.gc_pacing import GcPacer
from phoenixcp.platform.idle_work import new_event_loop
from phoenixcp.platform.service import ServiceApp

__all__ = ["EXIT_CONFIG", "main", "serve"]

EXIT_CONFIG = 2

log = logging.getLogger(__name__)


class _ServicePackage(Protocol):
    def build(self, config: ServiceConfig) -> ServiceApp: ...


def _parser(service: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {service_identity(service).package}",
        description=f"Run one replica of the Phoenix {service} service.",
    )
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML config file (see phoenixcp.platform.config); "
                             "without it, defaults and PHOENIX_* environment variables apply")
    return parser


def main(service: str, argv: Sequence[str] | None = None) -> NoReturn:
    """Parse ``--config`` and run ``service``; never returns."""
    args = _parser(service).parse_args(argv)
    sys.exit(serve(service, args.config))


def serve(service: str, config_path: Path | None) -> int:
    """Run ``service`` with the config at ``config_path``; return the exit code."""
    prog = f"phoenix {service}"
    try:
        config = load_service_config(config_path, service)
    except ConfigError as exc:
        print(f"{prog}: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(level=config.log.level, fmt=config.log.format,
                   service=service, replica=config.replica_id)
    package: _ServicePackage = importlib.import_module(f"{service_identity(service).package}.app")
    try:
        app = package.build(config)
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_run(app))
    except ConfigError as exc:
        print(f"{prog}: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except PhoenixError as exc:
        log.error("start-up failed: %s", exc)
        return 1
    except OSError as exc:
        log.error("start-up failed: %s", exc)
        return 1
    return 0


async def _run(app: ServiceApp) -> None:
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if received:
            # A second signal during the drain: the operator wants out now.
            os._exit(128 + signum)
        received.append(signum)
        log.info("signal received, draining", extra={"fields": {"signal": signum}})
        app.request_stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    pacer = GcPacer()
    pacer.start()
    try:
        await app.run()
    finally:
        await pacer.stop()
