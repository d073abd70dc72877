"""Work run by run_when_idle waits at its checkpoints while the event loop has work."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from phoenixcp.core.checkpoints import checkpoint
from phoenixcp.platform.idle_work import (
    IdleGate,
    IdleGatedEventLoop,
    IdleGateMetrics,
    run_when_idle,
)

T = TypeVar("T")


def run_gated(main: Callable[[IdleGatedEventLoop], Coroutine[Any, Any, T]]) -> T:
    loop = IdleGatedEventLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.close()


def spin(seconds: float) -> None:
    """Python work on the loop that never sleeps in select."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


class Counter:
    """Work that counts its checkpoints until told to stop."""

    def __init__(self) -> None:
        self.count = 0
        self.stop = threading.Event()
        self.started = threading.Event()

    def __call__(self) -> int:
        self.started.set()
        while not self.stop.is_set():
            self.count += 1
            checkpoint()
        return self.count


def test_without_a_gate_it_is_to_thread_and_checkpoints_do_nothing() -> None:
    async def main() -> tuple[int, str]:
        def work() -> tuple[int, str]:
            checkpoint()
            return 42, threading.current_thread().name

        return await run_when_idle(work)

    value, thread = asyncio.run(main())
    assert value == 42
    assert thread != threading.main_thread().name


def test_the_work_waits_while_the_loop_runs_python_and_goes_on_when_it_sleeps() -> None:
    counter = Counter()

    async def main(loop: IdleGatedEventLoop) -> tuple[int, int, int]:
        loop.idle_gate._max_wait = 10.0  # no forced slice within this test
        work = asyncio.ensure_future(run_when_idle(counter))
        await asyncio.to_thread(counter.started.wait, 5)
        await asyncio.sleep(0.05)  # the loop sleeps: the work runs
        before = counter.count
        spin(0.2)  # the loop is busy for 200 ms
        during = counter.count - before
        await asyncio.sleep(0.05)
        after = counter.count
        counter.stop.set()
        await work
        return before, during, after

    before, during, after = run_gated(main)
    assert before > 0
    # At most the iteration it was in when the loop woke: it parks at the next checkpoint.
    assert during <= 1
    assert after > before + 1


def test_a_loop_that_never_sleeps_still_lets_the_work_finish_and_metrics_count_it() -> None:
    registry = CollectorRegistry()
    metrics = IdleGateMetrics(registry)
    assert b"phoenix_idle_work" not in generate_latest(registry)  # not bound to a loop yet

    async def main(loop: IdleGatedEventLoop) -> tuple[int, int]:
        metrics.bind(loop)
        gate: IdleGate = loop.idle_gate
        gate._max_wait, gate._min_slice = 0.01, 0.002
        done = threading.Event()

        def work() -> int:
            steps = 0
            for _ in range(20):
                checkpoint()
                spin(0.0005)
                steps += 1
            done.set()
            return steps

        future = asyncio.ensure_future(run_when_idle(work))
        deadline = time.monotonic() + 10
        while not done.is_set() and time.monotonic() < deadline:
            spin(0.005)  # busy callbacks, one after the other: select(0) only
            await asyncio.sleep(0)
        return await future, gate.forced_slices

    steps, forced = run_gated(main)
    assert steps == 20
    assert forced >= 1
    assert registry.get_sample_value("phoenix_idle_work_forced_slices_total") == forced
    assert (registry.get_sample_value("phoenix_idle_work_parks_total") or 0) >= forced


def test_a_checkpoint_parks_while_the_loop_has_io_to_handle() -> None:
    """The loop is woken by I/O but needs the GIL the worker holds: the worker's next
    checkpoint sees the loop's epoll descriptor readable and waits until the loop has run
    the reader and gone back to sleep."""
    a, b = socket.socketpair()
    handled = threading.Event()

    async def main(loop: IdleGatedEventLoop) -> list[bool]:
        loop.idle_gate._max_wait = 10.0

        def on_readable() -> None:
            a.recv(1)
            handled.set()

        loop.add_reader(a.fileno(), on_readable)

        def work() -> list[bool]:
            seen = []
            for _ in range(5):
                handled.clear()
                b.send(b"x")
                checkpoint()
                seen.append(handled.is_set())
            return seen

        try:
            return await run_when_idle(work)
        finally:
            loop.remove_reader(a.fileno())

    try:
        assert run_gated(main) == [True] * 5
    finally:
        a.close()
        b.close()


def test_the_gate_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="max_wait > 0"):
        IdleGate(max_wait=0)
