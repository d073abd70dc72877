"""The bus package's public surface, and EventBus behaviour that needs no server."""

from __future__ import annotations

from datetime import timedelta
from types import ModuleType

import pytest
from prometheus_client import CollectorRegistry

import phoenixcp.platform.bus as bus_package
from phoenixcp.api.phoenix.v1 import events_pb2
from phoenixcp.errors import InvalidArgument, ResourceExhausted, Unavailable
from phoenixcp.platform.bus import BusConfig, EventBus, EventPublisher, EventSubscriber

pytestmark = pytest.mark.unit

# Nothing listens on port 1; these tests never call start(), so nothing connects anyway.
CONFIG = BusConfig(url="nats://127.0.0.1:1", connect_timeout=timedelta(seconds=1),
                   publish_buffer=2, shutdown_grace=timedelta(0))


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name, value in vars(bus_package).items()
              if not name.startswith("_") and not isinstance(value, ModuleType)
              and name != "annotations"}
    assert set(bus_package.__all__) == public


def test_the_nats_bus_implements_the_ports() -> None:
    bus = EventBus(config=CONFIG, service="cost-optimizer", replica_id="co-0")
    # The check is mypy's (these assignments); at run time it only shows the names exist.
    publisher: EventPublisher = bus
    subscriber: EventSubscriber = bus
    assert callable(publisher.publish) and callable(subscriber.subscribe)


async def test_before_start_publishes_wait_in_the_buffer_and_shutdown_counts_them() -> None:
    registry = CollectorRegistry()
    bus = EventBus(config=CONFIG, service="cost-optimizer", replica_id="co-0", registry=registry)
    assert not bus.connected
    event = events_pb2.Event()
    event.budget_exceeded.threshold = 1.0
    await bus.publish(event, tenant="acme")
    await bus.publish_raw("phoenix.telemetry.pipeline.acme", b"report")
    with pytest.raises(ResourceExhausted):
        await bus.publish_raw("phoenix.telemetry.pipeline.acme", b"report")
    assert bus.buffered == 2
    assert registry.get_sample_value("phoenix_bus_buffered_events") == 2
    await bus.shutdown()
    assert registry.get_sample_value("phoenix_bus_publish_rejected_total",
                                     {"reason": "shutdown"}) == 2
    with pytest.raises(Unavailable):
        await bus.publish(event)
    with pytest.raises(Unavailable):
        await bus.start()


async def test_what_can_never_be_published_is_refused_at_once() -> None:
    bus = EventBus(config=CONFIG, service="cost-optimizer", replica_id="co-0")
    with pytest.raises(InvalidArgument):
        await bus.publish(events_pb2.Event())  # no payload
    for subject in ("other.subject", "phoenix.events.*.acme", "phoenix.telemetry"):
        with pytest.raises(InvalidArgument):
            await bus.publish_raw(subject, b"")
    for durable in ("has.dot", "", "x" * 65):
        with pytest.raises(InvalidArgument):
            await bus.subscribe(durable=durable, subjects=["phoenix.events.>"],
                                handler=_ignore)
    with pytest.raises(InvalidArgument):
        EventBus(config=CONFIG, service="billing", replica_id="b-0")
    assert bus.buffered == 0
    await bus.shutdown()


async def _ignore(event: events_pb2.Event) -> None:
    return None
