"""metrics-pipeline as a real process: remote-write and OTLP in, remote-write out to a sink.

Every bad input gets its exact status and message and changes nothing; a full queue pushes
back with 429 and Retry-After and the sender's retry succeeds once there is room; a pipeline
SIGKILLed with a non-empty queue delivers everything after it restarts.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from phoenixcp.api.prometheus import remote_pb2
from phoenixcp.cli.stack import Backend, LocalStack
from phoenixcp.platform.export.sink import CountingSink
from tests.integration._pipeline_support import (
    counter_series,
    eventually,
    post,
    snappy,
    write_request,
)

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


@pytest.fixture
async def sink() -> AsyncIterator[CountingSink]:
    counting = CountingSink()
    await counting.start()
    yield counting
    await counting.stop()


async def pipeline(tmp_path: Path, sink: CountingSink, **overrides: object) -> LocalStack:
    stack = LocalStack(state_dir=tmp_path / "stack", services=["metrics-pipeline"],
                       backends=[Backend("remote-write", sink.url)], pipeline=overrides)
    await stack.start(timeout=30)
    return stack


def ingest(stack: LocalStack) -> dict[str, str]:
    return dict(stack.processes[0].announced["ingest"])


async def test_remote_write_in_remote_write_out(tmp_path: Path, sink: CountingSink) -> None:
    stack = await pipeline(tmp_path, sink)
    try:
        url = ingest(stack)["remote_write"]
        for i in range(10):
            body = counter_series("rw_test_total", 50, 20, start_ms=NOW_MS + i * 20_000)
            status, _, text = await post(url, snappy(body), headers={"X-Scope-OrgID": "acme"})
            assert status == 204, text
        took = await eventually(lambda: sink.counts.samples == 10 * 50 * 20,
                                what="all 10,000 samples at the sink")
        print(f"\n10,000 samples forwarded; the last arrived {took:.2f}s after the last POST")
    finally:
        stack.stop()


BAD_INPUTS = [
    ("malformed-protobuf", snappy(b"\x0a\xff\xff\xff\xff\x0f"), None, 400,
     "not a valid Prometheus remote-write WriteRequest"),
    ("bad-snappy", b"\x20\xff\xff\xff\xff not snappy", None, 400, "snappy"),
    ("missing-name", snappy(write_request([([("job", "x")], [(NOW_MS, 1.0)])])), None, 400,
     "__name__"),
    ("empty-name", snappy(write_request([([("__name__", ""), ("job", "x")], [(NOW_MS, 1.0)])])),
     None, 400, "__name__"),
    ("invalid-label-name",
     snappy(write_request([([("__name__", "m"), ("bad-label", "x")], [(NOW_MS, 1.0)])])),
     None, 400, "bad-label"),
    ("duplicate-label",
     snappy(write_request([([("__name__", "m"), ("a", "1"), ("a", "2")], [(NOW_MS, 1.0)])])),
     None, 400, "appears more than once"),
    ("bad-tenant", snappy(counter_series("m", 1, 1, start_ms=NOW_MS)), {"X-Scope-OrgID": "a b"},
     400, "tenant"),
]


async def test_bad_input_gets_a_clear_error_and_changes_nothing(
    tmp_path: Path, sink: CountingSink
) -> None:
    stack = await pipeline(tmp_path, sink, max_request_bytes=64 * 1024)
    try:
        url = ingest(stack)["remote_write"]
        for name, body, headers, want, needle in BAD_INPUTS:
            status, _, text = await post(url, body, headers=headers)
            print(f"{name}: {status} {text.decode().strip()}")
            assert status == want, (name, text)
            assert needle in text.decode(), (name, text)
        # Non-UTF-8 in a label value: build the bytes by hand (protobuf refuses to).
        good = write_request([([("__name__", "m"), ("job", "AAAA")], [(NOW_MS, 1.0)])])
        status, _, text = await post(url, snappy(good.replace(b"AAAA", b"\xff\xfe\xfd\xfc")))
        assert status == 400 and b"UTF-8" in text, text
        # Over the limit after decompression: 400 naming the limit.
        status, _, text = await post(url, snappy(counter_series("big", 400, 30, start_ms=NOW_MS)))
        assert status == 400 and b"over the limit of 65536 bytes" in text, text
        # Over the limit as sent (random values do not compress): 413 before it is read.
        noise = write_request([([("__name__", "noise"), ("v", os.urandom(40).hex())],
                                [(NOW_MS, 1.0)]) for _ in range(1000)])
        status, _, text = await post(url, snappy(noise))
        assert status == 413, text
        await asyncio.sleep(1.5)  # longer than the exporter's flush interval
        assert sink.counts.requests == 0 and sink.counts.samples == 0
    finally:
        stack.stop()


async def test_queue_full_pushes_back_and_retry_succeeds(
    tmp_path: Path, sink: CountingSink
) -> None:
    sink.status = 503  # the backend is down: the queue fills
    stack = await pipeline(tmp_path, sink, queue_max_bytes=1024 * 1024)
    try:
        url = ingest(stack)["remote_write"]
        accepted = 0
        refused = None
        for i in range(200):
            body = snappy(counter_series("fill_total", 100, 10, start_ms=NOW_MS + i * 10_000))
            status, headers, text = await post(url, body)
            if status == 429:
                refused = (body, headers, text)
                break
            assert status == 204, text
            accepted += 1000
        assert refused is not None, "the queue never filled"
        body, headers, text = refused
        assert int(headers["Retry-After"]) >= 1
        assert b"full" in text

        sink.status = None  # the backend is back: the queue drains, the retry gets in
        async def retried() -> int:
            while True:
                status, _, _ = await post(url, body)
                if status == 204:
                    return status
                await asyncio.sleep(0.2)
        await asyncio.wait_for(retried(), 30)
        await eventually(lambda: sink.counts.samples == accepted + 1000, timeout=30,
                         what="every accepted sample plus the retried request")
    finally:
        stack.stop()


async def test_sigkill_with_a_full_queue_loses_nothing(tmp_path: Path, sink: CountingSink) -> None:
    sink.status = 503
    stack = await pipeline(tmp_path, sink)
    try:
        url = ingest(stack)["remote_write"]
        for i in range(20):
            body = snappy(counter_series("crash_total", 50, 10, start_ms=NOW_MS + i * 10_000))
            status, _, text = await post(url, body)
            assert status == 204, text
        proc = stack.processes[0]
        assert proc.process is not None
        proc.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.process.wait, 10)
        sink.status = None
        await stack.restart_replica(proc, timeout=30)
        await eventually(lambda: sink.counts.samples >= 20 * 500, timeout=30,
                         what="the queue replayed after the crash")
        assert sink.counts.samples == 20 * 500  # at least once, and here exactly once
    finally:
        stack.stop()


async def test_otlp_http_accepts_protobuf_and_refuses_what_it_cannot_store(
    tmp_path: Path, sink: CountingSink
) -> None:
    stack = await pipeline(tmp_path, sink)
    try:
        url = ingest(stack)["otlp_http"]
        request = ExportMetricsServiceRequest()
        metric = request.resource_metrics.add().scope_metrics.add().metrics.add()
        metric.name = "otlp_http_requests"
        metric.sum.is_monotonic = True
        metric.sum.aggregation_temporality = (
            AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE)
        point = metric.sum.data_points.add(time_unix_nano=NOW_MS * 1_000_000, as_double=7.0)
        point.attributes.add(key="route", value=AnyValue(string_value="/pay"))
        delta = request.resource_metrics[0].scope_metrics[0].metrics.add()
        delta.name = "otlp_http_delta"
        delta.sum.is_monotonic = True
        delta.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
        delta.sum.data_points.add(time_unix_nano=NOW_MS * 1_000_000, as_double=1.0)

        body = gzip.compress(request.SerializeToString())
        status, _, reply = await post(url, body, encoding="gzip")
        assert status == 200, reply
        answer = ExportMetricsServiceResponse.FromString(reply)
        assert answer.partial_success.rejected_data_points == 1  # the delta
        assert "cumulative" in answer.partial_success.error_message
        await eventually(lambda: sink.counts.samples == 1, what="the cumulative point")

        status, _, text = await post(url, b"{}", encoding=None,
                                     headers={"Content-Type": "application/json"})
        assert status == 415 and b"protobuf" in text, text
        # the body goes to the converter as bytes, as the gRPC request does: same message
        bad_utf8 = request.SerializeToString().replace(b"/pay", b"/pa\xff")
        for bad in (b"\x0a\x05\x0a\x03\x0a\x01", bad_utf8):  # truncated; bad UTF-8
            status, _, text = await post(url, gzip.compress(bad), encoding="gzip")
            assert status == 400, text
            assert text.startswith(
                b"the request is not a valid OTLP ExportMetricsServiceRequest: "), text
        assert (b"the value of attribute 'route' of metric 'otlp_http_requests' is not valid "
                b"UTF-8 (byte 0xff at offset 3, after '/pa'); OTLP strings must be UTF-8"
                in text), text
        await asyncio.sleep(1.5)
        assert sink.counts.samples == 1  # nothing more arrived
    finally:
        stack.stop()


async def test_otlp_grpc_refuses_bad_histograms_and_accepts_the_rest(tmp_path: Path) -> None:
    """Over OTLP/gRPC: histogram bounds without bucket counts are a partial success naming
    them while the other points are stored; an explicit +Inf bound gives one le="+Inf"
    bucket; bytes that are not an ExportMetricsServiceRequest are INVALID_ARGUMENT and store
    nothing."""
    sink = CountingSink(keep_bodies=True)
    await sink.start()
    stack = await pipeline(tmp_path, sink)
    try:
        request = ExportMetricsServiceRequest()
        metrics = request.resource_metrics.add().scope_metrics.add().metrics
        t_ns = NOW_MS * 1_000_000
        no_counts, inf_bound, gauge = metrics.add(), metrics.add(), metrics.add()
        no_counts.name = "grpc_no_counts"
        no_counts.histogram.aggregation_temporality = CUMULATIVE
        no_counts.histogram.data_points.add(time_unix_nano=t_ns, count=3,
                                            explicit_bounds=[1.0, 2.0])
        inf_bound.name = "grpc_inf_bound"
        inf_bound.histogram.aggregation_temporality = CUMULATIVE
        inf_bound.histogram.data_points.add(time_unix_nano=t_ns, count=10, sum=12.0,
                                            explicit_bounds=[1.0, float("inf")],
                                            bucket_counts=[4, 6, 0])
        gauge.name = "grpc_gauge"
        gauge.gauge.data_points.add(time_unix_nano=t_ns, as_double=1.5)

        async with grpc.aio.insecure_channel(ingest(stack)["otlp_grpc"]) as channel:
            export = channel.unary_unary(
                EXPORT, request_serializer=ExportMetricsServiceRequest.SerializeToString,
                response_deserializer=ExportMetricsServiceResponse.FromString)
            answer = await export(request, timeout=10)
            assert answer.partial_success.rejected_data_points == 1
            assert answer.partial_success.error_message == (
                "1 data points rejected: metric 'grpc_no_counts': histogram has 2 bounds but "
                "no bucket counts (send bounds + 1 bucket counts, or neither bounds nor bucket "
                "counts for count and sum only) (1 points)")
            # le="1", le="+Inf", _sum, _count and the gauge
            await eventually(lambda: sink.counts.samples == 5, what="the accepted points")
            raw = channel.unary_unary(EXPORT, request_serializer=None,
                                      response_deserializer=ExportMetricsServiceResponse.FromString)
            bad_utf8 = request.SerializeToString().replace(b"grpc_gauge", b"grpc_gaug\xff")
            for body in (b"\x0a\x05\x0a\x03\x0a\x01", bad_utf8):  # truncated; bad UTF-8
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await raw(body, timeout=10)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
                assert str(caught.value.details()).startswith(
                    "the request is not a valid OTLP ExportMetricsServiceRequest: ")
            assert str(caught.value.details()).endswith(
                "metric name is not valid UTF-8 (byte 0xff at offset 9, after 'grpc_gaug'); "
                "OTLP strings must be UTF-8")
        sent = remote_pb2.WriteRequest()
        for body in sink.bodies:
            sent.MergeFromString(body)
        infs = [s for s in sent.timeseries
                if {(x.name, x.value) for x in s.labels} >= {("__name__", "grpc_inf_bound_bucket"),
                                                            ("le", "+Inf")}]
        assert [[x.value for x in s.samples] for s in infs] == [[10.0]]
        await asyncio.sleep(1.5)
        assert sink.counts.samples == 5  # nothing more arrived
    finally:
        stack.stop()
        await sink.stop()
