"""OTLP/gRPC ingest: ``opentelemetry.proto.collector.metrics.v1.MetricsService/Export``.

Invalid points are refused through OTLP's ``partial_success`` (the rest is accepted); a request
that does not decode at all is INVALID_ARGUMENT; a full queue is RESOURCE_EXHAUSTED with a
``google.rpc.RetryInfo`` detail, which OTLP exporters honour before they retry.

``Export`` is registered without a request deserializer: the handler gets the request's bytes
and ``decode_otlp`` walks them once, instead of grpc parsing them into messages that the
converter would only serialise again (ADR 0013).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    DESCRIPTOR,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from metrics_pipeline.ingest_metrics import IngestMetrics
from phoenixcp.core.batch import MetricBatch
from phoenixcp.errors import InvalidArgument, ResourceExhausted, Unavailable
from phoenixcp.platform.ingest import (
    TENANT_METADATA_KEY,
    decode_otlp,
    export_response,
    resolve_tenant,
)

__all__ = ["OtlpIngest"]

Accept = Callable[[MetricBatch], Awaitable[None]]
RECEIVER = "otlp_grpc"
SERVICE = DESCRIPTOR.services_by_name["MetricsService"].full_name


class OtlpMetricsServicer:
    """Decodes each Export into a batch and hands it to ``accept``."""

    def __init__(self, *, accept: Accept, metrics: IngestMetrics) -> None:
        self._accept = accept
        self._metrics = metrics

    def handler(self) -> grpc.GenericRpcHandler:
        """``MetricsService/Export`` with the request left as bytes (no deserializer)."""
        export: grpc.RpcMethodHandler[bytes, ExportMetricsServiceResponse]
        export = grpc.unary_unary_rpc_method_handler(
            self.Export, request_deserializer=None,
            response_serializer=ExportMetricsServiceResponse.SerializeToString)
        return grpc.method_handlers_generic_handler(SERVICE, {"Export": export})

    async def Export(self, request: bytes | ExportMetricsServiceRequest,
                     context: grpc.aio.ServicerContext[Any, Any]
                     ) -> ExportMetricsServiceResponse:
        m = self._metrics
        started = time.monotonic_ns()
        with m.latency.labels(RECEIVER).time():
            try:
                metadata = dict(context.invocation_metadata() or ())
                tenant = resolve_tenant(str(metadata.get(TENANT_METADATA_KEY) or ""),
                                        spiffe_id=_peer_spiffe_id(context))
                batch, rejected = decode_otlp(request, tenant=tenant, received_at=started)
            except InvalidArgument as exc:
                m.requests.labels(RECEIVER, "invalid").inc()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            m.received.labels(RECEIVER).inc(batch.sample_count + rejected.data_points)
            reply = export_response(rejected)
            if rejected.data_points:
                m.rejected.labels(RECEIVER, "partial").inc(rejected.data_points)
            if batch.sample_count:
                try:
                    await self._accept(batch)
                except ResourceExhausted as exc:
                    m.requests.labels(RECEIVER, "queue_full").inc()
                    m.rejected.labels(RECEIVER, "queue_full").inc(batch.sample_count)
                    await context.abort_with_status(rpc_status.to_status(_exhausted(exc)))
                except Unavailable as exc:  # the queue's disk failed: the sender keeps the data
                    m.requests.labels(RECEIVER, "unavailable").inc()
                    m.rejected.labels(RECEIVER, "unavailable").inc(batch.sample_count)
                    await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
                m.accepted.labels(RECEIVER).inc(batch.sample_count)
            m.requests.labels(RECEIVER, "accepted").inc()
            return reply


def _exhausted(exc: ResourceExhausted) -> status_pb2.Status:
    retry = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=max(1, round(exc.retry_after or 1))))
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=str(exc))
    status.details.add().Pack(retry)
    return status


def _peer_spiffe_id(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    auth = context.auth_context() or {}
    values = list(auth.get("peer_spiffe_id") or [])
    return values[0].decode() if values else None


class OtlpIngest:
    """The OTLP/gRPC receiver on its own port, with ingest TLS as configured."""

    def __init__(self, *, listen: str, accept: Accept, metrics: IngestMetrics,
                 credentials: grpc.ServerCredentials | None, max_bytes: int) -> None:
        self._listen = listen
        self._credentials = credentials
        self._server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.so_reuseport", 0),
        ])
        self._server.add_generic_rpc_handlers(
            (OtlpMetricsServicer(accept=accept, metrics=metrics).handler(),))
        self.bound_port: int | None = None
        self._stopped = False

    async def start(self) -> int:
        if self._credentials is None:
            port = self._server.add_insecure_port(self._listen)
        else:
            port = self._server.add_secure_port(self._listen, self._credentials)
        if not port:
            raise OSError(f"cannot listen on {self._listen} for OTLP/gRPC")
        await self._server.start()
        self.bound_port = port
        return port

    async def shutdown(self, grace: float = 5.0) -> None:
        if not self._stopped:
            self._stopped = True
            await self._server.stop(grace)
