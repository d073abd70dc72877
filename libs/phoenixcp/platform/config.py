"""The config file every Phoenix service reads (``phoenixctl serve <service> --config FILE``).

Example, with every key at its default::

    service: metrics-pipeline     # must match the service being started, when given
    replica: ""                   # this replica's id; empty = <hostname>-<pid>
    state_dir: .phoenix           # local state: the embedded CA, queues (env: PHOENIX_STATE_DIR)
    announce_file: null           # written with the bound addresses once SERVING (used by `up`)
    grpc:
      listen: 127.0.0.1:0         # host:port of the gRPC API; port 0 picks a free port
      drain_grace: 10s            # how long in-flight calls may finish after SIGTERM
    metrics:
      listen: 127.0.0.1:0         # host:port of the Prometheus /metrics endpoint
    tls:
      source: local-ca            # local-ca (embedded CA in <state_dir>/ca), files, or vault
      ca_dir: null                # local-ca: where the CA lives; default <state_dir>/ca
      ca_file: null               # files: the CA bundle that signs peers' certificates
      cert_file: null             # files: this service's certificate chain (PEM)
      key_file: null              # files: its private key (PEM)
      cert_ttl: 24h               # local-ca, vault: lifetime of each certificate (renewed at 2/3)
    vault: null                   # needed by tls.source vault:
    #   addr: https://vault:8200  # the Vault / OpenBao API
    #   token_file: /var/run/vault/token   # wins over token, which wins over $VAULT_TOKEN
    #   token: ""
    #   pki_mount: phoenix-pki    # the PKI engine (set up by `phoenixctl up --vault` or an admin)
    #   kv_mount: secret          # KV v2 engine for backend credentials and webhook tokens
    #   cert_ttl: 24h             # the longest certificate the PKI roles issue
    #   ca_bundle: null           # CA of Vault's own TLS certificate (default: system store)
    #   issuer_pem_bundle: null   # an intermediate CA to import instead of generating a root
    #   timeout: 5s               # per request
    election:
      ttl: 3s                     # leader lease; a dead leader is replaced within about this
    nats:
      url: nats://127.0.0.1:4222
      connect_timeout: 2s
    etcd:
      endpoints: [127.0.0.1:2379]
      dial_timeout: 2s
    readiness:
      probe_interval: 5s          # how often dependencies are re-checked
    pipeline: {}                  # metrics-pipeline only: see phoenixcp.platform.pipeline_config
    log:
      level: info                 # debug, info, warning, error
      format: json                # json or text

Every key can be set from the environment: ``PHOENIX_GRPC_LISTEN=0.0.0.0:7000``; see
:func:`phoenixcp.platform.config_loader.env_name`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Literal

from phoenixcp.core.durations import format_duration
from phoenixcp.core.identity import SERVICES
from phoenixcp.errors import ConfigError
from phoenixcp.platform.config_loader import FieldInvalid, load_mapping, read_yaml
from phoenixcp.platform.pipeline_config import ExporterConfig, PipelineConfig
from phoenixcp.platform.redact import redacted_urls
from phoenixcp.platform.secrets.vault import VaultConfig

__all__ = [
    "ElectionConfig",
    "EtcdConfig",
    "ExporterConfig",
    "GrpcConfig",
    "LogConfig",
    "MetricsConfig",
    "NatsConfig",
    "PipelineConfig",
    "ReadinessConfig",
    "ServiceConfig",
    "TLSConfig",
    "VaultConfig",
    "dialable_host",
    "load_service_config",
    "parse_host_port",
]

HOST_PORT_HELP = "host:port with a port from 0 to 65535, e.g. 127.0.0.1:7000 (0 = a free port)"


def parse_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:80`` for IPv6); raise ValueError saying what is allowed."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not {HOST_PORT_HELP}")
    return host, int(port)


def dialable_host(host: str) -> str:
    """The host a client on this machine dials for a server bound to ``host``."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _check_listen(value: str) -> None:
    try:
        parse_host_port(value)
    except ValueError:
        raise FieldInvalid("listen", f"{value!r} is not {HOST_PORT_HELP}") from None


@dataclass(frozen=True, kw_only=True)
class GrpcConfig:
    """Where the gRPC API listens and how long a drain may take."""

    listen: str = "127.0.0.1:0"
    drain_grace: timedelta = timedelta(seconds=10)

    def __post_init__(self) -> None:
        _check_listen(self.listen)


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """Where the Prometheus ``/metrics`` endpoint listens."""

    listen: str = "127.0.0.1:0"

    def __post_init__(self) -> None:
        _check_listen(self.listen)


