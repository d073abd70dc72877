"""The in-memory bus keeps the promises of the real one that a component can observe."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from phoenixcp.api.phoenix.v1 import events_pb2
from phoenixcp.errors import InvalidArgument, ResourceExhausted, Unavailable
from phoenixcp.platform.bus import EventPublisher, EventSubscriber, InMemoryBus, RawMessage

pytestmark = pytest.mark.unit


def budget_exceeded(threshold: float = 0.8) -> events_pb2.Event:
    event = events_pb2.Event()
    event.budget_exceeded.threshold = threshold
    return event


async def test_publish_stamps_and_subscribers_get_events_in_order() -> None:
    bus = InMemoryBus(service="cost-optimizer", replica_id="co-0")
    publisher: EventPublisher = bus
    subscriber: EventSubscriber = bus
    got: list[events_pb2.Event] = []

    async def handle(event: events_pb2.Event) -> None:
        got.append(event)

    await subscriber.subscribe(durable="d", subjects=["phoenix.events.*.acme"],
                               handler=handle)
    ids = [await publisher.publish(budget_exceeded(t), tenant="acme") for t in (0.8, 1.0)]
    await publisher.publish(budget_exceeded())  # to _cluster, which "*.acme" does not match
    await bus.settle()
    assert [e.id for e in got] == ids
    assert got[0].source_replica == "co-0" and got[0].tenant == "acme"
    assert [m.subject for m in bus.stored()][-1] == "phoenix.events.budget_exceeded._cluster"
    await bus.shutdown()
    await bus.shutdown()


async def test_a_durable_resumes_and_a_new_one_can_start_at_new_events() -> None:
    bus = InMemoryBus()
    seen: list[str] = []

    async def handle(event: events_pb2.Event) -> None:
        seen.append(event.id)

    first = [await bus.publish(budget_exceeded()) for _ in range(2)]
    subscription = await bus.subscribe(durable="d", subjects=["phoenix.events.>"], handler=handle)
    await bus.settle()
    await subscription.stop()
    later = await bus.publish(budget_exceeded())
    await bus.subscribe(durable="d", subjects=["phoenix.events.>"], handler=handle)
    fresh: list[str] = []

    async def handle_new(event: events_pb2.Event) -> None:
        fresh.append(event.id)

    await bus.subscribe(durable="n", subjects=["phoenix.events.>"], handler=handle_new,
                        deliver="new")
    newest = await bus.publish(budget_exceeded())
    await bus.settle()
    assert seen == [*first, later, newest]
    assert fresh == [newest]


async def test_a_failing_handler_is_retried_and_an_undecodable_message_terminated() -> None:
    bus = InMemoryBus(nak_delay=timedelta(milliseconds=1))
    calls: list[str] = []

    async def flaky(event: events_pb2.Event) -> None:
        calls.append(event.id)
        if len(calls) < 3:
            raise RuntimeError("boom")

    await bus.subscribe(durable="d", subjects=["phoenix.events.>"], handler=flaky)
    await bus.publish_raw("phoenix.events.budget_exceeded._cluster", b"\xff\xff")
    event_id = await bus.publish(budget_exceeded())
    await bus.settle()
    assert calls == [event_id] * 3 and bus.redeliveries == 2
    assert [m.data for m in bus.terminated] == [b"\xff\xff"]


async def test_while_away_publishes_buffer_up_to_the_limit_then_flush_once() -> None:
    bus = InMemoryBus(publish_buffer=2)
    bus.set_available(False)
    assert not bus.connected
    event = budget_exceeded()
    await bus.publish(event)
    await bus.publish(event)  # the same id: stored once when the buffer flushes
    with pytest.raises(ResourceExhausted):
        await bus.publish(budget_exceeded())
    assert bus.buffered == 2 and bus.stored() == []
    bus.set_available(True)
    assert [m.msg_id for m in bus.stored()] == [event.id]


async def test_raw_messages_go_to_the_telemetry_stream() -> None:
    bus = InMemoryBus()
    got: list[RawMessage] = []

    async def handle(message: RawMessage) -> None:
        got.append(message)

    await bus.subscribe_raw(durable="t", subjects=["phoenix.telemetry.pipeline.*"],
                            handler=handle)
    await bus.publish_raw("phoenix.telemetry.pipeline.acme", b"report", msg_id="r1:0")
    await bus.publish_raw("phoenix.telemetry.pipeline.acme", b"report", msg_id="r1:0")
    await bus.settle()
    assert got == [RawMessage("phoenix.telemetry.pipeline.acme", b"report", "r1:0")]
    with pytest.raises(InvalidArgument):
        await bus.publish_raw("elsewhere.x", b"")
    await bus.shutdown()
    with pytest.raises(Unavailable):
        await bus.publish(budget_exceeded())


async def test_settle_gives_up_after_its_timeout() -> None:
    bus = InMemoryBus()

    async def stuck(event: events_pb2.Event) -> None:
        await asyncio.Event().wait()

    await bus.subscribe(durable="d", subjects=["phoenix.events.>"], handler=stuck)
    await bus.publish(budget_exceeded())
    with pytest.raises(TimeoutError):
        await bus.settle(timeout=0.05)
    await bus.shutdown()
