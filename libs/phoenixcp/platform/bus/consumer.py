"""One durable JetStream pull consumer and the task that feeds its handler.

The task binds (creating or updating the durable consumer) once NATS answers, pulls one
message at a time with a lingering request (so a new event is handled within milliseconds)
and takes a batch when the consumer reports more pending. Each message is decoded, skipped
if its id was handled already, passed to the handler inside an OpenTelemetry span, then
acked; a handler exception naks it with ``nak_delay``; an undecodable message is term'd.
The loop survives NATS restarts: it waits while disconnected and rebinds after an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.api import DeliverPolicy as NatsDeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from phoenixcp.api.phoenix.v1 import events_pb2
from phoenixcp.platform.bus.config import BusConfig
from phoenixcp.platform.bus.envelope import decode_event, subject_kind
from phoenixcp.platform.bus.metrics import BusMetrics
from phoenixcp.platform.bus.ports import DeliverPolicy, RawMessage
from phoenixcp.platform.bus.publisher import MSG_ID_HEADER

__all__ = ["Delivery", "NatsSubscription", "event_delivery", "raw_delivery"]

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
_PROPAGATOR: Final = TraceContextTextMapPropagator()

_BATCH: Final = 64
_RETRY_PAUSE: Final = 0.5
_MAX_ACK_PENDING: Final = 1_000

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Delivery(Generic[T]):
    """A decoded message: what the handler gets, and the id to de-duplicate on."""

    item: T
    key: str
    kind: str
    traceparent: str = ""


class _SeenIds:
    """The last ``limit`` ids handled, oldest forgotten first."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._ids

    def add(self, key: str) -> None:
        self._ids[key] = None
        if len(self._ids) > self._limit:
            self._ids.popitem(last=False)


