"""The process lifecycle every embedded server shares: start, probe, stop, kill, restart."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from phoenixcp.errors import StartupError
from phoenixcp.platform.embedded._support import (
    _ADDRESS_IN_USE,
    _LOG_TAIL_LINES,
    _POLL_INTERVAL,
    _PORT_ATTEMPTS,
    BinaryName,
    _free_ports,
    die_with_parent_hook,
    find_binary,
)


def _ports_in_use(log: str) -> set[int]:
    """Ports on the log's "address already in use" lines (Go: ``listen tcp H:P: bind: ...``)."""
    lines = (line for line in log.lower().splitlines() if _ADDRESS_IN_USE in line)
    return {int(port) for line in lines for port in re.findall(r":(\d{1,5})\b", line)}


class _PortTaken(Exception):
    """The server exited because a port it was given is in use (internal: triggers a retry)."""


class EmbeddedServer(ABC):
    """One server process this object starts, watches and stops; shared lifecycle of all three.

    ``start()`` returns only once the server answers at protocol level. ``stop()`` is idempotent
    and only ever signals the process this object started (by PID, before it is reaped, so the
    PID cannot have been reused). The data directory survives ``stop()`` and ``restart()``.
    """

    name: ClassVar[str]
    binary: ClassVar[BinaryName]

    def __init__(
        self, *, data_dir: Path, host: str, ports: Mapping[str, int], die_with_parent: bool
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.log_path = self.data_dir / f"{self.name}.log"
        self.die_with_parent = die_with_parent
        self._ports = dict(ports)
        self._auto_ports = frozenset(key for key, port in ports.items() if port == 0)
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    @abstractmethod
    def _argv(self, binary: Path) -> list[str]:
        """The command line that runs this server on ``self._ports``."""

    @abstractmethod
    def _probe(self) -> bool:
        """True once the server answers at protocol level; returns within about a second."""

    def _pick_ports(self) -> None:
        """Choose new free ports for the ports that were asked for as 0."""
        for key, port in zip(
            self._auto_ports, _free_ports(self.host, len(self._auto_ports)), strict=True
        ):
            self._ports[key] = port

    @property
    def ports(self) -> dict[str, int]:
        """A copy of the ports by role (``client``, ...); 0 for a port not chosen yet."""
        return dict(self._ports)

    @property
    def pid(self) -> int | None:
        """PID of the process this object started, or None if not started or since stopped."""
        return None if self._proc is None else self._proc.pid

    def is_running(self) -> bool:
        """Whether the process this object started is alive (it may not be ready yet)."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> Self:
        """Launch the server and wait until it answers; a running server is left as it is.

        Ports left at 0 are chosen at the first start; if the server then finds one taken it is
        started again on new ones, up to 3 attempts. Later starts reuse the same ports.
        Raises ``StartupError`` (with the tail of the log) if it exits or is not ready in time,
        and ``DependencyMissingError`` if the binary is not installed.
        """
        if self.is_running():
            return self
        binary = find_binary(self.binary)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        retry = not self._started_once and bool(self._auto_ports)
        if not self._started_once:
            self._pick_ports()
        attempts = _PORT_ATTEMPTS if retry else 1
        tail = ""
        for attempt in range(attempts):
            if attempt:
                self._pick_ports()
            try:
                self._launch(binary, timeout)
            except _PortTaken as exc:
                tail = str(exc)
                explicit = {p for key, p in self._ports.items() if key not in self._auto_ports}
                if _ports_in_use(tail) & explicit:
                    retry = False  # new ports for the others cannot help
                    break
            else:
                self._started_once = True
                return self
        if retry:
            why = f"after {attempts} attempts on new free ports"
        elif self._started_once:
            why = "ports are kept across restarts"
        else:
            why = "a port that was asked for explicitly"
        raise self._startup_error(f"found a port already in use ({self._ports}; {why})", tail)

    def _launch(self, binary: Path, timeout: float) -> None:
        argv = self._argv(binary)
        with self.log_path.open("ab") as log:
            log.write(f"--- phoenix: {' '.join(argv)}\n".encode())
            log.flush()
            offset = log.tell()
            try:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    start_new_session=True,
                    preexec_fn=die_with_parent_hook() if self.die_with_parent else None,
                )
            except OSError as exc:
                raise self._startup_error(f"could not be run: {exc}", "") from exc
        try:
            self._wait_ready(self._proc, offset, timeout)
        except BaseException:
            self.kill()  # never leave a half-started server behind, not even on Ctrl-C
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes], offset: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            returncode = proc.poll()
            if returncode is not None:
                tail = self._log_tail(offset)
                if _ADDRESS_IN_USE in tail.lower():
                    raise _PortTaken(tail)
                raise self._startup_error(f"exited with code {returncode} while starting", tail)
            if self._probe() and proc.poll() is None:
                return
            if time.monotonic() > deadline:
                reason = f"did not answer within {timeout:.1f}s"
                raise self._startup_error(reason, self._log_tail(offset))
            time.sleep(_POLL_INTERVAL)

    def _log_tail(self, offset: int = 0) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])

    def _startup_error(self, reason: str, tail: str) -> StartupError:
        return StartupError(
            f"{self.name} {reason}; log {self.log_path} ends with:\n{tail or '(empty)'}",
            name=self.name,
            log_tail=tail,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process, wait up to ``timeout``, then SIGKILL it. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()

    def kill(self) -> None:
        """SIGKILL the process now and reap it, as a crash would end it. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()  # a no-op once it has exited
            proc.wait()

    def restart(self, timeout: float = 10.0) -> Self:
        """Stop the server and start it again on the same ports with the same data directory."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ports={self._ports}, pid={self.pid}, dir={self.data_dir})"


