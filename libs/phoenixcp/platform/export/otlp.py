"""OTLP/gRPC out: a ``WriteRequest`` converted and sent to ``MetricsService/Export``."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import timedelta
from typing import Final

import cramjam
import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc

from phoenixcp.errors import ConfigError
from phoenixcp.platform.client_tls import is_loopback_host, read_client_tls_files
from phoenixcp.platform.config_loader import FieldInvalid
from phoenixcp.platform.export._otlp_convert import write_request_to_otlp
from phoenixcp.platform.export.config import OtlpExporterConfig
from phoenixcp.platform.export.result import ExportOutcome, ExportResult
from phoenixcp.platform.redact import redacted_endpoint

__all__ = ["OtlpExporter"]

_log = logging.getLogger(__name__)

_REJECTED: Final = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE,
                              grpc.StatusCode.DATA_LOSS})
_REASON_CHARS: Final = 512
#: How gRPC's reason reads when the receiver's certificate failed the check (BoringSSL's
#: verify error; gRPC's own hostname check).
_VERIFY_FAILED: Final = ("CERTIFICATE_VERIFY_FAILED", "Hostname Verification Check failed")
#: gRPC core reads its default CA roots from this file instead of grpcio's bundled ones.
_ROOTS_ENV: Final = "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"
#: gRPC's defaults for its first reconnect backoff and for the least time it gives one
#: connection attempt (TCP, TLS and HTTP/2 handshakes), kept unless the backoff cap is lower.
_INITIAL_RECONNECT: Final = timedelta(seconds=1)
_CONNECT_TIMEOUT: Final = timedelta(seconds=20)


class OtlpExporter:
    """Sends to one OTLP/gRPC receiver over one ``grpc.aio`` channel (opened on first use),
    in plaintext or over TLS as the config says (:attr:`OtlpExporterConfig.tls`).

    The TLS files are read at construction, which raises
    :class:`~phoenixcp.errors.ConfigError` naming the option, the file and why it cannot be
    used; plaintext to a target that is not loopback is logged as a warning then.
    INVALID_ARGUMENT (and OUT_OF_RANGE, DATA_LOSS) → REJECTED; every other status, including
    UNAVAILABLE (a failed TLS handshake, too), RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED, →
    RETRYABLE, so a misconfigured credential holds data back instead of dropping it. A
    partial success is SUCCESS with the receiver's message as the reason. ``export`` never
    raises and may run concurrently.
    """

    def __init__(self, *, config: OtlpExporterConfig) -> None:
        self._config = config
        self._channel: grpc.aio.Channel | None = None
        self._stub: metrics_service_pb2_grpc.MetricsServiceStub | None = None
        self._credentials: grpc.ChannelCredentials | None = None
        self._verify_hint = ""
        if config.tls:
            try:
                files = read_client_tls_files(config)
            except FieldInvalid as exc:
                raise ConfigError(f"export.{exc.field}: {exc}", key=exc.field) from None
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=files.ca_pem, private_key=files.key_pem,
                certificate_chain=files.cert_pem)
            self._verify_hint = _verify_hint(config)
        elif not config.target.startswith(("unix:", "unix-abstract:")) and not (
                is_loopback_host(_host(config.target))):
            _log.warning(
                "exporter %s sends metrics to %s unencrypted (plaintext gRPC): anyone on the "
                "path can read and change them. For TLS set ca_file (the receiver's CA), "
                "cert_file and key_file (mTLS), server_name (a name the certificate has, if "
                "not the target's host), or insecure: false (TLS with the CA roots bundled "
                "with grpcio)", config.name, redacted_endpoint(config.target),
                extra={"fields": {"exporter": config.name,
                                  "target": redacted_endpoint(config.target)}})

    @property
    def name(self) -> str:
        """The exporter's name in metrics and logs."""
        return self._config.name

    def _client(self) -> metrics_service_pb2_grpc.MetricsServiceStub:
        if self._stub is None:
            cfg = self._config
            options = _reconnect_options(cfg.reconnect_backoff_max)
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(cfg.target, options=options)
            else:
                if cfg.server_name is not None:
                    options.append(("grpc.ssl_target_name_override", cfg.server_name))
                self._channel = grpc.aio.secure_channel(cfg.target, self._credentials,
                                                        options=options)
            self._stub = metrics_service_pb2_grpc.MetricsServiceStub(  # type: ignore[no-untyped-call]
                self._channel)
        return self._stub

    async def export(self, body: bytes, *, tenant: str, snappy: bool = False) -> ExportOutcome:
        """Convert ``body`` and call Export; see the class contract for the outcome."""
        try:
            if snappy:
                body = bytes(cramjam.snappy.decompress_raw(body))
            request = write_request_to_otlp(body)
        except (DecodeError, cramjam.DecompressionError) as exc:
            return ExportOutcome(ExportResult.REJECTED, f"not a WriteRequest: {exc}")
        metadata = [(k.lower(), v) for k, v in self._config.headers.items()]
        if self._config.tenant_header and tenant:
            metadata.append(("x-scope-orgid", tenant))
        try:
            response = await self._client().Export(
                request, timeout=self._config.timeout.total_seconds(),
                metadata=metadata or None)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            result = ExportResult.REJECTED if code in _REJECTED else ExportResult.RETRYABLE
            reason = f"{code.name}: {exc.details()}"
            if self._verify_hint and any(text in reason for text in _VERIFY_FAILED):
                reason = reason[:_REASON_CHARS - len(self._verify_hint)] + self._verify_hint
            return ExportOutcome(result, reason[:_REASON_CHARS])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the contract: never raise into the worker
            return ExportOutcome(ExportResult.RETRYABLE,
                                 f"{type(exc).__name__}: {exc}"[:_REASON_CHARS])
        partial = response.partial_success
        if partial.rejected_data_points:
            return ExportOutcome(
                ExportResult.SUCCESS,
                f"partial success: {partial.rejected_data_points} points rejected: "
                f"{partial.error_message}"[:_REASON_CHARS])
        return ExportOutcome(ExportResult.SUCCESS)

    async def shutdown(self) -> None:
        """Close the channel; idempotent."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None


def _reconnect_options(most: timedelta) -> list[tuple[str, str | int]]:
    """Channel options for gRPC's reconnect backoff (1 s growing 1.6x, with jitter): at most
    ``most``, starting at 1 s or ``most`` if lower; a connection attempt gets 20 s, or
    ``most`` if lower but at least 1 s (``min_reconnect_backoff_ms`` is gRPC's minimum
    connect timeout, not a backoff)."""
    def ms(duration: timedelta) -> int:
        return max(1, round(duration.total_seconds() * 1000))

    return [
        ("grpc.max_reconnect_backoff_ms", ms(most)),
        ("grpc.initial_reconnect_backoff_ms", ms(min(_INITIAL_RECONNECT, most))),
        ("grpc.min_reconnect_backoff_ms",
         ms(min(_CONNECT_TIMEOUT, max(_INITIAL_RECONNECT, most)))),
    ]


def _host(target: str) -> str:
    """The host of a ``HOST:PORT`` target (an IPv6 address without its brackets)."""
    return target.rsplit(":", 1)[0].strip("[]")


def _verify_hint(config: OtlpExporterConfig) -> str:
    """What the exporter checked the receiver's certificate against, for a failed check."""
    if config.ca_file:
        trusted = f"ca_file {config.ca_file}"
    elif roots := os.environ.get(_ROOTS_ENV):
        trusted = f"{_ROOTS_ENV} {roots}"
    else:
        trusted = "the CA roots bundled with grpcio"
    name = config.server_name or _host(config.target)
    return f" (checked against {trusted}, for the name {name})"
