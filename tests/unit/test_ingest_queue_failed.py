"""A queue whose disk failed: remote-write senders get 503 with Retry-After, OTLP/gRPC senders
UNAVAILABLE; neither an internal error."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from prometheus_client import CollectorRegistry

from metrics_pipeline.ingest_http import HttpIngest
from metrics_pipeline.ingest_metrics import IngestMetrics
from metrics_pipeline.ingest_otlp import OtlpIngest
from phoenixcp.core.batch import MetricBatch
from phoenixcp.platform.queue import DurableQueue, QueueConfig
from phoenixcp.platform.queue import queue as queue_module
from tests.integration._pipeline_support import snappy, write_request
from tests.unit._failing_syncer import FailingSyncer

pytestmark = pytest.mark.unit


async def test_a_failed_queue_answers_503_with_retry_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_module, "Syncer", FailingSyncer)
    monkeypatch.setattr(FailingSyncer, "fail_at_start", True)
    queue = DurableQueue(config=QueueConfig(directory=tmp_path, name="t"))
    await queue.start()

    async def accept(batch: MetricBatch) -> None:
        await queue.append(batch.write_request, count=batch.sample_count)

    registry = CollectorRegistry()
    ingest = HttpIngest(host="127.0.0.1", port=0, max_bytes=1 << 20, accept=accept,
                        metrics=IngestMetrics(registry))
    port = await ingest.start()
    body = snappy(write_request([((("__name__", "up"),), [(1000, 1.0)])]))
    headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):  # the sync that failed, then an append refused at once
                async with session.post(f"http://127.0.0.1:{port}/api/v1/write", data=body,
                                        headers=headers) as r:
                    assert r.status == 503
                    assert r.headers["Retry-After"] == "30"
                    assert "queue t" in await r.text()
        assert not await queue.get(10, timeout=0.05)  # nothing handed on as accepted
    finally:
        await ingest.shutdown()
        await queue.close()
    assert registry.get_sample_value(
        "phoenix_pipeline_points_rejected_total",
        {"receiver": "remote_write", "reason": "unavailable"}) == 2


async def test_a_failed_queue_answers_otlp_grpc_with_unavailable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_module, "Syncer", FailingSyncer)
    monkeypatch.setattr(FailingSyncer, "fail_at_start", True)
    queue = DurableQueue(config=QueueConfig(directory=tmp_path, name="t"))
    await queue.start()

    async def accept(batch: MetricBatch) -> None:
        await queue.append(batch.write_request, count=batch.sample_count)

    registry = CollectorRegistry()
    ingest = OtlpIngest(listen="127.0.0.1:0", accept=accept, metrics=IngestMetrics(registry),
                        credentials=None, max_bytes=1 << 20)
    port = await ingest.start()
    request = ExportMetricsServiceRequest()
    gauge = request.resource_metrics.add().scope_metrics.add().metrics.add()
    gauge.name = "up"
    gauge.gauge.data_points.add(time_unix_nano=1_000_000_000_000, as_double=1.0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            export = channel.unary_unary(
                "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                request_serializer=ExportMetricsServiceRequest.SerializeToString,
                response_deserializer=ExportMetricsServiceResponse.FromString)
            for _ in range(2):  # the sync that failed, then an append refused at once
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await export(request, timeout=10)
                assert info.value.code() is grpc.StatusCode.UNAVAILABLE
                assert "queue t" in (info.value.details() or "")
        assert not await queue.get(10, timeout=0.05)  # nothing handed on as accepted
    finally:
        await ingest.shutdown()
        await queue.close()
    assert registry.get_sample_value(
        "phoenix_pipeline_points_rejected_total",
        {"receiver": "otlp_grpc", "reason": "unavailable"}) == 2
