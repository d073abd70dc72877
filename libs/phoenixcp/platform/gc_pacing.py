"""Keep the cycle collector's full passes off the data path's latency.

A metrics-pipeline replica holds a large, long-lived working set (its series index, label
catalog, merge state, caches). CPython's oldest-generation collection walks all of it: ~60-100
ms with 100k series, every few seconds under load, with the event loop stopped — the main
cause of the ingest p99 (bench/pipeline/run.py --mode latency). Most of that set never becomes
cyclic garbage.

:class:`GcPacer` moves everything alive into the permanent generation (``gc.freeze()``) every
``freeze_every`` seconds, so the collector's passes only walk what is new since; and every
``full_every`` seconds it unfreezes and runs one full collection, so cycles that became garbage
after being frozen are still freed (at most ``full_every`` late). Objects freed by reference
counting are never delayed. One long pause every ``full_every`` replaces one every few
seconds.

The first freezes come sooner, after ``first_freeze`` seconds and then twice as long each time
up to ``freeze_every``: a replica that starts under load learns its 100k series in its first
seconds, and without an early freeze the collector walked that growing heap in 35-65 ms full
passes several times before the first freeze at 10 s (bench/pipeline/run.py --mode latency).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time

__all__ = ["GcPacer"]

log = logging.getLogger(__name__)


class GcPacer:
    """``start`` on the event loop, ``stop`` (idempotent); see the module docstring."""

    def __init__(self, *, freeze_every: float = 10.0, full_every: float = 600.0,
                 first_freeze: float = 0.5) -> None:
        if freeze_every <= 0 or full_every < freeze_every:
            raise ValueError("GcPacer needs 0 < freeze_every <= full_every")
        if not 0 < first_freeze <= freeze_every:
            raise ValueError("GcPacer needs 0 < first_freeze <= freeze_every")
        self._freeze_every = freeze_every
        self._first_freeze = first_freeze
        self._full_every = full_every
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="gc-pacer")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        gc.unfreeze()

    def tick(self, *, full: bool) -> None:
        """One step: freeze what is alive; first unfreeze and collect fully if ``full``."""
        if full:
            started = time.perf_counter()
            gc.unfreeze()
            found = gc.collect()
            log.debug("full collection", extra={"fields": {
                "unreachable": found, "ms": round((time.perf_counter() - started) * 1e3, 1)}})
        gc.freeze()

    async def _run(self) -> None:
        last_full = time.monotonic()
        wait = self._first_freeze
        while True:
            await asyncio.sleep(wait)
            wait = min(wait * 2, self._freeze_every)
            now = time.monotonic()
            full = now - last_full >= self._full_every
            if full:
                last_full = now
            self.tick(full=full)
