"""HTTP ingest: Prometheus remote-write 1.0 (``POST /api/v1/write``) and OTLP/HTTP
(``POST /v1/metrics``, protobuf, optionally gzip) on one port, served by
:class:`~phoenixcp.platform.ingest.HttpServer` (ADR 0010).

Answers: 204 (remote-write) or 200 with an ``ExportMetricsServiceResponse`` (OTLP) once every
point is durably queued; 400 with a message for bad data (never a 5xx, which would make the
sender retry bad data forever); 413 for a body over the limit; 415 for an unsupported
Content-Type; 429 with ``Retry-After`` when a queue is full. The tenant is the
``X-Scope-OrgID`` header, else the client certificate's SPIFFE ID (mTLS ingest), else
``default`` (tenancy.py), as for OTLP/gRPC.
"""

from __future__ import annotations

import functools
import math
import ssl
from collections.abc import Awaitable, Callable
from datetime import timedelta
from time import monotonic_ns
from typing import Any

from metrics_pipeline.ingest_metrics import IngestMetrics
from phoenixcp.core.batch import MetricBatch
from phoenixcp.errors import InvalidArgument, ResourceExhausted, Unavailable
from phoenixcp.platform.http import HttpLimits, HttpRequest, HttpResponse, HttpServer
from phoenixcp.platform.ingest import (
    TENANT_HEADER,
    Rejected,
    decode_otlp_http,
    decode_remote_write,
    export_response,
    resolve_tenant,
)

__all__ = ["HttpIngest"]

Accept = Callable[[MetricBatch], Awaitable[None]]
Decode = Callable[[HttpRequest, str], tuple[MetricBatch, HttpResponse]]

PROTOBUF = "application/x-protobuf"
_NO_CONTENT = HttpResponse(204)
_UNAVAILABLE_RETRY = "30"
"""Retry-After (s) when a queue cannot write to disk: it stays so until the replica restarts
(runbook queue-disk-failing), so senders should not hammer it."""
_OTLP_ALL_ACCEPTED = HttpResponse(200, export_response(Rejected()).SerializeToString(),
                                  content_type=PROTOBUF)


class HttpIngest:
    """The HTTP receivers. ``start`` binds; ``shutdown`` (idempotent) finishes open requests."""

    def __init__(self, *, host: str, port: int, max_bytes: int, accept: Accept,
                 metrics: IngestMetrics, ssl_context: ssl.SSLContext | None = None) -> None:
        self._host, self._port = host, port
        self._max_bytes = max_bytes
        self._accept = accept
        self._metrics = metrics
        self._ssl = ssl_context
        self._server: HttpServer | None = None
        # ``.labels()`` costs microseconds; the children it returns are cached, and still
        # created on first use, as before.
        self._child: Callable[..., Any] = functools.cache(
            lambda metric, *values: metric.labels(*values))
        self.bound_port: int | None = None

    async def start(self) -> int:
        # The decoders inflate gzip themselves, bounded by max_bytes (a gzip bomb stops at the
        # limit); the server hands them bodies as sent, Content-Encoding intact.
        self._server = HttpServer({
            ("POST", "/api/v1/write"): functools.partial(
                self._receive, "remote_write", self._decode_remote_write),
            ("POST", "/v1/metrics"): functools.partial(self._receive, "otlp_http",
                                                       self._decode_otlp),
        }, host=self._host, port=self._port, ssl_context=self._ssl,
            limits=HttpLimits(max_body_bytes=self._max_bytes))
        self.bound_port = await self._server.start()
        return self.bound_port

    async def shutdown(self, grace: float = 60.0) -> None:
        """Stop accepting; requests received finish within ``grace`` seconds. Idempotent."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown(timedelta(seconds=grace))

    def _decode_remote_write(self, request: HttpRequest,
                             tenant: str) -> tuple[MetricBatch, HttpResponse]:
        batch = decode_remote_write(
            request.body, tenant=tenant, content_encoding=request.header("Content-Encoding"),
            max_bytes=self._max_bytes, received_at=request.received_ns)
        return batch, _NO_CONTENT

    def _decode_otlp(self, request: HttpRequest, tenant: str) -> tuple[MetricBatch, HttpResponse]:
        batch, rejected = decode_otlp_http(
            request.body, tenant=tenant, content_type=request.header("Content-Type"),
            content_encoding=request.header("Content-Encoding"),
            max_bytes=self._max_bytes, received_at=request.received_ns)
        if not rejected.data_points:
            return batch, _OTLP_ALL_ACCEPTED
        self._child(self._metrics.rejected, "otlp_http", "partial").inc(rejected.data_points)
        return batch, HttpResponse(200, export_response(rejected).SerializeToString(),
                                   content_type=PROTOBUF)

    async def _receive(self, receiver: str, decode: Decode, request: HttpRequest) -> HttpResponse:
        m, child = self._metrics, self._child
        try:
            try:
                tenant = resolve_tenant(request.header(TENANT_HEADER),
                                        spiffe_id=_peer_spiffe_id(request))
                batch, reply = decode(request, tenant)
            except InvalidArgument as exc:
                child(m.requests, receiver, "invalid").inc()
                status = 415 if exc.field == "Content-Type" else 400
                return HttpResponse.text(status, f"{exc}\n")
            child(m.received, receiver).inc(batch.sample_count)
            try:
                await self._accept(batch)
            except ResourceExhausted as exc:
                child(m.requests, receiver, "queue_full").inc()
                child(m.rejected, receiver, "queue_full").inc(batch.sample_count)
                retry = str(max(1, math.ceil(exc.retry_after or 1)))
                return HttpResponse.text(429, f"{exc}; retry after {retry}s\n",
                                         headers={"Retry-After": retry})
            except Unavailable as exc:  # the queue's disk failed: keep the data, send later
                child(m.requests, receiver, "unavailable").inc()
                child(m.rejected, receiver, "unavailable").inc(batch.sample_count)
                return HttpResponse.text(503, f"{exc}; retry after {_UNAVAILABLE_RETRY}s\n",
                                         headers={"Retry-After": _UNAVAILABLE_RETRY})
            child(m.requests, receiver, "accepted").inc()
            child(m.accepted, receiver).inc(batch.sample_count)
            return reply
        finally:
            # From the headers parsed to the answer ready, as aiohttp's handler timing was.
            child(m.latency, receiver).observe((monotonic_ns() - request.received_ns) / 1e9)


def _peer_spiffe_id(request: HttpRequest) -> str | None:
    """The ``spiffe://`` URI SAN of the client certificate (mTLS ingest), else None; only
    read when the request names no tenant header."""
    if request.ssl_object is None or request.header(TENANT_HEADER):
        return None
    cert = request.ssl_object.getpeercert() or {}
    for entry in cert.get("subjectAltName", ()):
        if (isinstance(entry, tuple) and entry[0] == "URI" and isinstance(entry[1], str)
                and entry[1].startswith("spiffe://")):
            return entry[1]
    return None