@dataclass(frozen=True, kw_only=True)
class TLSConfig:
    """Where this service's mTLS certificate comes from."""

    source: Literal["local-ca", "files", "vault"] = "local-ca"
    ca_dir: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    cert_ttl: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if self.source == "files":
            for name in ("ca_file", "cert_file", "key_file"):
                if getattr(self, name) is None:
                    raise FieldInvalid(
                        name, "is missing: tls.source files needs ca_file, cert_file and key_file"
                    )
        if self.cert_ttl < timedelta(minutes=1):
            raise FieldInvalid("cert_ttl", "is too short; use 1m or longer")


@dataclass(frozen=True, kw_only=True)
class ElectionConfig:
    """Leader election in etcd (services other than metrics-pipeline)."""

    ttl: timedelta = timedelta(seconds=3)

    def __post_init__(self) -> None:
        if not timedelta(seconds=1) <= self.ttl <= timedelta(minutes=1):
            raise FieldInvalid("ttl", f"{format_duration(self.ttl)} is out of range; use 1s to 1m")


@dataclass(frozen=True, kw_only=True)
class NatsConfig:
    """The NATS server (JetStream enabled) the service talks to."""

    url: str = "nats://127.0.0.1:4222"
    connect_timeout: timedelta = timedelta(seconds=2)

    def __post_init__(self) -> None:
        for url in self.url.split(","):
            if not url.startswith(("nats://", "tls://")):
                raise FieldInvalid(
                    "url", f"{redacted_urls(self.url)!r} is not a nats:// or tls:// URL "
                    "(several: comma-separated)"
                )


@dataclass(frozen=True, kw_only=True)
class EtcdConfig:
    """The etcd cluster that holds leader election and replicated state."""

    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    dial_timeout: timedelta = timedelta(seconds=2)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise FieldInvalid("endpoints", "is empty; name at least one host:port")
        for ep in self.endpoints:
            try:
                if "://" in ep:
                    raise ValueError(ep)
                parse_host_port(ep)
            except ValueError:
                raise FieldInvalid(
                    "endpoints", f"{ep!r} is not host:port, e.g. 127.0.0.1:2379 (no scheme)"
                ) from None


@dataclass(frozen=True, kw_only=True)
class ReadinessConfig:
    """How dependencies are checked before and after the service reports SERVING."""

    probe_interval: timedelta = timedelta(seconds=5)


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """Structured logs on stderr."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """Everything a Phoenix service process needs at start; frozen once loaded."""

    service: str = ""
    replica: str = ""
    state_dir: Path = Path(".phoenix")
    announce_file: Path | None = None
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    vault: VaultConfig | None = None
    election: ElectionConfig = field(default_factory=ElectionConfig)
    nats: NatsConfig = field(default_factory=NatsConfig)
    etcd: EtcdConfig = field(default_factory=EtcdConfig)
    readiness: ReadinessConfig = field(default_factory=ReadinessConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        if self.tls.source == "vault" and self.vault is None:
            raise FieldInvalid("vault", "is missing: tls.source vault needs vault.addr")
        names = [s.name for s in SERVICES]
        if self.service and self.service not in names:
            raise FieldInvalid(
                "service", f"{self.service!r} is not a Phoenix service; use one of: "
                + ", ".join(names)
            )

    @property
    def replica_id(self) -> str:
        """This replica's id: ``replica`` when set, else ``<hostname>-<pid>``."""
        return self.replica or f"{socket.gethostname()}-{os.getpid()}"

    @property
    def ca_dir(self) -> Path:
        """The local CA's directory."""
        return self.tls.ca_dir or self.state_dir / "ca"


def load_service_config(
    path: Path | None, service: str, *, environ: Mapping[str, str] | None = None
) -> ServiceConfig:
    """Load ``path`` (or defaults only, when None) for ``service``; raise a one-line ConfigError.

    The ``service`` key, when the file has it, must name the service being started.
    """
    data = read_yaml(path) if path is not None else {}
    env = os.environ if environ is None else environ
    try:
        config = load_mapping(ServiceConfig, data, environ=env)
    except ConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}", key=exc.key) from None
    if config.service and config.service != service:
        raise ConfigError(
            f"{path}: service: the file is for {config.service!r}, but {service!r} is starting",
            key="service",
        )
    return replace(config, service=service)