class NatsSubscription(Generic[T]):
    """A running durable consumer (implements the ``Subscription`` port).

    Handler calls are sequential: one message at a time, in stream order except for naked
    messages, which come back after ``nak_delay``. ``stop()`` is idempotent.
    """

    def __init__(
        self,
        *,
        client: Callable[[], NATS | None],
        config: BusConfig,
        metrics: BusMetrics,
        stream: str,
        durable: str,
        subjects: Sequence[str],
        deliver: DeliverPolicy,
        decode: Callable[[Msg], Delivery[T]],
        handler: Callable[[T], Awaitable[None]],
    ) -> None:
        self._client = client
        self._config = config
        self._metrics = metrics
        self._stream = stream
        self._durable = durable
        self._subjects = list(subjects)
        self._deliver = deliver
        self._decode = decode
        self._handler = handler
        self._seen = _SeenIds(config.dedupe_window)
        self._pull_wait = config.pull_wait.total_seconds()
        self._ack_wait = config.ack_wait.total_seconds()
        self._pull: JetStreamContext.PullSubscription | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def durable(self) -> str:
        """The durable consumer's name."""
        return self._durable

    async def start(self) -> None:
        """Bind now if NATS answers (so the durable exists on return), then run in the
        background; when NATS is away the background task binds once it is back."""
        nc = self._client()
        if nc is not None and nc.is_connected:
            with contextlib.suppress(NatsError, TimeoutError):
                self._pull = await self._bind(nc)
        self._tasks = [asyncio.create_task(self._run(), name=f"bus-consume-{self._durable}"),
                       asyncio.create_task(self._poll_lag(), name=f"bus-lag-{self._durable}")]

    async def stop(self) -> None:
        """Let the current message finish (up to ``shutdown_grace``), stop pulling, unbind."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            # Wait out the lingering pull rather than cancel it: the server would still
            # deliver to it, and that message would wait ack_wait for its redelivery.
            grace = self._config.shutdown_grace.total_seconds() + self._pull_wait
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        pull, self._pull = self._pull, None
        if pull is not None:
            with contextlib.suppress(NatsError, TimeoutError, ValueError):
                await pull.unsubscribe()

    async def _bind(self, nc: NATS) -> JetStreamContext.PullSubscription:
        js = nc.jetstream()
        try:
            existing = (await js.consumer_info(self._stream, self._durable)).config
        except NotFoundError:
            existing = ConsumerConfig(
                deliver_policy=NatsDeliverPolicy.ALL if self._deliver == "all"
                else NatsDeliverPolicy.NEW,
            )
        # Keep the existing consumer's position and start policy; reconcile the rest.
        desired = existing.evolve(
            name=self._durable,
            durable_name=self._durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            max_deliver=-1,
            max_ack_pending=_MAX_ACK_PENDING,
            filter_subject=None,
            filter_subjects=self._subjects,
        )
        await js.add_consumer(self._stream, desired)
        return await js.pull_subscribe_bind(durable=self._durable, stream=self._stream)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            nc = self._client()
            if nc is None or not nc.is_connected:
                await self._pause(0.1)
                continue
            try:
                if self._pull is None:
                    self._pull = await self._bind(nc)
                msgs = await self._pull.fetch(1, timeout=self._pull_wait)
                pending = msgs[-1].metadata.num_pending
                if pending:
                    # The no-wait probe of a batch fetch returns what is there at once.
                    msgs += await self._pull.fetch(min(pending, _BATCH), timeout=self._pull_wait)
            except TimeoutError:
                continue  # nothing new (or NATS went away mid-request)
            except NatsError as exc:
                _log.warning("bus consumer lost its binding; rebinding",
                             extra={"fields": {"durable": self._durable, "error": repr(exc)}})
                self._pull = None
                await self._pause(_RETRY_PAUSE)
                continue
            fetched = time.monotonic()
            for index, msg in enumerate(msgs):
                if time.monotonic() - fetched > self._ack_wait / 2:
                    # A slow batch: keep the server from redelivering what still waits here.
                    await self._extend(msgs[index:])
                    fetched = time.monotonic()
                if self._stopping.is_set():
                    # Stopping: start nothing new; another consumer gets it at once.
                    await self._settle(msg.nak(), "nak")
                else:
                    await self._process(msg)

    async def _extend(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            with contextlib.suppress(NatsError, TimeoutError):
                await msg.in_progress()

    async def _process(self, msg: Msg) -> None:
        self._metrics.pending.labels(self._durable).set(msg.metadata.num_pending)
        try:
            delivery = self._decode(msg)
        except ValueError as exc:
            _log.error(
                "bus terminated an undecodable message; it is not redelivered",
                extra={"fields": {"durable": self._durable, "subject": msg.subject,
                                  "stream_seq": msg.metadata.sequence.stream, "error": str(exc)}},
            )
            await self._settle(msg.term(), "term")
            return
        if delivery.key in self._seen:
            await self._settle(msg.ack(), "ack")  # a redelivery of what was handled
            return
        try:
            with self._span(delivery, msg):
                await self._handler(delivery.item)
        except Exception as exc:
            _log.warning(
                "bus handler failed; the message will be redelivered",
                exc_info=True,
                extra={"fields": {"durable": self._durable, "subject": msg.subject,
                                  "id": delivery.key, "attempt": msg.metadata.num_delivered,
                                  "retry_in_s": self._config.nak_delay.total_seconds(),
                                  "error": repr(exc)}},
            )
            await self._settle(msg.nak(delay=self._config.nak_delay.total_seconds()), "nak")
            return
        self._seen.add(delivery.key)
        await self._settle(msg.ack(), "ack")

    async def _settle(self, action: Awaitable[None], outcome: str) -> None:
        try:
            await action
        except (NatsError, TimeoutError) as exc:
            # The server redelivers after ack_wait; the seen-id set absorbs it.
            _log.info("bus could not settle a message",
                      extra={"fields": {"durable": self._durable, "outcome": outcome,
                                        "error": repr(exc)}})
        self._metrics.consumed.labels(self._durable, outcome).inc()

    def _span(self, delivery: Delivery[T], msg: Msg) -> contextlib.AbstractContextManager[object]:
        parent = (_PROPAGATOR.extract({"traceparent": delivery.traceparent})
                  if delivery.traceparent else otel_context.Context())
        return _tracer.start_as_current_span(
            f"handle {delivery.kind}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={"messaging.system": "nats", "messaging.destination.name": msg.subject,
                        "messaging.message.id": delivery.key,
                        "messaging.consumer.group.name": self._durable},
        )

    async def _poll_lag(self) -> None:
        interval = self._config.lag_poll_interval.total_seconds()
        while not self._stopping.is_set():
            nc = self._client()
            if nc is not None and nc.is_connected:
                try:
                    info = await nc.jetstream().consumer_info(self._stream, self._durable)
                except (NatsError, TimeoutError):
                    pass  # the consumer loop reports binding trouble; lag waits for next poll
                else:
                    self._metrics.pending.labels(self._durable).set(info.num_pending or 0)
            await self._pause(interval)


def event_delivery(msg: Msg) -> Delivery[events_pb2.Event]:
    """Decode an ``Event`` envelope; ValueError (poison) when it is not one."""
    event = decode_event(msg.data)
    return Delivery(item=event, key=event.id, kind=event.WhichOneof("payload") or "unknown",
                    traceparent=event.traceparent)


def raw_delivery(msg: Msg) -> Delivery[RawMessage]:
    """Wrap a raw message; its key is the ``Nats-Msg-Id`` (or the stream sequence)."""
    meta = msg.metadata
    key = (msg.headers or {}).get(MSG_ID_HEADER) or f"{meta.stream}:{meta.sequence.stream}"
    return Delivery(item=RawMessage(msg.subject, msg.data, key), key=key,
                    kind=subject_kind(msg.subject))
