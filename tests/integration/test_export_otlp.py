"""OtlpExporter against a real in-process grpc.aio OTLP MetricsService that records calls."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.metrics.v1 import metrics_pb2

from phoenixcp.platform.export import (
    ExportResult,
    ExportWorker,
    ExportWorkerConfig,
    OtlpExporter,
    OtlpExporterConfig,
)
from phoenixcp.platform.queue import DurableQueue, QueueConfig
from tests.integration._coord_support import wait_until
from tests.integration._export_support import MetricType, numbered, write_request

pytestmark = pytest.mark.integration

Request = metrics_service_pb2.ExportMetricsServiceRequest


class Receiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.metadata: list[dict[str, str]] = []
        self.fail: grpc.StatusCode | None = None

    async def Export(self, request: Request,
                     context: grpc.aio.ServicerContext[Request, object]) -> object:
        if self.fail is not None:
            await context.abort(self.fail, "receiver says no")
        self.requests.append(request)
        self.metadata.append({str(k): str(v) for k, v in context.invocation_metadata() or ()})
        return metrics_service_pb2.ExportMetricsServiceResponse()


async def serve(port: int = 0) -> tuple[grpc.aio.Server, Receiver, int]:
    """A started receiver on ``port`` of 127.0.0.1 (0: a free one)."""
    server = grpc.aio.server()
    servicer = Receiver()
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
        servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    assert bound, f"cannot listen on 127.0.0.1:{port}"
    await server.start()
    return server, servicer, bound


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    server, servicer, port = await serve()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


def metrics_by_name(request: Request) -> dict[str, metrics_pb2.Metric]:
    return {m.name: m for rm in request.resource_metrics for sm in rm.scope_metrics
            for m in sm.metrics}


async def test_counters_gauges_and_histograms_are_typed_from_metadata(
        receiver: tuple[Receiver, str]) -> None:
    servicer, target = receiver
    t = 1_700_000_000_000
    hist = {"__name__": "rpc_seconds_bucket", "job": "api"}
    body = write_request([
        ({"__name__": "http_requests_total", "code": "200"}, [(t, 7.0)]),
        ({"__name__": "temperature", "room": "a"}, [(t, 21.5)]),
        ({"__name__": "mystery"}, [(t, 1.0)]),
        ({**hist, "le": "0.1"}, [(t, 3.0)]),
        ({**hist, "le": "1"}, [(t, 5.0)]),
        ({**hist, "le": "+Inf"}, [(t, 6.0)]),
        ({"__name__": "rpc_seconds_sum", "job": "api"}, [(t, 2.5)]),
        ({"__name__": "rpc_seconds_count", "job": "api"}, [(t, 6.0)]),
        ({"__name__": "broken_bucket", "le": "1"}, [(t, 1.0)]),  # no +Inf: stays a gauge
    ], {"http_requests_total": MetricType.COUNTER, "temperature": MetricType.GAUGE,
        "rpc_seconds": MetricType.HISTOGRAM, "broken": MetricType.HISTOGRAM})
    exporter = OtlpExporter(config=OtlpExporterConfig(target=target, tenant_header=True))
    outcome = await exporter.export(body, tenant="acme")
    assert outcome.result is ExportResult.SUCCESS, outcome.reason
    metrics = metrics_by_name(servicer.requests[0])
    counter = metrics["http_requests_total"].sum
    assert counter.is_monotonic and counter.aggregation_temporality == 2
    assert counter.data_points[0].as_double == 7.0
    assert counter.data_points[0].time_unix_nano == t * 1_000_000
    assert metrics["temperature"].gauge.data_points[0].as_double == 21.5
    assert metrics["mystery"].WhichOneof("data") == "gauge"
    point = metrics["rpc_seconds"].histogram.data_points[0]
    assert list(point.explicit_bounds) == [0.1, 1.0]
    assert list(point.bucket_counts) == [3, 2, 1]
    assert (point.count, point.sum) == (6, 2.5)
    assert {a.key: a.value.string_value for a in point.attributes} == {"job": "api"}
    assert metrics["broken_bucket"].WhichOneof("data") == "gauge"
    assert servicer.metadata[0]["x-scope-orgid"] == "acme"
    await exporter.shutdown()


async def test_status_codes_map_to_outcomes(receiver: tuple[Receiver, str]) -> None:
    servicer, target = receiver
    exporter = OtlpExporter(config=OtlpExporterConfig(target=target))
    for code, result in ((grpc.StatusCode.INVALID_ARGUMENT, ExportResult.REJECTED),
                         (grpc.StatusCode.UNAVAILABLE, ExportResult.RETRYABLE),
                         (grpc.StatusCode.RESOURCE_EXHAUSTED, ExportResult.RETRYABLE)):
        servicer.fail = code
        outcome = await exporter.export(numbered(0), tenant="")
        assert outcome.result is result and "receiver says no" in outcome.reason
    assert (await exporter.export(b"\xff\xff", tenant="")).result is ExportResult.REJECTED
    await exporter.shutdown()
    gone = OtlpExporter(config=OtlpExporterConfig(
        target="127.0.0.1:1", timeout=timedelta(milliseconds=300)))
    assert (await gone.export(numbered(0), tenant="")).result is ExportResult.RETRYABLE
    await gone.shutdown()


async def test_worker_delivers_every_point_over_otlp(tmp_path: Path,
                                                     receiver: tuple[Receiver, str]) -> None:
    servicer, target = receiver
    async with DurableQueue(config=QueueConfig(directory=tmp_path, name="otlp")) as queue:
        worker = ExportWorker(
            queue=queue, exporter=OtlpExporter(config=OtlpExporterConfig(target=target)),
            config=ExportWorkerConfig(flush_interval=timedelta(milliseconds=20)))
        worker.start()
        for b in range(10):
            await queue.append(numbered(b), count=50)
        assert await worker.force_flush(10)
        await worker.shutdown(5)
    points = [p.as_double for r in servicer.requests for m in metrics_by_name(r).values()
              for p in m.gauge.data_points]
    assert len(points) == 500 and not any(math.isnan(p) for p in points)


async def test_delivery_resumes_within_backoff_max_after_a_long_outage(tmp_path: Path) -> None:
    """gRPC waits between connection attempts (1 s growing 1.6x up to 2 min by default) and
    exports fail at once meanwhile, whatever the worker's retry period. With the reconnect
    backoff capped at the worker's backoff_max, the exporter tries at least every
    backoff_max (+20% jitter) through an outage of many periods, and delivers within about
    backoff_max of the receiver's return on the same port. During the outage a listener
    accepts and closes each connection, so the attempts can be timed; uncapped, the gaps
    would reach 1.6 s and 2.6 s within these 5 s."""
    backoff_max = timedelta(milliseconds=500)
    server, _, port = await serve()
    exporter = OtlpExporter(config=OtlpExporterConfig(
        target=f"127.0.0.1:{port}", timeout=timedelta(seconds=2),
        reconnect_backoff_max=backoff_max))
    async with DurableQueue(config=QueueConfig(directory=tmp_path, name="otlp")) as queue:
        worker = ExportWorker(queue=queue, exporter=exporter, config=ExportWorkerConfig(
            flush_interval=timedelta(milliseconds=20), backoff_initial=timedelta(
                milliseconds=50), backoff_max=backoff_max))
        worker.start()
        try:
            await queue.append(numbered(0), count=50)
            assert await worker.force_flush(5)  # connected once
            await server.stop(0)
            attempts: list[float] = []

            def refuse(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                attempts.append(time.monotonic())
                writer.close()

            outage = await asyncio.start_server(refuse, "127.0.0.1", port)
            began = time.monotonic()
            await queue.append(numbered(1), count=50)
            await asyncio.sleep(5)
            outage.close()
            await outage.wait_closed()
            ended = time.monotonic()
            server, servicer, _ = await serve(port)
            gaps = [b - a for a, b in pairwise([began, *attempts, ended])]
            assert max(gaps) < 1.2, f"connection attempts {max(gaps):.2f}s apart: {gaps}"
            resumed = await wait_until(lambda: bool(servicer.requests), timeout=10)
            assert resumed < backoff_max.total_seconds() + 1.5, f"delivered after {resumed:.2f}s"
        finally:
            await worker.shutdown(2)
            await server.stop(0)
