"""The event bus on NATS JetStream: the one adapter behind the ``EventPublisher`` and
``EventSubscriber`` ports.

Publishing never waits on NATS for more than ``publish_timeout``: while NATS is away a
message goes into a bounded in-order buffer (:mod:`.outbox`) that a background task
flushes once NATS is back, and ``Nats-Msg-Id`` makes a retried message stored once (within
the streams' ``duplicate_window``). Consumption is at least once through durable pull
consumers (:mod:`.consumer`); handlers must be idempotent by event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from phoenixcp.api.phoenix.v1 import events_pb2
from phoenixcp.errors import InvalidArgument, Unavailable
from phoenixcp.platform.bus.config import BusConfig
from phoenixcp.platform.bus.connection import open_connection
from phoenixcp.platform.bus.consumer import Delivery, NatsSubscription, event_delivery, raw_delivery
from phoenixcp.platform.bus.envelope import (
    EVENTS_PREFIX,
    TELEMETRY_PREFIX,
    service_enum,
    stamp,
    uuid7,
)
from phoenixcp.platform.bus.metrics import BusMetrics
from phoenixcp.platform.bus.outbox import OutgoingMessage
from phoenixcp.platform.bus.ports import (
    EVENTS_STREAM,
    TELEMETRY_STREAM,
    DeliverPolicy,
    EventHandler,
    RawHandler,
    RawMessage,
)
from phoenixcp.platform.bus.publisher import JetStreamPublisher
from phoenixcp.platform.bus.streams import ensure_streams

__all__ = ["EventBus"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

_SUBJECT: Final = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$")
_DURABLE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class EventBus:
    """Publishes and consumes Phoenix events on NATS JetStream.

    Lifecycle: ``start()`` (idempotent; raises ``Unavailable`` when NATS does not answer
    within ``start_timeout``), then publish and subscribe, then ``shutdown()`` (idempotent).
    Also an async context manager. ``publish`` may be called before ``start`` (messages wait
    in the buffer) and during ``shutdown`` until the subscriptions have drained (handlers
    finishing may publish follow-ups), not after.

    Concurrency: use from one event loop; ``publish`` is safe to call from many tasks. The
    messages of one task are stored in the order it published them, across NATS outages.
    One instance per ``registry`` (the metric names are fixed).
    """

    def __init__(
        self,
        *,
        config: BusConfig,
        service: str,
        replica_id: str,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._config = config
        self._service_name = service
        self._service = service_enum(service)
        self._replica_id = replica_id
        self._metrics = BusMetrics(registry if registry is not None else CollectorRegistry())
        self._nc: NATS | None = None
        self._publisher = JetStreamPublisher(
            client=lambda: self._nc, metrics=self._metrics, capacity=config.publish_buffer,
            publish_timeout=config.publish_timeout.total_seconds(),
        )
        self._start_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscriptions: list[NatsSubscription[Any]] = []
        self._closing = False  # no new subscriptions or start
        self._publishing = True  # publishes accepted (still while subscriptions drain)
        self._shutdown: asyncio.Future[None] | None = None

    @property
    def connected(self) -> bool:
        """Whether NATS answers right now (false before ``start`` and while reconnecting)."""
        return self._nc is not None and self._nc.is_connected

    @property
    def buffered(self) -> int:
        """Messages waiting for NATS in the publish buffer."""
        return self._publisher.buffered

    async def start(self) -> None:
        """Connect, create or update the streams, start the buffer flusher. Idempotent."""
        async with self._start_lock:
            if self._closing:
                raise Unavailable("the event bus is shut down")
            if self._nc is not None:
                return
            self._nc = await open_connection(
                self._config, name=f"phoenix/{self._service_name}/{self._replica_id}",
                error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected, closed_cb=self._on_closed,
            )
            self._spawn(self._publisher.run(), "bus-outbox")
            _log.info("bus connected", extra={"fields": {"url": self._config.shown_url}})

    async def publish(self, event: events_pb2.Event, *, tenant: str = "") -> str:
        """Stamp ``event`` in place, publish it, return its id; see ``EventPublisher``.

        Waits at most ``publish_timeout``; when NATS is away or slow the event is buffered
        and this returns. An event that already has an id keeps it, so publishing the same
        event object again is stored once.
        """
        self._check_open(publishing=True)
        subject = stamp(event, service=self._service, replica_id=self._replica_id, tenant=tenant)
        await self._publisher.submit(OutgoingMessage(subject, event.SerializeToString(), event.id))
        return event.id

    async def publish_raw(self, subject: str, data: bytes, *, msg_id: str | None = None) -> None:
        """Publish ``data`` on ``subject`` (under ``phoenix.events.`` or ``phoenix.telemetry.``)
        with the rules of ``publish``; without ``msg_id`` a fresh id still makes retries of
        this call stored once."""
        self._check_open(publishing=True)
        if not _SUBJECT.match(subject) or not subject.startswith(
            (f"{EVENTS_PREFIX}.", f"{TELEMETRY_PREFIX}.")
        ):
            raise InvalidArgument(
                f"{subject!r} is not a literal subject under {EVENTS_PREFIX}. or "
                f"{TELEMETRY_PREFIX}.", field="subject",
            )
        await self._publisher.submit(OutgoingMessage(subject, data, msg_id or uuid7()))

    async def subscribe(
        self,
        *,
        durable: str,
        subjects: Sequence[str],
        handler: EventHandler,
        stream: str = EVENTS_STREAM,
        deliver: DeliverPolicy = "all",
    ) -> NatsSubscription[events_pb2.Event]:
        """Run ``handler`` for each ``Event`` on ``subjects`` through durable ``durable``.

        Success acks; an exception naks (redelivery after ``nak_delay``); an undecodable
        message is term'd and counted. Returns once the durable exists, or at once while
        NATS is away (it binds when NATS is back). A process that subscribes again with the
        same durable resumes where the last one stopped; replicas sharing a durable share
        its messages. Handlers must be idempotent by ``event.id``.
        """
        return await self._subscribe(durable, subjects, stream, deliver, event_delivery, handler)

    async def subscribe_raw(
        self,
        *,
        durable: str,
        subjects: Sequence[str],
        handler: RawHandler,
        stream: str = TELEMETRY_STREAM,
        deliver: DeliverPolicy = "all",
    ) -> NatsSubscription[RawMessage]:
        """As ``subscribe`` for messages that are not envelopes (window reports); the
        de-duplication key is the ``Nats-Msg-Id``."""
        return await self._subscribe(durable, subjects, stream, deliver, raw_delivery, handler)

    async def _subscribe(
        self,
        durable: str,
        subjects: Sequence[str],
        stream: str,
        deliver: DeliverPolicy,
        decode: Callable[[Msg], Delivery[T]],
        handler: Callable[[T], Awaitable[None]],
    ) -> NatsSubscription[T]:
        self._check_open()
        if not _DURABLE.match(durable):
            raise InvalidArgument(f"durable {durable!r} is not 1-64 letters, digits, '_' or '-'",
                                  field="durable")
        if not subjects or isinstance(subjects, str):
            raise InvalidArgument("subjects must be a non-empty list", field="subjects")
        subscription = NatsSubscription(
            client=lambda: self._nc, config=self._config, metrics=self._metrics, stream=stream,
            durable=durable, subjects=subjects, deliver=deliver, decode=decode, handler=handler,
        )
        await subscription.start()
        self._subscriptions.append(subscription)
        return subscription

    async def shutdown(self) -> None:
        """Stop subscriptions, flush the buffer for up to ``shutdown_grace``, close.

        Idempotent; concurrent callers wait for the same shutdown. Messages still buffered
        at the end are logged and counted (``reason="shutdown"``), never dropped silently.
        """
        if self._shutdown is None:
            self._closing = True
            self._shutdown = asyncio.ensure_future(self._close())
        await asyncio.shield(self._shutdown)

    async def _close(self) -> None:
        # Handlers still running may publish follow-up events: accept those until they end.
        await asyncio.gather(*(s.stop() for s in self._subscriptions))
        self._subscriptions.clear()
        self._publishing = False
        grace = self._config.shutdown_grace.total_seconds()
        left = await self._publisher.flush(grace if self._nc is not None else 0)
        if left:
            self._metrics.rejected.labels("shutdown").inc(left)
            _log.error("bus shut down with unpublished messages",
                       extra={"fields": {"unpublished": left, "grace_s": grace}})
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.flush(timeout=1)  # the last acks
            with contextlib.suppress(Exception):
                await nc.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.shutdown()

    def _check_open(self, *, publishing: bool = False) -> None:
        closed = not self._publishing if publishing else self._closing
        if closed:
            raise Unavailable("the event bus is shut down")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_error(self, exc: Exception) -> None:
        # Refused connections while reconnecting are expected; the disconnect was logged.
        level = logging.WARNING if self.connected else logging.DEBUG
        _log.log(level, "nats client error", extra={"fields": {"error": repr(exc)}})

    async def _on_disconnected(self) -> None:
        if not self._closing:
            _log.warning("bus disconnected from NATS; buffering publishes, reconnecting",
                         extra={"fields": {"url": self._config.shown_url}})

    async def _on_closed(self) -> None:
        if not self._closing and self._nc is not None:  # not a start() that gave up
            _log.error("bus connection to NATS closed for good; publishes stay buffered",
                       extra={"fields": {"url": self._config.shown_url}})

    async def _on_reconnected(self) -> None:
        _log.info("bus reconnected to NATS", extra={"fields": {"buffered": self.buffered}})
        self._spawn(self._after_reconnect(), "bus-reconnected")

    async def _after_reconnect(self) -> None:
        nc = self._nc
        if nc is not None:
            try:
                # A NATS that lost its store comes back without streams: recreate them.
                await ensure_streams(nc.jetstream(), self._config)
            except Exception as exc:  # a background task: report, never die silently
                _log.warning("bus could not check streams after reconnect",
                             extra={"fields": {"error": repr(exc)}})
        self._publisher.wake()
