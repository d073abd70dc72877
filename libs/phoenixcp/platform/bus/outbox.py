"""The bounded buffer of messages JetStream has not confirmed yet, and its in-order flusher.

While NATS is away, ``publish`` puts messages here instead of waiting; one background task
(:meth:`Outbox.run`) sends them, oldest first, retrying with tenacity's exponential backoff
(plus a little jitter) until JetStream confirms each one. A message leaves the buffer only
once it is stored, so the order of ``put`` is the order of storage and nothing is lost while
the process lives. A message is never dropped silently: ``put`` on a full buffer raises
``ResourceExhausted`` to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
)

from phoenixcp.errors import ResourceExhausted

__all__ = ["Outbox", "OutgoingMessage", "Sender"]

_log = logging.getLogger(__name__)

_FIRST_BACKOFF: Final = 0.05
_LOG_EVERY: Final = 20  # while NATS stays away, one warning per this many failed attempts


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message on its way to JetStream; ``msg_id`` becomes ``Nats-Msg-Id``."""

    subject: str
    data: bytes
    msg_id: str


#: Sends one message and returns once JetStream stored it; raises to have it retried.
Sender = Callable[[OutgoingMessage], Awaitable[None]]


class Outbox:
    """A FIFO of at most ``capacity`` messages, flushed in order by :meth:`run`.

    Concurrency: use from one event loop. ``put`` never waits. One ``run`` task per outbox.
    ``len()`` includes the message being sent. ``on_size`` is called with the new length
    after every change (for a gauge).
    """

    def __init__(
        self,
        *,
        capacity: int,
        send: Sender,
        on_size: Callable[[int], None] = lambda size: None,
        max_backoff: float = 2.0,
    ) -> None:
        self._capacity = capacity
        self._send = send
        self._on_size = on_size
        self._max_backoff = max_backoff
        self._queue: deque[OutgoingMessage] = deque()
        self._has_items = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def capacity(self) -> int:
        """The most messages it holds."""
        return self._capacity

    def put(self, message: OutgoingMessage) -> None:
        """Append ``message``; raise ``ResourceExhausted`` (and keep nothing) when full."""
        if len(self._queue) >= self._capacity:
            raise ResourceExhausted(
                f"the bus publish buffer is full ({self._capacity} messages wait for NATS); "
                f"{message.subject} was not published",
                retry_after=self._max_backoff,
            )
        self._queue.append(message)
        self._has_items.set()
        self._drained.clear()
        self._on_size(len(self._queue))

    def wake(self) -> None:
        """Retry now instead of at the end of the current backoff (NATS just came back)."""
        self._wakeup.set()

    async def wait_empty(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every message to be sent; whether they were."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), timeout)
        return not self._queue

    async def run(self) -> None:
        """Send messages in order until cancelled; each is retried until it is stored."""
        while True:
            await self._has_items.wait()
            message = self._queue[0]
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(Exception),
                wait=wait_exponential(multiplier=_FIRST_BACKOFF, max=self._max_backoff)
                + wait_random(0, _FIRST_BACKOFF),
                sleep=self._sleep,
                before_sleep=self._log_retry,
            )
            async for attempt in retrying:
                with attempt:
                    await self._send(message)
            self._queue.popleft()
            if not self._queue:
                self._has_items.clear()
                self._drained.set()
            self._on_size(len(self._queue))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)
        self._wakeup.clear()

    def _log_retry(self, state: RetryCallState) -> None:
        if state.attempt_number == 1 or state.attempt_number % _LOG_EVERY == 0:
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            _log.warning(
                "bus buffer cannot flush yet; retrying with backoff",
                extra={"fields": {"buffered": len(self._queue), "attempt": state.attempt_number,
                                  "error": str(error) or type(error).__name__}},
            )
