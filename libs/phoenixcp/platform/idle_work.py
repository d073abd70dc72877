"""CPU work on a worker thread that runs while the event loop sleeps, and waits while it works.

The metrics-pipeline answers ingest requests on one event loop and builds its window
snapshots and reports (tens of milliseconds of CPU per window, over a second on a cold start
or a series bomb) on a worker thread. Two threads that both want the GIL share it badly: each
time the loop makes a syscall the worker takes the GIL, and the loop waits up to the switch
interval (5 ms) to get it back, so a request that needs 1 ms of CPU took 6-11 ms while a
window was built (ADR 0015).

:class:`IdleGate` makes the worker yield instead. The loop's selector tells the gate when the
loop goes to sleep in ``select`` (and until when: its timeout) and when it wakes. Work run by
:func:`run_when_idle` calls :func:`phoenixcp.core.checkpoints.checkpoint` every few hundred
microseconds; a checkpoint parks the worker while the loop is awake, while the loop's timeout
has passed, or while the loop's epoll descriptor is readable (the loop has been woken by I/O
but is waiting for the GIL the worker holds). The loop never waits for the gate: it only
waits for the GIL until the worker's next checkpoint.

A loop that never sleeps (saturated) must not starve the work forever: a worker parked for
``max_wait`` runs ``min_slice`` regardless, and the gate counts it (``forced_slices``).

Use :func:`new_event_loop` as the loop factory (``asyncio.Runner(loop_factory=...)``). On any
other loop :func:`run_when_idle` is ``asyncio.to_thread`` and checkpoints do nothing.
:class:`IdleGateMetrics` puts the gate's counts on ``/metrics``: forced slices that climb
mean the loop has not slept for ``max_wait`` at a time, i.e. the process is saturated.
"""

from __future__ import annotations

import asyncio
import math
import select
import selectors
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from phoenixcp.core.checkpoints import checkpoints_call

__all__ = ["IdleGate", "IdleGateMetrics", "IdleGatedEventLoop", "new_event_loop",
           "run_when_idle"]

T = TypeVar("T")


class IdleGate:
    """Shared by one event loop (``loop_sleeps``/``loop_wakes``, from its selector) and any
    number of worker threads (``run``). Thread-safe."""

    def __init__(self, *, wake_fd: int | None = None, max_wait: float = 0.05,
                 min_slice: float = 0.005) -> None:
        """``wake_fd`` is a descriptor that is readable while the loop has I/O to handle
        (an epoll selector's own descriptor); without it a worker notices the loop's wake-up
        only once the loop has the GIL again."""
        if max_wait <= 0 or min_slice <= 0:
            raise ValueError("IdleGate needs max_wait > 0 and min_slice > 0")
        self._max_wait = max_wait
        self._min_slice = min_slice
        self._cond = threading.Condition(threading.Lock())
        self._sleeping = False
        self._deadline = 0.0
        self._parked = 0
        self._poll: Any = None
        if wake_fd is not None:
            self._poll = select.poll()
            self._poll.register(wake_fd, select.POLLIN)
        self._forced_until = threading.local()
        self.parks = 0
        """How many times a worker waited for the loop (read for /metrics; approximate)."""
        self.forced_slices = 0
        """How many times a worker ran although the loop had work, after ``max_wait``."""

    # The loop's side: called by the selector around every select.

    def loop_sleeps(self, timeout: float | None) -> None:
        """The loop is about to block in select for up to ``timeout`` s (None: no limit)."""
        if timeout is not None and timeout <= 0:
            return  # a poll, not a sleep: the loop has work ready
        with self._cond:
            self._deadline = math.inf if timeout is None else time.monotonic() + timeout
            self._sleeping = True
            if self._parked:
                self._cond.notify_all()

    def loop_wakes(self) -> None:
        """The loop returned from select (it holds the GIL again)."""
        self._sleeping = False  # one store under the GIL; workers read it at checkpoints

    # The workers' side.

    def run(self, func: Callable[[], T]) -> T:
        """Run ``func`` on this (worker) thread, its checkpoints gated; it starts once the
        loop sleeps (or after ``max_wait``)."""
        with checkpoints_call(self.checkpoint):
            self.checkpoint()
            return func()

    def checkpoint(self) -> None:
        """Park this worker while the loop has work (see the module docstring)."""
        if time.monotonic() < getattr(self._forced_until, "t", 0.0):
            return
        if not self._loop_busy():
            return
        with self._cond:
            self._parked += 1
            self.parks += 1
            try:
                give_up = time.monotonic() + self._max_wait
                while self._loop_busy():
                    left = give_up - time.monotonic()
                    if left <= 0:
                        self.forced_slices += 1
                        self._forced_until.t = time.monotonic() + self._min_slice
                        return
                    self._cond.wait(left)
            finally:
                self._parked -= 1

    def _loop_busy(self) -> bool:
        if not self._sleeping or time.monotonic() >= self._deadline:
            return True
        return self._poll is not None and bool(self._poll.poll(0))


class _GatedSelector(selectors.BaseSelector):
    """A selector that tells an :class:`IdleGate` when its loop sleeps and wakes."""

    def __init__(self, inner: selectors.BaseSelector, gate: IdleGate) -> None:
        self._inner = inner
        self._gate = gate

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None
               ) -> list[tuple[selectors.SelectorKey, int]]:
        self._gate.loop_sleeps(timeout)
        try:
            return self._inner.select(timeout)
        finally:
            self._gate.loop_wakes()

    def close(self) -> None:
        self._inner.close()

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()


class IdleGatedEventLoop(asyncio.SelectorEventLoop):
    """The default selector event loop, with an :class:`IdleGate` (``idle_gate``)."""

    def __init__(self) -> None:
        inner = selectors.DefaultSelector()
        fileno = getattr(inner, "fileno", None)  # epoll and kqueue selectors have one
        self.idle_gate = IdleGate(wake_fd=fileno() if fileno is not None else None)
        super().__init__(_GatedSelector(inner, self.idle_gate))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A loop factory for ``asyncio.Runner``: an :class:`IdleGatedEventLoop`."""
    return IdleGatedEventLoop()


async def run_when_idle(func: Callable[[], T]) -> T:
    """``func()`` on a worker thread, its checkpoints parked while this loop has work;
    ``asyncio.to_thread(func)`` on a loop without a gate."""
    gate: IdleGate | None = getattr(asyncio.get_running_loop(), "idle_gate", None)
    if gate is None:
        return await asyncio.to_thread(func)
    return await asyncio.to_thread(gate.run, func)


class IdleGateMetrics(Collector):
    """The counts of the gate of the loop given to :meth:`bind`, read at each scrape:
    ``phoenix_idle_work_parks_total`` and ``phoenix_idle_work_forced_slices_total``. Nothing
    is exported before ``bind`` or for a loop without a gate."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._gate: IdleGate | None = None
        registry.register(self)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._gate = getattr(loop, "idle_gate", None)

    def describe(self) -> list[Metric]:
        return []  # the families exist only once bound: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        gate = self._gate
        if gate is None:
            return
        yield CounterMetricFamily(
            "phoenix_idle_work_parks",
            "Times window work (snapshots, reports, dry runs) waited at a checkpoint for the "
            "event loop to go idle.", value=gate.parks)
        yield CounterMetricFamily(
            "phoenix_idle_work_forced_slices",
            "Times window work ran a slice although the event loop had work, after waiting "
            "max_wait (50 ms): the loop did not sleep, i.e. the process is saturated.",
            value=gate.forced_slices)
