"""The publish buffer: bounded, in order, retried until stored, never a silent drop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest

from phoenixcp.errors import ResourceExhausted, Unavailable
from phoenixcp.platform.bus.outbox import Outbox, OutgoingMessage

pytestmark = pytest.mark.unit


class FlakySink:
    """Stores messages; fails while ``down`` is set, and ``fail_first`` times at the start."""

    def __init__(self, fail_first: int = 0) -> None:
        self.stored: list[str] = []
        self.attempts = 0
        self.down = False
        self._fail_first = fail_first

    async def send(self, message: OutgoingMessage) -> None:
        self.attempts += 1
        if self.down or self.attempts <= self._fail_first:
            raise Unavailable("NATS is away")
        self.stored.append(message.msg_id)


def message(n: int) -> OutgoingMessage:
    return OutgoingMessage("phoenix.events.x._cluster", b"", f"id-{n}")


@contextlib.asynccontextmanager
async def running(outbox: Outbox) -> AsyncIterator[None]:
    task = asyncio.create_task(outbox.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_messages_are_stored_in_order_after_failures() -> None:
    sink = FlakySink(fail_first=3)
    sizes: list[int] = []
    outbox = Outbox(capacity=10, send=sink.send, on_size=sizes.append, max_backoff=0.05)
    for n in range(5):
        outbox.put(message(n))
    async with running(outbox):
        assert await outbox.wait_empty(3)
    assert sink.stored == [f"id-{n}" for n in range(5)]
    assert sizes[:5] == [1, 2, 3, 4, 5] and sizes[-1] == 0


async def test_a_full_buffer_raises_and_keeps_nothing_of_the_refused_message() -> None:
    outbox = Outbox(capacity=2, send=FlakySink().send)
    outbox.put(message(1))
    outbox.put(message(2))
    with pytest.raises(ResourceExhausted) as caught:
        outbox.put(message(3))
    assert caught.value.retry_after is not None and len(outbox) == 2


async def test_the_message_being_sent_still_counts_until_it_is_stored() -> None:
    gate = asyncio.Event()
    stored: list[str] = []

    async def slow(message: OutgoingMessage) -> None:
        await gate.wait()
        stored.append(message.msg_id)

    outbox = Outbox(capacity=1, send=slow)
    outbox.put(message(1))
    async with running(outbox):
        await asyncio.sleep(0.01)
        assert len(outbox) == 1
        with pytest.raises(ResourceExhausted):
            outbox.put(message(2))
        gate.set()
        await until(lambda: len(outbox) == 0)
    assert stored == ["id-1"]


async def test_wake_cuts_the_backoff_short() -> None:
    sink = FlakySink()
    sink.down = True
    outbox = Outbox(capacity=5, send=sink.send, max_backoff=30.0)
    outbox.put(message(1))
    async with running(outbox):
        await until(lambda: sink.attempts >= 5, timeout=10)  # backoff now in whole seconds
        sink.down = False
        began = time.monotonic()
        outbox.wake()
        assert await outbox.wait_empty(1)
        assert time.monotonic() - began < 0.5
    assert sink.stored == ["id-1"]


async def test_wait_empty_reports_what_is_left() -> None:
    sink = FlakySink()
    sink.down = True
    outbox = Outbox(capacity=5, send=sink.send, max_backoff=0.01)
    outbox.put(message(1))
    async with running(outbox):
        assert not await outbox.wait_empty(0.05)
    assert len(outbox) == 1
