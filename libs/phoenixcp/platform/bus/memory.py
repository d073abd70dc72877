"""An in-memory bus for unit tests of components that publish or consume events.

It keeps the promises of :class:`~.nats_bus.EventBus` that a component can observe: the same
envelope stamping and subjects, ``Nats-Msg-Id`` de-duplication, durable consumers that
resume where they stopped, redelivery after a handler error, a bounded buffer while the
bus is "away" (``set_available(False)``) with ``ResourceExhausted`` when it is full. It
differs where only timing would: a failed message is retried before later ones, and there
is no duplicate window (ids are remembered forever).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar

from phoenixcp.api.phoenix.v1 import events_pb2
from phoenixcp.errors import InvalidArgument, ResourceExhausted, Unavailable
from phoenixcp.platform.bus.envelope import (
    EVENTS_PREFIX,
    decode_event,
    service_enum,
    stamp,
    subject_matches,
    uuid7,
)
from phoenixcp.platform.bus.ports import (
    EVENTS_STREAM,
    TELEMETRY_STREAM,
    DeliverPolicy,
    EventHandler,
    RawHandler,
    RawMessage,
)

__all__ = ["InMemoryBus"]

T = TypeVar("T")


@dataclass
class _Stream:
    messages: list[RawMessage] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    cursors: dict[str, int] = field(default_factory=dict)  # durable -> next index


class _MemorySubscription(Generic[T]):
    def __init__(self, bus: InMemoryBus, stream: _Stream, durable: str, subjects: Sequence[str],
                 decode: Callable[[RawMessage], tuple[T, str]],
                 handler: Callable[[T], Awaitable[None]]) -> None:
        self._bus, self._stream, self._durable = bus, stream, durable
        self._subjects, self._decode, self._handler = list(subjects), decode, handler
        self._seen: set[str] = set()
        self.wakeup = asyncio.Event()
        self.idle = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    @property
    def durable(self) -> str:
        return self._durable

    @property
    def running(self) -> bool:
        return not self._task.done()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.idle.set()

    async def _run(self) -> None:
        while True:
            index = self._stream.cursors[self._durable]
            if index >= len(self._stream.messages):
                self.idle.set()
                await self.wakeup.wait()
                self.wakeup.clear()
                continue
            message = self._stream.messages[index]
            if any(subject_matches(p, message.subject) for p in self._subjects):
                await self._deliver(message)
            self._stream.cursors[self._durable] = index + 1

    async def _deliver(self, message: RawMessage) -> None:
        try:
            item, key = self._decode(message)
        except ValueError:
            self._bus.terminated.append(message)
            return
        while key not in self._seen:
            try:
                await self._handler(item)
            except Exception:
                self._bus.redeliveries += 1
                await asyncio.sleep(self._bus.nak_delay.total_seconds())
            else:
                self._seen.add(key)


class InMemoryBus:
    """``EventPublisher`` and ``EventSubscriber`` in memory; one event loop, no I/O.

    ``stored(stream)`` shows what was published; ``settle()`` waits until every subscription
    has handled everything; ``terminated`` lists undecodable messages.
    """

    def __init__(self, *, service: str = "chaos-engineer", replica_id: str = "test-0",
                 publish_buffer: int = 10_000, nak_delay: timedelta = timedelta(0)) -> None:
        self._service = service_enum(service)
        self._replica_id = replica_id
        self._capacity = publish_buffer
        self.nak_delay = nak_delay
        self._streams = {EVENTS_STREAM: _Stream(), TELEMETRY_STREAM: _Stream()}
        self._buffer: list[RawMessage] = []
        self._available = True
        self._closed = False
        self._subscriptions: list[_MemorySubscription[Any]] = []
        self.terminated: list[RawMessage] = []
        self.redeliveries = 0

    @property
    def connected(self) -> bool:
        return self._available and not self._closed

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def start(self) -> None:
        """Nothing to connect; here so the fake drops in where an ``EventBus`` is started."""

    def set_available(self, available: bool) -> None:
        """Simulate NATS going away (publishes buffer) and coming back (the buffer flushes)."""
        self._available = available
        if available:
            buffered, self._buffer = self._buffer, []
            for message in buffered:
                self._store(message)

    def stored(self, stream: str = EVENTS_STREAM) -> list[RawMessage]:
        """Messages stored in ``stream``, oldest first."""
        return list(self._streams[stream].messages)

    async def publish(self, event: events_pb2.Event, *, tenant: str = "") -> str:
        subject = stamp(event, service=self._service, replica_id=self._replica_id, tenant=tenant)
        self._submit(RawMessage(subject, event.SerializeToString(), event.id))
        return event.id

    async def publish_raw(self, subject: str, data: bytes, *, msg_id: str | None = None) -> None:
        self._submit(RawMessage(subject, data, msg_id or uuid7()))

    async def subscribe(self, *, durable: str, subjects: Sequence[str], handler: EventHandler,
                        stream: str = EVENTS_STREAM,
                        deliver: DeliverPolicy = "all") -> _MemorySubscription[events_pb2.Event]:
        def decode(message: RawMessage) -> tuple[events_pb2.Event, str]:
            event = decode_event(message.data)
            return event, event.id
        return self._subscribe(stream, durable, subjects, deliver, decode, handler)

    async def subscribe_raw(self, *, durable: str, subjects: Sequence[str], handler: RawHandler,
                            stream: str = TELEMETRY_STREAM,
                            deliver: DeliverPolicy = "all") -> _MemorySubscription[RawMessage]:
        return self._subscribe(stream, durable, subjects, deliver, lambda m: (m, m.msg_id),
                               handler)

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait until every running subscription has handled every stored message."""
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(s.idle.wait() for s in self._subscriptions if s.running))

    async def shutdown(self) -> None:
        """Stop every subscription. Idempotent."""
        self._closed = True
        subscriptions, self._subscriptions = self._subscriptions, []
        await asyncio.gather(*(s.stop() for s in subscriptions))

    def _subscribe(self, stream_name: str, durable: str, subjects: Sequence[str],
                   deliver: DeliverPolicy, decode: Callable[[RawMessage], tuple[T, str]],
                   handler: Callable[[T], Awaitable[None]]) -> _MemorySubscription[T]:
        if self._closed:
            raise Unavailable("the event bus is shut down")
        stream = self._streams[stream_name]
        stream.cursors.setdefault(durable, len(stream.messages) if deliver == "new" else 0)
        subscription = _MemorySubscription(self, stream, durable, subjects, decode, handler)
        self._subscriptions.append(subscription)
        return subscription

    def _submit(self, message: RawMessage) -> None:
        if self._closed:
            raise Unavailable("the event bus is shut down")
        if not message.subject.startswith(("phoenix.events.", "phoenix.telemetry.")):
            raise InvalidArgument(f"{message.subject!r} is in no Phoenix stream", field="subject")
        if self._available:
            self._store(message)
        elif len(self._buffer) >= self._capacity:
            raise ResourceExhausted(f"the bus publish buffer is full ({self._capacity})")
        else:
            self._buffer.append(message)

    def _store(self, message: RawMessage) -> None:
        name = EVENTS_STREAM if message.subject.startswith(EVENTS_PREFIX) else TELEMETRY_STREAM
        stream = self._streams[name]
        if message.msg_id in stream.ids:
            return  # Nats-Msg-Id: stored once
        stream.ids.add(message.msg_id)
        stream.messages.append(message)
        for subscription in self._subscriptions:
            if not subscription.running:
                continue
            subscription.idle.clear()
            subscription.wakeup.set()
