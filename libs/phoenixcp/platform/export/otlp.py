"""OTLP/gRPC out: a ``WriteRequest`` converted and sent to ``MetricsService/Export``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Final

import cramjam
import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc

from phoenixcp.platform.export._otlp_convert import write_request_to_otlp
from phoenixcp.platform.export.config import OtlpExporterConfig
from phoenixcp.platform.export.result import ExportOutcome, ExportResult

__all__ = ["OtlpExporter"]

_REJECTED: Final = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE,
                              grpc.StatusCode.DATA_LOSS})
_REASON_CHARS: Final = 512


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


class OtlpExporter:
    """Sends to one OTLP/gRPC receiver over one ``grpc.aio`` channel (opened on first use).

    INVALID_ARGUMENT (and OUT_OF_RANGE, DATA_LOSS) → REJECTED; every other status, including
    UNAVAILABLE, RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED, → RETRYABLE, so a misconfigured
    credential holds data back instead of dropping it. A partial success is SUCCESS with
    the receiver's message as the reason. Never raises; ``export`` may run concurrently.
    """

    def __init__(self, *, config: OtlpExporterConfig) -> None:
        self._config = config
        self._channel: grpc.aio.Channel | None = None
        self._stub: metrics_service_pb2_grpc.MetricsServiceStub | None = None

    @property
    def name(self) -> str:
        """The exporter's name in metrics and logs."""
        return self._config.name

    def _client(self) -> metrics_service_pb2_grpc.MetricsServiceStub:
        if self._stub is None:
            cfg = self._config
            if cfg.insecure:
                self._channel = grpc.aio.insecure_channel(cfg.target)
            else:
                creds = grpc.ssl_channel_credentials(_read(cfg.ca_file), _read(cfg.key_file),
                                                     _read(cfg.cert_file))
                self._channel = grpc.aio.secure_channel(cfg.target, creds)
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
            return ExportOutcome(result, f"{code.name}: {exc.details()}"[:_REASON_CHARS])
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
