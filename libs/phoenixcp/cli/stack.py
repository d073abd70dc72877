"""The local Phoenix stack ``phoenixctl up`` starts: NATS, etcd, the local CA and five services.

Everything runs on free loopback ports from the installed wheels. The stack's state dir holds
the CA (``ca/``), the operator's client certificate (``tls/``), each replica's generated config
(``config/``), logs (``logs/``), the NATS and etcd data, and ``endpoints.json``, whose shape is
part of Phoenix's contract (README, "endpoints.json")::

    {"services": {"<service-name>": [{"grpc": "127.0.0.1:PORT",
                                      "metrics": "http://127.0.0.1:PORT/metrics",
                                      "pid": N, "replica": "...", "log": PATH}, ...]},
     "nats": "nats://...", "etcd": "http://...",
     "tls": {"ca": PATH, "cert": PATH, "key": PATH},
     "state_dir": PATH, "pid": N, "pids": {"nats": N, "etcd": N[, "bao": N]}[, "vault": URL]}

A :class:`LocalStack` is driven from the main thread (its children are tied to that thread's
life, so they die with it); ``stop`` is idempotent and stops services first, then etcd and NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from phoenixcp.core.identity import OPERATOR, SERVICES, ServiceIdentity
from phoenixcp.errors import StartupError
from phoenixcp.platform.embedded import (
    EmbeddedBao,
    EmbeddedEtcd,
    EmbeddedNats,
    die_with_parent_hook,
    free_port,
)
from phoenixcp.platform.redact import redacted_endpoint
from phoenixcp.platform.rpc import health_status
from phoenixcp.platform.secrets import VaultCertificates, VaultClient, VaultConfig, ensure_pki
from phoenixcp.platform.tls import CertBundle, CertificateSource, LocalCA

__all__ = ["ENDPOINTS_FILE", "Backend", "LocalStack", "ServiceProcess", "read_endpoints"]

ENDPOINTS_FILE = "endpoints.json"
_OPERATOR_CERT_TTL = dt.timedelta(days=30)


def read_endpoints(state_dir: Path) -> dict[str, Any]:
    """The stack's endpoints.json; raises FileNotFoundError when no stack runs from state_dir."""
    return dict(json.loads((state_dir / ENDPOINTS_FILE).read_text(encoding="utf-8")))


def operator_bundle(endpoints: dict[str, Any]) -> CertBundle:
    """The operator's client certificate named in endpoints.json."""
    tls = endpoints["tls"]
    return CertBundle(
        ca_pem=Path(tls["ca"]).read_bytes(),
        cert_pem=Path(tls["cert"]).read_bytes(),
        key_pem=Path(tls["key"]).read_bytes(),
    )


@dataclass(frozen=True)
class Backend:
    """Where the pipeline forwards: ``remote-write=URL`` or ``otlp=HOST:PORT`` on the CLI."""

    type: str
    endpoint: str

    @classmethod
    def parse(cls, text: str) -> Backend:
        kind, sep, endpoint = text.partition("=")
        if not sep or kind not in ("remote-write", "otlp") or not endpoint:
            shown = (f"{kind}={redacted_endpoint(endpoint)}" if kind in ("remote-write", "otlp")
                     else redacted_endpoint(text))
            raise ValueError(f"{shown!r} is not a backend; use remote-write=URL or "
                             "otlp=HOST:PORT, e.g. remote-write=http://127.0.0.1:8428/api/v1/write")
        return cls(kind, endpoint)

    def exporter(self, index: int) -> dict[str, Any]:
        # Prometheus-compatible backends refuse out-of-order samples: one request in flight.
        return {"name": f"{self.type}-{index}", "type": self.type, "endpoint": self.endpoint,
                "concurrency": 1 if self.type == "remote-write" else 4}


