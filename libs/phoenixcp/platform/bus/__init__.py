"""Events on NATS JetStream: the bus port, its NATS adapter and an in-memory fake.

Components depend on the ports (:class:`EventPublisher`, :class:`EventSubscriber`); a
service's composition root builds one :class:`EventBus`; unit tests use :class:`InMemoryBus`.
Delivery is at least once, so handlers must be idempotent by event id.
"""

from __future__ import annotations

from phoenixcp.platform.bus.config import BusConfig
from phoenixcp.platform.bus.envelope import event_subject, uuid7
from phoenixcp.platform.bus.memory import InMemoryBus
from phoenixcp.platform.bus.nats_bus import EventBus
from phoenixcp.platform.bus.ports import (
    EVENTS_STREAM,
    TELEMETRY_STREAM,
    DeliverPolicy,
    EventHandler,
    EventPublisher,
    EventSubscriber,
    RawHandler,
    RawMessage,
    Subscription,
)
from phoenixcp.platform.bus.streams import ensure_streams, stream_configs

__all__ = [
    "EVENTS_STREAM",
    "TELEMETRY_STREAM",
    "BusConfig",
    "DeliverPolicy",
    "EventBus",
    "EventHandler",
    "EventPublisher",
    "EventSubscriber",
    "InMemoryBus",
    "RawHandler",
    "RawMessage",
    "Subscription",
    "ensure_streams",
    "event_subject",
    "stream_configs",
    "uuid7",
]
