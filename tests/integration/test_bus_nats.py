"""The event bus against a real nats-server with JetStream: streams, envelopes, delivery.

Every test uses its own tenant (so its own subjects) and its own durable names, so tests
share the session's server without seeing each other's events.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import nats
import pytest
from nats.js.api import StorageType
from prometheus_client import CollectorRegistry

from phoenixcp.api.phoenix.v1 import common_pb2, events_pb2
from phoenixcp.platform.bus import EVENTS_STREAM, TELEMETRY_STREAM, BusConfig, EventBus
from phoenixcp.platform.embedded import EmbeddedNats

pytestmark = pytest.mark.integration

BusFactory = Callable[..., Awaitable[EventBus]]


def config(url: str, **overrides: object) -> BusConfig:
    values: dict[str, object] = {"url": url, "connect_timeout": timedelta(seconds=2),
                                 "nak_delay": timedelta(milliseconds=300),
                                 "pull_wait": timedelta(milliseconds=200)}
    values.update(overrides)
    return BusConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
async def new_bus(nats_server: EmbeddedNats) -> AsyncIterator[BusFactory]:
    """Start buses on the session server; every one is shut down after the test."""
    buses: list[EventBus] = []

    async def make(service: str = "cost-optimizer", replica_id: str = "co-0",
                   registry: CollectorRegistry | None = None, **overrides: object) -> EventBus:
        bus = EventBus(config=config(nats_server.url, **overrides), service=service,
                       replica_id=replica_id, registry=registry)
        buses.append(bus)
        await bus.start()
        return bus

    yield make
    for bus in buses:
        await bus.shutdown()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def leader_changed(replica: str = "co-1") -> events_pb2.Event:
    event = events_pb2.Event()
    event.leader_changed.service = common_pb2.SERVICE_NAME_COST_OPTIMIZER
    event.leader_changed.change = events_pb2.LEADERSHIP_CHANGE_ACQUIRED
    event.leader_changed.replica.replica_id = replica
    return event


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def stored(url: str, subject: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(EVENTS_STREAM, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))
    finally:
        await nc.close()


async def test_streams_are_created_once_and_kept_by_every_replica(
    nats_server: EmbeddedNats, new_bus: BusFactory
) -> None:
    first = await new_bus(replica_id="co-0")
    tenant = unique("t")
    await first.publish(leader_changed(), tenant=tenant)
    second = await new_bus(service="cardinality-guard", replica_id="cg-0")
    await asyncio.gather(new_bus(replica_id="co-1"), new_bus(replica_id="co-2"))
    assert first.connected and second.connected

    nc = await nats.connect(nats_server.url)
    try:
        events = (await nc.jetstream().stream_info(EVENTS_STREAM)).config
        telemetry = (await nc.jetstream().stream_info(TELEMETRY_STREAM)).config
    finally:
        await nc.close()
    assert events.subjects == ["phoenix.events.>"]
    assert events.storage == StorageType.FILE
    assert events.max_age == pytest.approx(timedelta(days=7).total_seconds())
    assert events.duplicate_window is not None and events.duplicate_window >= 120
    assert telemetry.subjects == ["phoenix.telemetry.>"]
    assert telemetry.max_age == pytest.approx(timedelta(minutes=15).total_seconds())
    # Later replicas did not reset the stream.
    assert await stored(nats_server.url, f"phoenix.events.leader_changed.{tenant}") == 1


async def test_a_drifted_stream_is_updated_without_losing_messages(tmp_path: object) -> None:
    from pathlib import Path

    with EmbeddedNats(data_dir=Path(str(tmp_path)) / "nats") as server:
        bus = EventBus(config=config(server.url), service="cost-optimizer", replica_id="co-0")
        async with bus:
            await bus.publish(leader_changed())
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        current = (await js.stream_info(EVENTS_STREAM)).config
        await js.update_stream(current.evolve(max_age=3600.0))
        async with EventBus(config=config(server.url), service="cost-optimizer",
                            replica_id="co-1"):
            info = await js.stream_info(EVENTS_STREAM)
        await nc.close()
    assert info.config.max_age == pytest.approx(timedelta(days=7).total_seconds())
    assert info.state.messages == 1


async def test_publish_and_subscribe_round_trip_with_a_stamped_envelope(
    nats_server: EmbeddedNats, new_bus: BusFactory
) -> None:
    registry = CollectorRegistry()
    publisher = await new_bus(service="cost-optimizer", replica_id="co-7", registry=registry)
    consumer = await new_bus(service="performance-monitor", replica_id="pm-0")
    tenant, durable = unique("acme"), unique("pm")
    received: list[events_pb2.Event] = []

    async def handle(event: events_pb2.Event) -> None:
        received.append(event)

    await consumer.subscribe(durable=durable, subjects=[f"phoenix.events.*.{tenant}"],
                             handler=handle)
    before = time.time()
    event_id = await publisher.publish(leader_changed("co-7"), tenant=tenant)
    await wait_for(lambda: len(received) == 1)

    got = received[0]
    assert got.id == event_id and uuid.UUID(event_id).version == 7
    assert got.WhichOneof("payload") == "leader_changed"
    assert got.leader_changed.replica.replica_id == "co-7"
    assert got.source_service == common_pb2.SERVICE_NAME_COST_OPTIMIZER
    assert got.source_replica == "co-7"
    assert got.tenant == tenant
    assert before - 1 <= got.time.ToMicroseconds() / 1e6 <= time.time() + 1
    nc = await nats.connect(nats_server.url)
    try:
        raw = await nc.jetstream().get_last_msg(EVENTS_STREAM,
                                                f"phoenix.events.leader_changed.{tenant}")
    finally:
        await nc.close()
    assert raw.headers is not None and raw.headers["Nats-Msg-Id"] == event_id
    assert metric(registry, "phoenix_bus_published_total",
                  subject_kind="events.leader_changed") == 1


async def test_a_cluster_event_goes_to_the_cluster_subject(
    nats_server: EmbeddedNats, new_bus: BusFactory
) -> None:
    bus = await new_bus()
    event = events_pb2.Event()
    event.cert_rotated.spiffe_id = unique("spiffe://phoenix/cost-optimizer#")
    await bus.publish(event)
    nc = await nats.connect(nats_server.url)
    try:
        raw = await nc.jetstream().get_last_msg(EVENTS_STREAM,
                                                "phoenix.events.cert_rotated._cluster")
    finally:
        await nc.close()
    assert raw.data is not None and events_pb2.Event.FromString(raw.data).id == event.id


async def test_a_retried_publish_is_stored_once(
    nats_server: EmbeddedNats, new_bus: BusFactory
) -> None:
    bus = await new_bus()
    tenant = unique("t")
    event = leader_changed()
    first = await bus.publish(event, tenant=tenant)
    again = await bus.publish(event, tenant=tenant)  # same object: it keeps its id
    copy = events_pb2.Event()
    copy.CopyFrom(event)
    copy.source_replica = "someone-else"
    await bus.publish(copy, tenant=tenant)
    await bus.publish_raw(f"phoenix.telemetry.pipeline.{tenant}", b"r", msg_id="report-1:0")
    await bus.publish_raw(f"phoenix.telemetry.pipeline.{tenant}", b"r", msg_id="report-1:0")

    assert first == again
    assert await stored(nats_server.url, f"phoenix.events.leader_changed.{tenant}") == 1
    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream().stream_info(
            TELEMETRY_STREAM, subjects_filter=f"phoenix.telemetry.pipeline.{tenant}")
    finally:
        await nc.close()
    assert info.state.subjects == {f"phoenix.telemetry.pipeline.{tenant}": 1}


async def test_a_failing_handler_is_redelivered_after_the_nak_delay(new_bus: BusFactory) -> None:
    registry = CollectorRegistry()
    bus = await new_bus(registry=registry, nak_delay=timedelta(milliseconds=300))
    tenant, durable = unique("t"), unique("flaky")
    calls: list[tuple[str, float]] = []

    async def flaky(event: events_pb2.Event) -> None:
        calls.append((event.id, time.monotonic()))
        if len(calls) == 1:
            raise RuntimeError("backend briefly away")

    await bus.subscribe(durable=durable, subjects=[f"phoenix.events.*.{tenant}"], handler=flaky)
    event_id = await bus.publish(leader_changed(), tenant=tenant)
    await wait_for(lambda: len(calls) == 2)
    await wait_for(lambda: metric(registry, "phoenix_bus_consumed_total", durable=durable,
                                  outcome="ack") == 1)

    assert [call[0] for call in calls] == [event_id, event_id]
    assert calls[1][1] - calls[0][1] >= 0.25  # the delay, not an immediate retry
    assert metric(registry, "phoenix_bus_consumed_total", durable=durable, outcome="nak") == 1
    await asyncio.sleep(0.5)
    assert len(calls) == 2  # acked: never delivered again


async def test_a_poison_message_is_terminated_and_the_stream_moves_on(
    new_bus: BusFactory, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    bus = await new_bus(registry=registry)
    tenant, durable = unique("t"), unique("poison")
    received: list[str] = []

    async def handle(event: events_pb2.Event) -> None:
        received.append(event.id)

    await bus.subscribe(durable=durable, subjects=[f"phoenix.events.*.{tenant}"], handler=handle)
    await bus.publish_raw(f"phoenix.events.leader_changed.{tenant}", b"\xff\xff\xff not protobuf")
    good = await bus.publish(leader_changed(), tenant=tenant)
    await wait_for(lambda: received == [good])

    assert metric(registry, "phoenix_bus_consumed_total", durable=durable, outcome="term") == 1
    assert any("undecodable" in record.getMessage() for record in caplog.records)
    await asyncio.sleep(0.5)
    assert received == [good]


async def test_a_restarted_subscriber_resumes_where_the_durable_stopped(
    new_bus: BusFactory,
) -> None:
    publisher = await new_bus()
    tenant, durable = unique("t"), unique("resume")
    subject = f"phoenix.events.leader_changed.{tenant}"
    seen: list[str] = []

    async def handle(event: events_pb2.Event) -> None:
        seen.append(event.id)

    first = await new_bus(replica_id="c-0")
    subscription = await first.subscribe(durable=durable, subjects=[subject], handler=handle)
    ids = [await publisher.publish(leader_changed(), tenant=tenant) for _ in range(3)]
    await wait_for(lambda: len(seen) == 3)
    await subscription.stop()
    await subscription.stop()  # idempotent
    ids += [await publisher.publish(leader_changed(), tenant=tenant) for _ in range(3)]
    second = await new_bus(replica_id="c-1")
    await second.subscribe(durable=durable, subjects=[subject], handler=handle)
    await wait_for(lambda: len(seen) == 6)
    await asyncio.sleep(0.2)
    assert seen == ids


async def test_consumer_lag_is_reported(new_bus: BusFactory) -> None:
    registry = CollectorRegistry()
    publisher = await new_bus()
    tenant, durable = unique("t"), unique("lag")
    for _ in range(5):
        await publisher.publish(leader_changed(), tenant=tenant)
    gate = asyncio.Event()

    async def stuck(event: events_pb2.Event) -> None:
        await gate.wait()

    consumer = await new_bus(registry=registry, lag_poll_interval=timedelta(milliseconds=100))
    await consumer.subscribe(durable=durable, subjects=[f"phoenix.events.*.{tenant}"],
                             handler=stuck)
    await wait_for(lambda: metric(registry, "phoenix_bus_consumer_pending", durable=durable) >= 3)
    gate.set()
    await wait_for(lambda: metric(registry, "phoenix_bus_consumer_pending", durable=durable) == 0
                   and metric(registry, "phoenix_bus_consumed_total", durable=durable,
                              outcome="ack") == 5)


async def test_shutdown_is_idempotent_and_refuses_later_publishes(new_bus: BusFactory) -> None:
    from phoenixcp.errors import Unavailable

    bus = await new_bus()
    await asyncio.gather(bus.shutdown(), bus.shutdown())
    await bus.shutdown()
    assert not bus.connected
    with pytest.raises(Unavailable):
        await bus.publish(leader_changed())


async def test_the_handler_runs_in_the_publishers_trace(new_bus: BusFactory) -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    bus = await new_bus()
    tenant, durable = unique("t"), unique("traced")
    seen: list[int] = []

    async def handle(event: events_pb2.Event) -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)

    await bus.subscribe(durable=durable, subjects=[f"phoenix.events.*.{tenant}"], handler=handle)
    caller = SpanContext(trace_id=0xABC123, span_id=0x42, is_remote=False,
                         trace_flags=TraceFlags(TraceFlags.SAMPLED))
    with trace.use_span(NonRecordingSpan(caller)):
        await bus.publish(leader_changed(), tenant=tenant)
    await wait_for(lambda: seen == [0xABC123])


async def test_a_slow_batch_is_kept_from_redelivery(
    nats_server: EmbeddedNats, new_bus: BusFactory
) -> None:
    registry = CollectorRegistry()
    publisher = await new_bus()
    tenant, durable = unique("t"), unique("slow")
    for _ in range(6):
        await publisher.publish(leader_changed(), tenant=tenant)
    handled: list[str] = []

    async def slow(event: events_pb2.Event) -> None:
        await asyncio.sleep(0.3)  # six of these outlast ack_wait
        handled.append(event.id)

    consumer = await new_bus(registry=registry, ack_wait=timedelta(seconds=1))
    await consumer.subscribe(durable=durable, subjects=[f"phoenix.events.*.{tenant}"],
                             handler=slow)
    await wait_for(lambda: len(handled) == 6)
    await asyncio.sleep(0.3)
    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream().consumer_info(EVENTS_STREAM, durable)
    finally:
        await nc.close()
    assert info.num_redelivered == 0
    assert metric(registry, "phoenix_bus_consumed_total", durable=durable, outcome="ack") == 6
