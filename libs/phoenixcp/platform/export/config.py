"""Exporter and export-worker settings: frozen, validated, durations as ``timedelta``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final

from phoenixcp.errors import ConfigError
from phoenixcp.platform.client_tls import (
    check_client_tls,
    check_grpc_client_tls,
    grpc_uses_tls,
)
from phoenixcp.platform.config_loader import FieldInvalid
from phoenixcp.platform.redact import redacted_endpoint

__all__ = ["ExportWorkerConfig", "OtlpExporterConfig", "RemoteWriteConfig"]

#: The export worker's longest wait between retries, and so an OTLP exporter's longest
#: reconnect backoff, unless configured.
_BACKOFF_MAX: Final = timedelta(seconds=30)


def _positive(prefix: str, obj: object, *keys: str) -> None:
    for key in keys:
        value = getattr(obj, key)
        if value <= (timedelta(0) if isinstance(value, timedelta) else 0):
            raise ConfigError(f"{prefix}.{key}: must be positive (got {value})", key=key)


@dataclass(frozen=True, kw_only=True)
class RemoteWriteConfig:
    """A Prometheus remote-write 1.0 backend (VictoriaMetrics, Prometheus, Mimir)."""

    url: str
    name: str = "remote-write"
    timeout: timedelta = timedelta(seconds=30)
    #: Send ``X-Scope-OrgID: <tenant>`` (Mimir, multi-tenant VictoriaMetrics); off for a
    #: single-tenant backend.
    tenant_header: bool = False
    #: Extra request headers (e.g. Authorization).
    headers: dict[str, str] = field(default_factory=dict)
    #: Most keep-alive connections to the backend.
    max_connections: int = 16
    #: TLS (https:// only), named as in Prometheus' ``tls_config``; see
    #: :mod:`phoenixcp.platform.client_tls`. Verify the backend against this PEM CA bundle
    #: instead of the system's roots ...
    ca_file: str | None = None
    #: ... present this client certificate and key (mTLS; both or neither) ...
    cert_file: str | None = None
    key_file: str | None = None
    #: ... send this name as SNI and check the certificate for it instead of the URL's host ...
    server_name: str | None = None
    #: ... or check no certificate at all (the exporter logs a warning): tests only.
    insecure_skip_verify: bool = False

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"export.url: {redacted_endpoint(self.url)!r} is not an http:// "
                              "or https:// URL", key="url")
        _positive("export", self, "timeout", "max_connections")
        try:
            check_client_tls(self, url=self.url)
        except FieldInvalid as exc:
            raise ConfigError(f"export.{exc.field}: {exc}", key=exc.field) from None


@dataclass(frozen=True, kw_only=True)
class OtlpExporterConfig:
    """An OTLP/gRPC metrics receiver (a collector or a vendor)."""

    target: str
    name: str = "otlp"
    timeout: timedelta = timedelta(seconds=30)
    #: Plaintext when true, TLS when false; unset (the default): TLS exactly when one of the
    #: options below is set, so a config without them stays plaintext as it always was. See
    #: :mod:`phoenixcp.platform.client_tls`; true together with a TLS option is refused.
    insecure: bool | None = None
    #: Verify the receiver against this PEM CA bundle instead of the roots bundled with
    #: grpcio (``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` replaces those; ``SSL_CERT_FILE`` does
    #: not) ...
    ca_file: str | None = None
    #: ... present this client certificate and key (mTLS; both or neither) ...
    cert_file: str | None = None
    key_file: str | None = None
    #: ... check the certificate for this name (also sent as SNI and ``:authority``) instead
    #: of the target's host: gRPC's ``grpc.ssl_target_name_override``.
    server_name: str | None = None
    #: Send the tenant as ``x-scope-orgid`` gRPC metadata.
    tenant_header: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    #: gRPC's reconnect backoff grows no further than this (gRPC's own limit is 2 minutes).
    #: Set it to the export worker's ``backoff_max``: exports fail at once while gRPC waits
    #: to reconnect, so a receiver that is back is reached about as soon as the worker
    #: retries, not up to 2 minutes later.
    reconnect_backoff_max: timedelta = _BACKOFF_MAX

    def __post_init__(self) -> None:
        if ":" not in self.target:
            raise ConfigError(f"export.target: {redacted_endpoint(self.target)!r} is not "
                              "HOST:PORT", key="target")
        _positive("export", self, "timeout", "reconnect_backoff_max")
        try:
            check_grpc_client_tls(self)
        except FieldInvalid as exc:
            raise ConfigError(f"export.{exc.field}: {exc}", key=exc.field) from None

    @property
    def tls(self) -> bool:
        """Whether the exporter uses TLS (see ``insecure``)."""
        return grpc_uses_tls(self)


@dataclass(frozen=True, kw_only=True)
class ExportWorkerConfig:
    """How one worker drains its queue into its exporter."""

    #: A request carries at most this many samples (records are not split) ...
    max_samples: int = 10_000
    #: ... and at most about this many uncompressed bytes.
    max_bytes: int = 4 << 20
    #: A partial batch is sent once its first record has waited this long.
    flush_interval: timedelta = timedelta(seconds=1)
    #: Requests in flight at once. Use 1 for Prometheus, which refuses out-of-order samples.
    concurrency: int = 4
    #: Retry backoff: exponential from ``backoff_initial`` up to ``backoff_max``, plus jitter.
    backoff_initial: timedelta = timedelta(milliseconds=100)
    backoff_max: timedelta = _BACKOFF_MAX
    #: Queue records are snappy-compressed WriteRequests: a batch is the records' snappy blocks
    #: joined (``snappy_blocks``), never decompressed and compressed again.
    snappy_payloads: bool = False

    def __post_init__(self) -> None:
        _positive("export", self, "max_samples", "max_bytes", "flush_interval",
                  "concurrency", "backoff_initial", "backoff_max")
        if self.backoff_max < self.backoff_initial:
            raise ConfigError("export.backoff_max: must not be below backoff_initial",
                              key="backoff_max")
