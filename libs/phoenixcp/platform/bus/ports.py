"""The bus port: what a component needs to publish and consume Phoenix events.

Components depend on these Protocols, never on NATS: :class:`~.nats_bus.EventBus` implements
them against JetStream and :class:`~.memory.InMemoryBus` in memory for unit tests.

Delivery is at least once. A handler may see the same event again after a crash, a lost ack
or a redelivery, so **handlers must be idempotent by event id** (``Event.id``; for raw
messages, ``RawMessage.msg_id``). The bus skips ids a subscription has already handled
while it runs, but only a handler that checks what it has done (a state revision, a stored
id) is safe across process restarts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from phoenixcp.api.phoenix.v1 import events_pb2

__all__ = [
    "EVENTS_STREAM",
    "TELEMETRY_STREAM",
    "DeliverPolicy",
    "EventHandler",
    "EventPublisher",
    "EventSubscriber",
    "RawHandler",
    "RawMessage",
    "Subscription",
]

EVENTS_STREAM = "PHOENIX_EVENTS"
TELEMETRY_STREAM = "PHOENIX_TELEMETRY"

#: Where a durable seen for the first time starts; an existing durable always resumes.
DeliverPolicy = Literal["all", "new"]


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message of a stream that does not carry ``Event`` envelopes (telemetry)."""

    subject: str
    data: bytes
    #: The ``Nats-Msg-Id`` it was published with; the key to de-duplicate on.
    msg_id: str


EventHandler = Callable[[events_pb2.Event], Awaitable[None]]
RawHandler = Callable[[RawMessage], Awaitable[None]]


class Subscription(Protocol):
    """A running durable consumer."""

    @property
    def durable(self) -> str: ...

    async def stop(self) -> None:
        """Finish the message being handled, stop taking more. Idempotent."""
        ...


class EventPublisher(Protocol):
    """Publishes events; never blocks a caller for long, never drops silently."""

    async def publish(self, event: events_pb2.Event, *, tenant: str = "") -> str:
        """Stamp the envelope, publish (or buffer while the bus is away), return the id.

        Raises ``ResourceExhausted`` when the buffer is full and ``InvalidArgument`` for an
        event that can never be published (no payload, a bad tenant).
        """
        ...

    async def publish_raw(self, subject: str, data: bytes, *, msg_id: str | None = None) -> None:
        """Publish bytes on ``subject`` (telemetry) with the same buffering rules."""
        ...


class EventSubscriber(Protocol):
    """Runs handlers for events of a durable consumer, one message at a time, in order."""

    async def subscribe(
        self,
        *,
        durable: str,
        subjects: Sequence[str],
        handler: EventHandler,
        stream: str = EVENTS_STREAM,
        deliver: DeliverPolicy = "all",
    ) -> Subscription:
        """Start consuming; handler success acks, an exception redelivers later."""
        ...

    async def subscribe_raw(
        self,
        *,
        durable: str,
        subjects: Sequence[str],
        handler: RawHandler,
        stream: str = TELEMETRY_STREAM,
        deliver: DeliverPolicy = "all",
    ) -> Subscription:
        """As ``subscribe``, for messages that are not ``Event`` envelopes."""
        ...