class SinkProcess:
    """The built-in counting sink ``up`` forwards to when no backend is given."""

    def __init__(self, state_dir: Path) -> None:
        self.port = 0
        self.log_path = state_dir / "logs" / "counting-sink.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, python: str, timeout: float = 10.0) -> None:
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [python, "-m", "phoenixcp.platform.export.sink", "--port", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent_hook())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StartupError(f"the counting sink exited; its log is {self.log_path}",
                                   name="counting-sink")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise StartupError("the counting sink did not start in time", name="counting-sink")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _port_or_free(port: int) -> int:
    if port and _is_free(port):
        return port
    return free_port()


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class ServiceProcess:
    """One service replica started as ``python -m <package> --config FILE``."""

    identity: ServiceIdentity
    index: int
    state_dir: Path
    process: subprocess.Popen[bytes] | None = None
    announced: dict[str, Any] = field(default_factory=dict)

    @property
    def replica(self) -> str:
        return f"{self.identity.name}-{self.index}"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "config" / f"{self.replica}.yaml"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "logs" / f"{self.replica}.log"

    @property
    def announce_path(self) -> Path:
        return self.state_dir / "run" / f"{self.replica}.json"

    def write_config(self, *, nats_url: str, etcd_endpoint: str,
                     tls: dict[str, Any] | None = None,
                     pipeline: dict[str, Any] | None = None) -> None:
        config = {
            "service": self.identity.name,
            "replica": self.replica,
            "state_dir": str(self.state_dir),
            "announce_file": str(self.announce_path),
            "grpc": {"listen": "127.0.0.1:0"},
            "metrics": {"listen": "127.0.0.1:0"},
            "nats": {"url": nats_url},
            "etcd": {"endpoints": [etcd_endpoint]},
            **(tls or {"tls": {"source": "local-ca", "ca_dir": str(self.state_dir / "ca")}}),
            **({"pipeline": pipeline} if pipeline else {}),
        }
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    def start(self, *, python: str) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.announce_path.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [python, "-m", self.identity.package, "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent_hook(),
            )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process else None

    def read_announcement(self) -> dict[str, Any] | None:
        try:
            self.announced = json.loads(self.announce_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return self.announced

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def terminate(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_or_kill(self, deadline: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=max(deadline - time.monotonic(), 0.05))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class LocalStack:
    """NATS, etcd, the local CA and ``replicas`` of each service, under ``state_dir``."""

    def __init__(self, *, state_dir: Path, replicas: int = 1, python: str | None = None,
                 stop_grace: float = 15.0, services: Sequence[str] | None = None,
                 vault: bool = False, backends: Sequence[Backend] = (),
                 pipeline: dict[str, Any] | None = None) -> None:
        self.state_dir = state_dir.resolve()
        self.replicas = replicas
        self._python = python or sys.executable
        self._stop_grace = stop_grace
        self.nats = EmbeddedNats(data_dir=self.state_dir / "nats")
        self.etcd = EmbeddedEtcd(data_dir=self.state_dir / "etcd")
        self.bao = EmbeddedBao(data_dir=self.state_dir / "bao") if vault else None
        self._vault_token_file = self.state_dir / "bao" / "token"
        self.backends = tuple(backends)
        self._pipeline_overrides = dict(pipeline or {})
        self.sink: SinkProcess | None = None if backends else SinkProcess(self.state_dir)
        chosen = [s for s in SERVICES if services is None or s.name in services]
        self.processes = [
            ServiceProcess(identity, i, self.state_dir)
            for identity in chosen for i in range(replicas)
        ]
        self._operator: CertBundle | None = None
        self._tls_paths: tuple[Path, Path, Path] | None = None
        self._stopped = False

    def prepare(self) -> None:
        """Start NATS, etcd (and OpenBao); create the CA and the operator's certificate."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.nats.start()
        self.etcd.start()
        if self.sink is not None:
            self.sink.start(python=self._python)
        source: CertificateSource
        if self.bao is None:
            source = LocalCA.open(self.state_dir / "ca")
        else:
            self.bao.start()
            _write_secret(self._vault_token_file, self.bao.root_token)
            client = VaultClient(self._vault_config())
            # Once, here: replicas racing to set up an empty PKI mount could make two roots.
            ensure_pki(client, services=[s.name for s in SERVICES], max_ttl=_OPERATOR_CERT_TTL)
            source = VaultCertificates(client=client)
        self._operator = source.issue(OPERATOR, ttl=_OPERATOR_CERT_TTL)
        self._tls_paths = self._operator.write(self.state_dir / "tls", OPERATOR)

    def _vault_config(self) -> VaultConfig:
        assert self.bao is not None
        return VaultConfig(addr=self.bao.addr, token_file=self._vault_token_file)

    def _pipeline_config(self, proc: ServiceProcess) -> dict[str, Any] | None:
        if proc.identity.name != "metrics-pipeline":
            return None
        backends = self.backends or (Backend("remote-write", self.sink_url()),)
        first = proc.index == 0
        return {
            # The standard OTLP ports when free (first replica), else any free port.
            "otlp_grpc_listen": f"127.0.0.1:{_port_or_free(4317 if first else 0)}",
            "http_listen": f"127.0.0.1:{_port_or_free(4318 if first else 0)}",
            "exporters": [b.exporter(i) for i, b in enumerate(backends)],
            **self._pipeline_overrides,
        }

    def sink_url(self) -> str:
        assert self.sink is not None
        return f"{self.sink.url}/api/v1/write"

    def _service_tls(self) -> dict[str, Any]:
        if self.bao is None:
            return {"tls": {"source": "local-ca", "ca_dir": str(self.state_dir / "ca")}}
        return {"tls": {"source": "vault"},
                "vault": {"addr": self.bao.addr, "token_file": str(self._vault_token_file)}}

    async def start(self, timeout: float = 20.0) -> None:
        """Start everything and wait until every replica reports SERVING, or raise StartupError."""
        self.prepare()
        for proc in self.processes:
            proc.write_config(nats_url=self.nats.url, etcd_endpoint=self.etcd.endpoint,
                              tls=self._service_tls(), pipeline=self._pipeline_config(proc))
            proc.start(python=self._python)
        deadline = time.monotonic() + timeout
        await asyncio.gather(*(self._wait_serving(p, deadline) for p in self.processes))
        self._write_endpoints()

    async def restart_replica(self, proc: ServiceProcess, timeout: float = 20.0) -> None:
        """Start ``proc`` again (after it exited or was killed) and wait until it is SERVING."""
        if proc.exit_code() is None:
            raise StartupError(f"{proc.replica} is still running (pid {proc.pid})",
                               name=proc.replica)
        proc.start(python=self._python)
        await self._wait_serving(proc, time.monotonic() + timeout)
        self._write_endpoints()

    async def _wait_serving(self, proc: ServiceProcess, deadline: float) -> None:
        assert self._operator is not None
        while time.monotonic() < deadline:
            code = proc.exit_code()
            if code is not None:
                raise StartupError(
                    f"{proc.replica} exited with code {code} during start-up; "
                    f"its log is {proc.log_path}", name=proc.replica, log_tail=proc.log_tail())
            record = proc.read_announcement()
            if record and await health_status(record["grpc"], self._operator) == "SERVING":
                return
            await asyncio.sleep(0.1)
        raise StartupError(f"{proc.replica} did not report SERVING in time; its log is "
                           f"{proc.log_path}", name=proc.replica, log_tail=proc.log_tail())

    def endpoints(self) -> dict[str, Any]:
        assert self._tls_paths is not None
        ca, cert, key = self._tls_paths
        services: dict[str, list[dict[str, Any]]] = {}
        for proc in self.processes:
            services.setdefault(proc.identity.name, []).append({
                "grpc": proc.announced.get("grpc"),
                "metrics": proc.announced.get("metrics"),
                "pid": proc.pid,
                "replica": proc.replica,
                "log": str(proc.log_path),
                **({"ingest": proc.announced["ingest"]} if "ingest" in proc.announced else {}),
            })
        return {
            "services": services,
            "nats": self.nats.url,
            "etcd": self.etcd.url,
            "tls": {"ca": str(ca), "cert": str(cert), "key": str(key)},
            "state_dir": str(self.state_dir),
            "pid": os.getpid(),
            "pids": {"nats": self.nats.pid, "etcd": self.etcd.pid,
                     **({"bao": self.bao.pid} if self.bao else {})},
            **({"vault": self.bao.addr} if self.bao else {}),
            # Only the pipeline's config file holds a backend's password, not this file.
            "backends": [{"type": b.type, "endpoint": redacted_endpoint(b.endpoint)}
                         for b in self.backends]
            or [{"type": "counting-sink", "endpoint": self.sink_url(),
                 "stats": f"{self.sink.url}/stats" if self.sink else ""}],
        }

    def _write_endpoints(self) -> None:
        path = self.state_dir / ENDPOINTS_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.endpoints(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def exited(self) -> list[ServiceProcess]:
        """Replicas that are no longer running."""
        return [p for p in self.processes if p.exit_code() is not None]

    def stop(self) -> None:
        """Stop the services (SIGTERM, then SIGKILL after the grace), then etcd and NATS."""
        if self._stopped:
            return
        self._stopped = True
        (self.state_dir / ENDPOINTS_FILE).unlink(missing_ok=True)
        for proc in self.processes:
            proc.terminate()
        deadline = time.monotonic() + self._stop_grace
        for proc in self.processes:
            proc.wait_or_kill(deadline)
        if self.sink is not None:
            self.sink.stop()
        if self.bao is not None:
            self.bao.stop()
        self.etcd.stop()
        self.nats.stop()


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value)
