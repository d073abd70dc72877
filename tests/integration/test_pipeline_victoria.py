"""Phoenix in front of a real VictoriaMetrics: what a user queries is what they sent.

- the official OpenTelemetry SDK (OTLP/gRPC exporter) → Phoenix → VictoriaMetrics, named per
  the OpenTelemetry "Prometheus and OpenMetrics compatibility" specification;
- remote-write in → remote-write out: every sample arrives;
- VictoriaMetrics stopped for 30 s under load, then started: every accepted sample is there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from phoenixcp.cli.stack import Backend, LocalStack
from phoenixcp.platform.embedded import EmbeddedVictoriaMetrics
from tests.integration._pipeline_support import counter_series, post, snappy

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 30.0


@pytest.fixture
async def phoenix(tmp_path: Path,
                  victoria_metrics: EmbeddedVictoriaMetrics) -> AsyncIterator[LocalStack]:
    stack = LocalStack(state_dir=tmp_path / "stack", services=["metrics-pipeline"],
                       backends=[Backend("remote-write", victoria_metrics.write_url)])
    await stack.start(timeout=30)
    yield stack
    stack.stop()


def ingest(stack: LocalStack) -> dict[str, str]:
    return dict(stack.processes[0].announced["ingest"])


def value(result: list[dict], **labels: str) -> float:  # type: ignore[type-arg]
    for series in result:
        if all(series["metric"].get(k) == v for k, v in labels.items()):
            return float(series["value"][1])
    raise AssertionError(f"no series with {labels} in {result}")


async def test_otel_sdk_to_victoria_metrics(phoenix: LocalStack,
                                            victoria_metrics: EmbeddedVictoriaMetrics) -> None:
    exporter = OTLPMetricExporter(endpoint=ingest(phoenix)["otlp_grpc"], insecure=True)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    resource = Resource.create({"service.name": "checkout", "service.instance.id": "pod-7"})
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = provider.get_meter("phoenix-test")
    requests = meter.create_counter("sdk_requests", description="requests served")
    depth = meter.create_up_down_counter("sdk_queue_depth")
    temperature = meter.create_gauge("sdk_temperature")
    latency = meter.create_histogram("sdk_latency")
    requests.add(5, {"route": "/pay"})
    requests.add(3, {"route": "/pay"})
    requests.add(1, {"route": "/cart"})
    depth.add(10)
    depth.add(-4)
    temperature.set(21.5, {"room": "a"})
    for ms in (5, 50, 500):
        latency.record(ms)
    assert provider.force_flush(10_000)
    provider.shutdown()

    vm = victoria_metrics
    series = {'sdk_requests_total{job="checkout",instance="pod-7"}': 9.0}
    result = await asyncio.to_thread(
        vm.query_until, f"sum({next(iter(series))})",
        lambda r: bool(r) and float(r[0]["value"][1]) == 9.0, timeout=20)
    assert float(result[0]["value"][1]) == 9.0
    counters = await asyncio.to_thread(vm.query, 'sdk_requests_total{job="checkout"}')
    assert value(counters, route="/pay", instance="pod-7") == 8.0
    assert value(counters, route="/cart") == 1.0
    assert value(await asyncio.to_thread(vm.query, "sdk_queue_depth"), job="checkout") == 6.0
    assert value(await asyncio.to_thread(vm.query, "sdk_temperature"), room="a") == 21.5
    assert value(await asyncio.to_thread(vm.query, "sdk_latency_count"), job="checkout") == 3.0
    assert value(await asyncio.to_thread(vm.query, "sdk_latency_sum"), job="checkout") == 555.0
    buckets = await asyncio.to_thread(vm.query, "sdk_latency_bucket")
    assert value(buckets, le="5") == 1.0
    assert value(buckets, le="50") == 2.0
    assert value(buckets, le="+Inf") == 3.0


async def test_remote_write_every_sample_arrives(phoenix: LocalStack,
                                                 victoria_metrics: EmbeddedVictoriaMetrics) -> None:
    url = ingest(phoenix)["remote_write"]
    start = int(time.time() * 1000) - 600_000
    for i in range(20):
        body = counter_series("rw_arrival_total", 50, 10, start_ms=start + i * 10_000)
        status, _, text = await post(url, snappy(body))
        assert status == 204, text
    await asyncio.to_thread(
        victoria_metrics.query_until, "count(count_over_time(rw_arrival_total[20m]))",
        lambda r: bool(r) and float(r[0]["value"][1]) == 50, timeout=20)
    exported = await asyncio.to_thread(victoria_metrics.export_series,
                                       '{__name__="rw_arrival_total"}')
    assert len(exported) == 50
    assert sum(len(s["values"]) for s in exported) == 20 * 50 * 10


async def test_backend_outage_under_load_loses_nothing(tmp_path: Path) -> None:
    vm = EmbeddedVictoriaMetrics(data_dir=tmp_path / "vm")
    vm.start()
    stack = LocalStack(state_dir=tmp_path / "stack", services=["metrics-pipeline"],
                       backends=[Backend("remote-write", vm.write_url)])
    try:
        await stack.start(timeout=30)
        url = ingest(stack)["remote_write"]
        # Each request is 5 s later than the last; at most one per 50 ms for 40 s is 800
        # requests, 67 minutes: start 2 h back so none is in the future (VictoriaMetrics'
        # export would leave those out).
        start = int(time.time() * 1000) - 7_200_000
        accepted = 0
        stopped_at = restarted_at = None
        began = time.monotonic()
        i = 0
        # Load for OUTAGE_SECONDS + 10 s; VictoriaMetrics is down from +5 s for OUTAGE_SECONDS.
        while time.monotonic() - began < OUTAGE_SECONDS + 10:
            if stopped_at is None and time.monotonic() - began > 5:
                await asyncio.to_thread(vm.stop)
                stopped_at = time.monotonic()
            if (stopped_at and restarted_at is None
                    and time.monotonic() - stopped_at > OUTAGE_SECONDS):
                await asyncio.to_thread(vm.start)
                restarted_at = time.monotonic()
            body = counter_series("outage_total", 20, 5, start_ms=start + i * 5_000)
            status, _, text = await post(url, snappy(body))
            assert status in (204, 429), text
            if status == 204:
                accepted += 100
                i += 1
            await asyncio.sleep(0.05)
        assert stopped_at and restarted_at
        print(f"\n{accepted} samples accepted over {time.monotonic() - began:.0f}s, "
              f"VictoriaMetrics down for {restarted_at - stopped_at:.0f}s")

        def arrived() -> int:
            got = vm.export_series('{__name__="outage_total"}')
            return sum(len(s["values"]) for s in got)

        deadline = time.monotonic() + 60
        while (count := await asyncio.to_thread(arrived)) != accepted:
            assert time.monotonic() < deadline, (
                f"{count} of {accepted} accepted samples reached the backend")
            await asyncio.sleep(0.5)
    finally:
        stack.stop()
        vm.stop()
