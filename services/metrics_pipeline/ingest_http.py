"""HTTP ingest: Prometheus remote-write 1.0 (``POST /api/v1/write``) and OTLP/HTTP
(``POST /v1/metrics``, protobuf, optionally gzip) on one port.

Answers: 204 (remote-write) or 200 with an ``ExportMetricsServiceResponse`` (OTLP) once every
point is durably queued; 400 with a message for bad data (never a 5xx, which would make the
sender retry bad data forever); 413 for a body over the limit; 415 for an unsupported
Content-Type; 429 with ``Retry-After`` when a queue is full.
"""

from __future__ import annotations

import math
import ssl
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)

from metrics_pipeline.ingest_metrics import IngestMetrics
from phoenixcp.core.batch import MetricBatch
from phoenixcp.errors import InvalidArgument, ResourceExhausted
from phoenixcp.platform.ingest import (
    TENANT_HEADER,
    decode_otlp_http,
    decode_remote_write,
    resolve_tenant,
)
from phoenixcp.platform.metrics_http import serve_app

__all__ = ["HttpIngest"]

Accept = Callable[[MetricBatch], Awaitable[None]]


class HttpIngest:
    """The HTTP receivers. ``start`` binds; ``shutdown`` (idempotent) finishes open requests."""

    def __init__(self, *, host: str, port: int, max_bytes: int, accept: Accept,
                 metrics: IngestMetrics, ssl_context: ssl.SSLContext | None = None) -> None:
        self._host, self._port = host, port
        self._max_bytes = max_bytes
        self._accept = accept
        self._metrics = metrics
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def start(self) -> int:
        # aiohttp refuses bodies over client_max_size with 413 before we read them.
        app = web.Application(client_max_size=self._max_bytes)
        app.router.add_post("/api/v1/write", self._remote_write)
        app.router.add_post("/v1/metrics", self._otlp)
        # The decoders inflate gzip themselves, bounded by max_bytes (a gzip bomb stops at the
        # limit); aiohttp's own inflating would hand them bodies already decompressed.
        self._runner, self.bound_port = await serve_app(
            app, host=self._host, port=self._port, ssl_context=self._ssl, auto_decompress=False)
        return self.bound_port

    async def shutdown(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _remote_write(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic_ns()

        async def work(body: bytes, tenant: str) -> tuple[MetricBatch, web.StreamResponse]:
            batch = decode_remote_write(
                body, tenant=tenant, content_encoding=request.headers.get("Content-Encoding"),
                max_bytes=self._max_bytes, received_at=started)
            return batch, web.Response(status=204)

        return await self._handle("remote_write", request, work)

    async def _otlp(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic_ns()

        async def work(body: bytes, tenant: str) -> tuple[MetricBatch, web.StreamResponse]:
            batch, rejected = decode_otlp_http(
                body, tenant=tenant, content_type=request.headers.get("Content-Type"),
                content_encoding=request.headers.get("Content-Encoding"),
                max_bytes=self._max_bytes, received_at=started)
            reply = ExportMetricsServiceResponse()
            if rejected.data_points:
                self._metrics.rejected.labels("otlp_http", "partial").inc(rejected.data_points)
                reply.partial_success.rejected_data_points = rejected.data_points
                reply.partial_success.error_message = rejected.message
            return batch, web.Response(body=reply.SerializeToString(),
                                       content_type="application/x-protobuf")

        return await self._handle("otlp_http", request, work)

    async def _handle(
        self, receiver: str, request: web.Request,
        work: Callable[[bytes, str], Awaitable[tuple[MetricBatch, web.StreamResponse]]],
    ) -> web.StreamResponse:
        m = self._metrics
        with m.latency.labels(receiver).time():
            try:
                tenant = resolve_tenant(request.headers.get(TENANT_HEADER))
                body = await request.read()
                batch, reply = await work(body, tenant)
            except InvalidArgument as exc:
                m.requests.labels(receiver, "invalid").inc()
                status = 415 if exc.field == "Content-Type" else 400
                return web.Response(status=status, text=f"{exc}\n")
            m.received.labels(receiver).inc(batch.sample_count)
            try:
                await self._accept(batch)
            except ResourceExhausted as exc:
                m.requests.labels(receiver, "queue_full").inc()
                m.rejected.labels(receiver, "queue_full").inc(batch.sample_count)
                retry = str(max(1, math.ceil(exc.retry_after or 1)))
                return web.Response(status=429, headers={"Retry-After": retry},
                                    text=f"{exc}; retry after {retry}s\n")
            m.requests.labels(receiver, "accepted").inc()
            m.accepted.labels(receiver).inc(batch.sample_count)
            return reply
