"""Window reports through a real nats-server: a reporter publishes, a JetStream consumer reads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import nats
import pytest
from prometheus_client import CollectorRegistry

from phoenixcp.api.phoenix.v1 import telemetry_pb2
from phoenixcp.platform.bus import TELEMETRY_STREAM, BusConfig, EventBus, RawMessage
from phoenixcp.platform.embedded import EmbeddedNats
from phoenixcp.platform.telemetry import WindowReporter
from tests.unit._window_support import tenant_snapshot

pytestmark = pytest.mark.integration


@pytest.fixture
async def buses(nats_server: EmbeddedNats) -> AsyncIterator[tuple[EventBus, EventBus]]:
    """A pipeline replica's bus and a control-plane service's bus on the session server."""
    def config() -> BusConfig:
        return BusConfig(url=nats_server.url, connect_timeout=timedelta(seconds=2),
                         pull_wait=timedelta(milliseconds=200))
    pipeline = EventBus(config=config(), service="metrics-pipeline", replica_id="mp-0")
    guard = EventBus(config=config(), service="cardinality-guard", replica_id="cg-0")
    await pipeline.start()
    await guard.start()
    yield pipeline, guard
    await guard.shutdown()
    await pipeline.shutdown()


async def test_a_consumer_reads_every_part_of_a_report_once(
    nats_server: EmbeddedNats, buses: tuple[EventBus, EventBus]
) -> None:
    pipeline, guard = buses
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    snapshot = tenant_snapshot(metrics=6, series_per_metric=2000, tenant=tenant,
                               replica_id="mp-0")
    registry = CollectorRegistry()
    reporter = WindowReporter(lambda: [snapshot], pipeline, registry=registry,
                              interval=timedelta(minutes=5), max_bytes=100_000)
    await reporter.start()
    published = await reporter.report_now()
    await reporter.shutdown()  # publishes the final window: the same report id again
    assert published > 1

    received: list[RawMessage] = []
    all_parts = asyncio.Event()

    async def collect(message: RawMessage) -> None:
        received.append(message)
        if len(received) >= published:
            all_parts.set()

    subject = f"phoenix.telemetry.pipeline.{tenant}"
    await guard.subscribe_raw(durable=f"guard-{tenant}", subjects=[subject], handler=collect)
    await asyncio.wait_for(all_parts.wait(), timeout=10)
    await asyncio.sleep(0.3)  # anything beyond the parts would show up now

    parts = [telemetry_pb2.WindowReport.FromString(m.data) for m in received]
    assert len(parts) == published
    assert sorted(p.part for p in parts) == list(range(published))
    report_id = f"mp-0:{tenant}:{snapshot.start_ms}"
    assert {p.report_id for p in parts} == {report_id}
    assert {p.part_count for p in parts} == {published}
    assert sorted(m.msg_id for m in received) == sorted(
        f"{report_id}:{p.part}" for p in parts)
    names = sorted(m.metric_name for p in parts for m in p.metrics)
    assert names == sorted(m.name for m in snapshot.metrics)
    [first] = [p for p in parts if p.part == 0]
    assert first.counts.received == snapshot.counts.received
    assert all(not p.HasField("counts") for p in parts if p.part != 0)

    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream().stream_info(TELEMETRY_STREAM, subjects_filter=subject)
    finally:
        await nc.close()
    assert info.state.subjects == {subject: published}  # the shutdown's repeat: deduplicated
    assert registry.get_sample_value("phoenix_window_report_parts_total") == 2 * published
