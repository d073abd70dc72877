"""NATS (JetStream), etcd and OpenBao (dev mode) as embedded servers."""

from __future__ import annotations

import hashlib
import secrets
import socket
from pathlib import Path

from phoenixcp.errors import StartupError
from phoenixcp.platform.embedded._base import EmbeddedServer
from phoenixcp.platform.embedded._support import (
    _PROBE_TIMEOUT,
    _http_get,
    _json,
    _port_is_free,
    free_port,
)


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

