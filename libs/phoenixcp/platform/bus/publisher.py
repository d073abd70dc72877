"""Publishing to JetStream with a bounded, ordered buffer in front of it.

A message goes straight to JetStream when NATS is connected and nothing older waits in the
buffer; otherwise (or when the direct attempt fails within ``publish_timeout``) it waits in
the :class:`~.outbox.Outbox`, whose task sends it once NATS is back. Every attempt carries
``Nats-Msg-Id``, so a message whose acknowledgement was lost is stored once when retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from nats.aio.client import Client as NATS
from nats.errors import BadHeaderError, BadSubjectError, MaxPayloadError
from nats.errors import Error as NatsError
from nats.js.errors import BadRequestError

from phoenixcp.errors import InvalidArgument, ResourceExhausted, Unavailable
from phoenixcp.platform.bus.envelope import subject_kind
from phoenixcp.platform.bus.metrics import BusMetrics
from phoenixcp.platform.bus.outbox import Outbox, OutgoingMessage

__all__ = ["MSG_ID_HEADER", "JetStreamPublisher"]

_log = logging.getLogger(__name__)

MSG_ID_HEADER: Final = "Nats-Msg-Id"
# JetStream said no to this message, and saying it again will not change that.
_REFUSED: Final = (BadRequestError, MaxPayloadError, BadSubjectError, BadHeaderError)


class JetStreamPublisher:
    """Sends messages to JetStream, buffering them in order while it is away.

    Concurrency: one event loop; ``submit`` is safe from many tasks, and the messages of one
    task are stored in the order it submitted them. ``run`` is the one flusher task.
    """

    def __init__(
        self,
        *,
        client: Callable[[], NATS | None],
        metrics: BusMetrics,
        capacity: int,
        publish_timeout: float,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._timeout = publish_timeout
        self._outbox = Outbox(capacity=capacity, send=self._send_buffered,
                              on_size=metrics.buffered.set)

    @property
    def buffered(self) -> int:
        """Messages in the buffer, including one being sent."""
        return len(self._outbox)

    async def submit(self, message: OutgoingMessage) -> None:
        """Store ``message`` or buffer it; waits at most about ``publish_timeout``.

        Raises ``ResourceExhausted`` when it must be buffered and the buffer is full, and
        ``InvalidArgument`` when JetStream refuses it for good.
        """
        nc = self._client()
        # Behind a non-empty buffer a direct send would overtake older messages.
        if not self._outbox and nc is not None and nc.is_connected:
            try:
                await self._send(message)
                return
            except Unavailable:
                pass
        try:
            self._outbox.put(message)
        except ResourceExhausted:
            self._metrics.rejected.labels("buffer_full").inc()
            raise

    async def run(self) -> None:
        """Flush the buffer in order until cancelled."""
        await self._outbox.run()

    def wake(self) -> None:
        """Retry the buffer now (NATS came back)."""
        self._outbox.wake()

    async def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the buffer to empty; the messages still in it."""
        await self._outbox.wait_empty(timeout)
        return len(self._outbox)

    async def _send(self, message: OutgoingMessage) -> None:
        """One publish; ``Unavailable`` means retry later, ``InvalidArgument`` never."""
        nc = self._client()
        if nc is None or not nc.is_connected:
            raise Unavailable("NATS is not connected")
        try:
            async with asyncio.timeout(self._timeout):
                await nc.jetstream().publish(
                    message.subject, message.data, timeout=self._timeout,
                    headers={MSG_ID_HEADER: message.msg_id},
                )
        except _REFUSED as exc:
            raise InvalidArgument(f"JetStream refused {message.subject}: {exc!r}") from exc
        except (NatsError, TimeoutError, OSError) as exc:
            self._metrics.publish_failures.inc()
            raise Unavailable(f"publish to {message.subject} failed: {exc!r}") from exc
        self._metrics.published.labels(subject_kind(message.subject)).inc()

    async def _send_buffered(self, message: OutgoingMessage) -> None:
        try:
            await self._send(message)
        except InvalidArgument as exc:
            # Retrying cannot help and the caller is gone: drop it, loudly.
            self._metrics.rejected.labels("refused").inc()
            _log.error("bus dropped a buffered message JetStream refused",
                       extra={"fields": {"subject": message.subject, "id": message.msg_id,
                                         "error": str(exc)}})
