"""Starts a service's leader-only components when it wins, and stops them the moment it loses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from phoenixcp.platform.coord.ports import Fence, LeaderOnly, Leadership, LeadershipChange

__all__ = ["LeaderOnlyRunner"]

_log = logging.getLogger(__name__)


class LeaderOnlyRunner:
    """Runs ``components`` (in order) for each term this replica leads; stops them in reverse.

    A loss stops them at once: a start still in progress is cancelled, then every component
    whose start was attempted is stopped, each awaited. A component whose ``start`` raises is
    logged and still stopped at the end of the term; the others keep running. ``shutdown()``
    stops them and ends ``run()``; it is idempotent. Call it before the election's shutdown,
    so leader work has stopped when the lease is handed over.
    """

    def __init__(self, *, election: Leadership, components: Sequence[LeaderOnly]) -> None:
        self._election = election
        self._components = tuple(components)
        self._fence: Fence | None = None
        self._started: list[LeaderOnly] = []
        self._starting: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._running = False
        self._finished = asyncio.Event()

    @property
    def active(self) -> bool:
        """Whether components are started (or starting) for a term."""
        return self._fence is not None

    async def run(self) -> None:
        """Follow the election until shutdown() or until the election's run() ends."""
        if self._running:
            raise RuntimeError("LeaderOnlyRunner.run() is already running")
        self._running = True
        changes = self._election.subscribe()
        stop = asyncio.create_task(self._stopping.wait())
        try:
            while True:
                following = asyncio.ensure_future(anext(changes))
                await asyncio.wait({following, stop}, return_when=asyncio.FIRST_COMPLETED)
                if stop.done():
                    following.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await following
                    break
                try:
                    change = following.result()
                except StopAsyncIteration:
                    break
                await self._apply(change)
        finally:
            stop.cancel()
            aclose = getattr(changes, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            await self._stop_term()
            self._finished.set()

    async def shutdown(self) -> None:
        """Stop the components (awaited) and end run(). Idempotent."""
        self._stopping.set()
        await self._stop_term()
        if self._running:
            await self._finished.wait()

    async def _apply(self, change: LeadershipChange) -> None:
        if change.is_leader and change.fence is not None and not self._stopping.is_set():
            if change.fence != self._fence:
                await self._stop_term()
                self._fence = change.fence
                self._starting = asyncio.create_task(self._start_term(change.fence))
        elif not change.is_leader and self._fence is not None:
            await self._stop_term()

    async def _start_term(self, fence: Fence) -> None:
        for component in self._components:
            if not fence.valid:
                return
            self._started.append(component)
            try:
                await component.start(fence)
            except Exception:
                _log.exception("leader-only component failed to start", extra={"fields": {
                    "component": type(component).__name__, "lease": fence.lease_id}})

    async def _stop_term(self) -> None:
        async with self._lock:
            starting, self._starting = self._starting, None
            if starting is not None:
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
            fence, self._fence = self._fence, None
            started, self._started = self._started, []
            for component in reversed(started):
                try:
                    await component.stop()
                except Exception:
                    _log.exception("leader-only component failed to stop", extra={"fields": {
                        "component": type(component).__name__}})
            if started:
                _log.info("leader-only components stopped", extra={"fields": {
                    "count": len(started), "lease": fence.lease_id if fence else None}})
