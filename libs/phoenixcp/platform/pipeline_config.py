"""The ``pipeline:`` section of the config file: metrics-pipeline's ingest, queue and exporters.

Example::

    pipeline:
      otlp_grpc_listen: 127.0.0.1:4317   # OTLP/gRPC MetricsService/Export
      http_listen: 127.0.0.1:4318        # POST /v1/metrics (OTLP/HTTP) and /api/v1/write
      ingest_tls: off                    # off, tls (server cert) or mtls (client certs too)
      max_request_bytes: 10485760        # larger requests are refused (413 / INVALID_ARGUMENT)
      data_dir: null                     # queues live here; default <state_dir>/pipeline/<replica>
      queue_max_bytes: 536870912         # per exporter; when full: 429 / RESOURCE_EXHAUSTED
      queue_fsync: interval              # interval: answered once written (survives SIGKILL),
                                         # synced every queue_fsync_interval; always: answered
                                         # once fdatasync'ed too (survives a power cut; ingest
                                         # p99 is then the disk's sync p99); never: benchmarks
      queue_fsync_interval: 1s           # interval: the most a power cut can lose
      queue_preallocate: true            # always only: zero-fill the next segment ahead
                                         # (faster syncs); false on tmpfs (zeros take memory)
      exporters:
        - name: victoria
          type: remote-write             # remote-write or otlp
          endpoint: http://127.0.0.1:8428/api/v1/write   # otlp: host:port
          timeout: 10s
          concurrency: 4                 # requests in flight
          max_batch_samples: 10000       # records are combined up to this (one request);
                                         # larger ones go out as they came. Default 10000
                                         # for remote-write (as vmagent), 2000 for otlp
          flush_interval: 1s
          tenant_header: false           # send X-Scope-OrgID (Mimir, VictoriaMetrics cluster)
          # TLS, remote-write to an https:// endpoint only (as Prometheus' tls_config):
          ca_file: null                  # PEM CA bundle to verify the backend with, instead
                                         # of the system's roots
          cert_file: null                # client certificate (PEM) for mTLS ...
          key_file: null                 # ... and its unencrypted private key: both or neither
          server_name: null              # name for SNI and the certificate check, when it is
                                         # not the endpoint's host (e.g. an IP endpoint)
          insecure_skip_verify: false    # check no certificate at all (logged; tests only)
        - name: collector
          type: otlp                     # OTLP/gRPC MetricsService/Export
          endpoint: otel-collector.internal:4317   # host:port, no scheme
          insecure: null                 # true: plaintext; false: TLS; null (the default):
                                         # TLS when a TLS key below is set, else plaintext
          ca_file: /etc/phoenix/collector-ca.pem   # as for remote-write; null: the CA roots
                                         # bundled with grpcio (not the system's)
          cert_file: null                # client certificate (PEM) for mTLS ...
          key_file: null                 # ... and its unencrypted private key: both or neither
          server_name: null              # name checked instead of the endpoint's host (gRPC's
                                         # ssl_target_name_override; also sent as :authority)
                                         # no insecure_skip_verify: gRPC always verifies
      static_policies:                   # applied to every tenant, besides etcd's policies
        - id: cap-everything
          cap: {max_series: 120000, scope: CAP_SCOPE_PER_TENANT}
      window_interval: 10s               # window reports to NATS phoenix.telemetry.pipeline.*
      merge_flush_interval: 15s          # caps, top-K and roll-ups emit merged series this often

An ``otlp`` exporter refuses ``insecure: true`` together with a TLS key (it would silently
send in plaintext). The TLS files are read when the config is loaded: a missing or unusable
file (not PEM, a key that does not match the certificate, an encrypted key) stops the start
with the key, the file and the reason.

With no exporter, the pipeline accepts and counts what it receives and forwards nothing: say so
loudly, it is only for trying Phoenix out (``phoenixctl up`` starts a counting sink instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from phoenixcp.core.durations import format_duration
from phoenixcp.platform.client_tls import (
    check_client_tls,
    check_grpc_client_tls,
    client_ssl_context,
    read_client_tls_files,
)
from phoenixcp.platform.config_loader import FieldInvalid
from phoenixcp.platform.redact import redacted_endpoint

__all__ = ["ExporterConfig", "PipelineConfig"]

_DEFAULT_BATCH_SAMPLES = {"remote-write": 10_000, "otlp": 2_000}
"""``max_batch_samples`` when unset, by exporter type (ADR 0006)."""

_NAME_HELP = "a name of letters, digits, - and _ (it names the queue directory and metrics)"


@dataclass(frozen=True, kw_only=True)
class ExporterConfig:
    """One backend the pipeline forwards to, through its own durable queue."""

    name: str
    type: Literal["remote-write", "otlp"]
    endpoint: str
    timeout: timedelta = timedelta(seconds=10)
    concurrency: int = 4
    max_batch_samples: int | None = None
    """Unset: 10,000 for remote-write (vmagent's ``-remoteWrite.maxRowsPerBlock``), 2,000
    for otlp (an OTLP point repeats its attributes: 2,000 stay far under a collector's
    4 MiB gRPC limit): :attr:`batch_samples`."""
    flush_interval: timedelta = timedelta(seconds=1)
    tenant_header: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False
    insecure: bool | None = None
    """otlp only: plaintext when true, TLS when false, unset: TLS when a TLS file or
    ``server_name`` is set."""

    @property
    def batch_samples(self) -> int:
        """``max_batch_samples``, or the type's default when it is unset."""
        if self.max_batch_samples is None:
            return _DEFAULT_BATCH_SAMPLES[self.type]
        return self.max_batch_samples

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise FieldInvalid("name", f"{self.name!r} is not {_NAME_HELP}")
        shown = redacted_endpoint(self.endpoint)
        if self.type == "remote-write" and not self.endpoint.startswith(("http://", "https://")):
            raise FieldInvalid("endpoint", f"{shown!r} is not an http(s):// URL, e.g. "
                               "http://127.0.0.1:8428/api/v1/write")
        if self.type == "otlp" and "://" in self.endpoint:
            raise FieldInvalid("endpoint", f"{shown!r}: give host:port for otlp (TLS "
                               "is on with ca_file or insecure: false, not by a scheme)")
        if not 1 <= self.concurrency <= 64:
            raise FieldInvalid("concurrency", f"{self.concurrency} is out of range; use 1 to 64")
        if not 1 <= self.batch_samples <= 1_000_000:
            raise FieldInvalid("max_batch_samples",
                               f"{self.batch_samples} is out of range; use 1 to 1000000")
        # The TLS files are read here, so a bad one stops the start with its key.
        if self.type == "otlp":
            if self.insecure_skip_verify:
                raise FieldInvalid("insecure_skip_verify", "is an option of type remote-write; "
                                   "an otlp exporter always verifies the receiver's "
                                   "certificate: give its CA in ca_file, or use insecure: true "
                                   "for plaintext")
            check_grpc_client_tls(self)
            read_client_tls_files(self)
        else:
            if self.insecure is not None:
                raise FieldInvalid("insecure", "is an option of type otlp; a remote-write "
                                   "exporter uses TLS when its endpoint is https://")
            check_client_tls(self, url=self.endpoint)
            client_ssl_context(self)


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """Where metrics-pipeline listens, how much it queues, where it forwards."""

    otlp_grpc_listen: str = "127.0.0.1:4317"
    http_listen: str = "127.0.0.1:4318"
    ingest_tls: Literal["off", "tls", "mtls"] = "off"
    max_request_bytes: int = 10 * 1024 * 1024
    data_dir: Path | None = None
    queue_max_bytes: int = 512 * 1024 * 1024
    queue_fsync: Literal["always", "interval", "never"] = "interval"
    """When an accepted request counts as queued (ADR 0016): ``interval`` once written to the
    operating system, ``always`` once also synced to the disk."""
    queue_fsync_interval: timedelta = timedelta(seconds=1)
    queue_preallocate: bool = True
    exporters: tuple[ExporterConfig, ...] = ()
    static_policies: tuple[dict[str, Any], ...] = ()
    """Policies applied to every tenant besides those in etcd, as ``Policy`` documents
    (state.proto in YAML form); for deployments that keep policies in the config file."""
    policy_flush_check: timedelta = timedelta(milliseconds=500)
    merge_flush_interval: timedelta = timedelta(seconds=15)
    """How often caps, top-K and roll-ups emit merged series (aggregate policies say their
    own ``flush_interval``)."""
    window_interval: timedelta = timedelta(seconds=10)

    def __post_init__(self) -> None:
        if not 1024 <= self.max_request_bytes <= 256 * 1024 * 1024:
            raise FieldInvalid("max_request_bytes", f"{self.max_request_bytes} is out of range; "
                               "use 1024 to 268435456")
        if not timedelta(milliseconds=10) <= self.queue_fsync_interval <= timedelta(minutes=1):
            interval = format_duration(self.queue_fsync_interval)
            raise FieldInvalid("queue_fsync_interval",
                               f"{interval} is out of range; use 10ms to 1m")
        if self.queue_max_bytes < 1024 * 1024:
            raise FieldInvalid("queue_max_bytes", f"{self.queue_max_bytes} is too small; "
                               "use at least 1048576 (1 MiB)")
        names = [e.name for e in self.exporters]
        for name in names:
            if names.count(name) > 1:
                raise FieldInvalid("exporters", f"the name {name!r} is used twice; names "
                                   "must be unique (each has its own queue)")
