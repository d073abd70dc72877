"""``phoenixctl up``: start the local stack, print where it runs, stop it all on Ctrl-C/SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from phoenixcp.cli.stack import ENDPOINTS_FILE, Backend, LocalStack, read_endpoints
from phoenixcp.cli.table import table_lines
from phoenixcp.errors import PhoenixError, StartupError

__all__ = ["run_up"]


def _already_running(state_dir: Path) -> int | None:
    try:
        pid = int(read_endpoints(state_dir)["pid"])
    except (FileNotFoundError, KeyError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def run_up(*, state_dir: Path, replicas: int, timeout: float, vault: bool = False,
           backends: Sequence[Backend] = ()) -> int:
    """Start the stack and block until a signal; return the exit code."""
    running = _already_running(state_dir)
    if running is not None:
        print(f"phoenixctl up: a Phoenix stack is already running from {state_dir} (pid "
              f"{running}); stop it first or pass another --state-dir", file=sys.stderr)
        return 1
    stack = LocalStack(state_dir=state_dir, replicas=replicas, vault=vault, backends=backends)
    stop = _StopSignal()
    started = time.monotonic()
    try:
        infra = "NATS, etcd, OpenBao" if vault else "NATS, etcd"
        print(f"phoenixctl up: starting {infra} and {replicas} replica(s) of each service "
              f"in {stack.state_dir} ...", flush=True)
        asyncio.run(_start(stack, stop, timeout))
        if stop.received:
            return 130
        print(_table(stack, time.monotonic() - started), flush=True)
        _supervise(stack, stop)
        return 0
    except StartupError as exc:
        print(f"phoenixctl up: {exc}", file=sys.stderr)
        if exc.log_tail:
            print(f"--- last lines of {exc.name}'s log ---\n{exc.log_tail}", file=sys.stderr)
        return 1
    except PhoenixError as exc:
        print(f"phoenixctl up: {exc}", file=sys.stderr)
        return 1
    finally:
        print("phoenixctl up: stopping ...", file=sys.stderr, flush=True)
        stack.stop()
        print("phoenixctl up: stopped", file=sys.stderr, flush=True)


class _StopSignal:
    """Records SIGINT/SIGTERM; a second one during shutdown exits at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            os._exit(128 + signum)
        self.received = signum


async def _start(stack: LocalStack, stop: _StopSignal, timeout: float) -> None:
    task = asyncio.create_task(stack.start(timeout))
    while not task.done():
        if stop.received is not None:
            task.cancel()
            break
        await asyncio.sleep(0.05)
    try:
        await task
    except asyncio.CancelledError:
        pass


def _supervise(stack: LocalStack, stop: _StopSignal) -> None:
    reported: set[str] = set()
    while stop.received is None:
        for proc in stack.exited():
            if proc.replica not in reported:
                reported.add(proc.replica)
                print(f"phoenixctl up: {proc.replica} (pid {proc.pid}) exited with code "
                      f"{proc.exit_code()}; its log is {proc.log_path}", file=sys.stderr,
                      flush=True)
        time.sleep(0.2)


def _table(stack: LocalStack, seconds: float) -> str:
    endpoints = stack.endpoints()
    rows = [("SERVICE", "REPLICA", "GRPC", "METRICS", "PID")]
    for name, replicas in endpoints["services"].items():
        for r in replicas:
            rows.append((name, r["replica"], r["grpc"], r["metrics"], str(r["pid"])))
    lines = table_lines(rows)
    tls = endpoints["tls"]
    return "\n".join([
        f"Phoenix is up in {seconds:.1f}s (state dir {stack.state_dir})",
        "",
        *lines,
        "",
        f"nats       {endpoints['nats']}",
        f"etcd       {endpoints['etcd']}",
        *([f"vault      {endpoints['vault']} (certificates from its PKI engine; root token in "
           f"{stack.state_dir / 'bao' / 'token'})"] if "vault" in endpoints else []),
        f"tls        ca={tls['ca']} cert={tls['cert']} key={tls['key']} (operator client cert)",
        *_ingest_lines(endpoints),
        f"endpoints  {stack.state_dir / ENDPOINTS_FILE}",
        "",
        "Try: phoenixctl status     Stop: Ctrl-C",
    ])


def _ingest_lines(endpoints: dict[str, Any]) -> list[str]:
    lines = []
    for replica in endpoints["services"].get("metrics-pipeline", []):
        ingest = replica.get("ingest") or {}
        if ingest:
            lines.append(f"ingest     {replica['replica']}: OTLP/gRPC {ingest['otlp_grpc']}  "
                         f"OTLP/HTTP {ingest['otlp_http']}  remote-write {ingest['remote_write']}")
    for backend in endpoints.get("backends", []):
        if backend["type"] == "counting-sink":
            lines.append(f"backend    built-in counting sink {backend['endpoint']} (forwards "
                         f"nothing; counts at {backend['stats']}); use --backend to send on")
        else:
            lines.append(f"backend    {backend['type']} {backend['endpoint']}")
    return lines
