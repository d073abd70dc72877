"""A raw etcd watch that survives disconnects: every event from a start revision, in order.

Resumes from the revision after the last event it delivered (or the last progress
notification), never from the revision a new stream reports, so an etcd restart or a broken
connection loses nothing. When the history it needs was compacted it yields a
:class:`Compacted` marker and ends; the caller re-reads current state and watches again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Final

from phoenixcp.errors import Unavailable
from phoenixcp.platform.coord.etcd import EtcdConnection
from phoenixcp.platform.coord.metrics import CoordMetrics, WatchLag

__all__ = ["Backoff", "Compacted", "resumable_watch"]

_log = logging.getLogger(__name__)

EVENT_PUT: Final = 0  # mvccpb.Event.EventType
EVENT_DELETE: Final = 1


class Backoff:
    """Exponential delays from ``first`` to ``cap`` seconds; ``reset()`` after a success."""

    def __init__(self, *, first: float = 0.1, cap: float = 2.0) -> None:
        self._first, self._cap = first, cap
        self._next = first

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self._cap)
        return delay

    def reset(self) -> None:
        self._next = self._first


@dataclass(frozen=True, slots=True)
class Compacted:
    """The watch needed history etcd has compacted up to ``revision``."""

    revision: int


async def resumable_watch(
    conn: EtcdConnection,
    key: bytes,
    *,
    prefix: bool,
    start_revision: int,
    lag: WatchLag | None = None,
    metrics: CoordMetrics | None = None,
) -> AsyncGenerator[Any | Compacted, None]:
    """etcd ``mvccpb.Event``\\ s for ``key`` (or every key under it) from ``start_revision``.

    Retries disconnects forever with backoff (cancel the consumer to stop). Raises only what
    retrying cannot fix (e.g. :class:`~phoenixcp.errors.PermissionDenied`).
    """
    next_revision = start_revision
    backoff = Backoff()
    label = lag.prefix if lag is not None else key.decode(errors="replace")
    while True:
        try:
            async for response in conn.watch_stream(
                key, prefix=prefix, start_revision=next_revision
            ):
                backoff.reset()
                if lag is not None:
                    lag.live()
                if response.compact_revision > 0:
                    if metrics is not None:
                        metrics.watch_resumes.labels(label, "compacted").inc()
                    yield Compacted(int(response.compact_revision))
                    return
                if response.canceled:
                    raise Unavailable(f"etcd cancelled the watch: {response.cancel_reason}")
                if response.events:
                    for event in response.events:
                        yield event
                    next_revision = int(response.events[-1].kv.mod_revision) + 1
                elif not response.created and response.header.revision >= next_revision:
                    # A progress notification: etcd has sent everything up to this revision.
                    next_revision = int(response.header.revision) + 1
        except Unavailable as exc:
            if lag is not None:
                lag.down()
            if metrics is not None:
                metrics.watch_resumes.labels(label, "reconnect").inc()
            if conn.closed:
                raise
            delay = backoff.next()
            _log.warning(
                "etcd watch broke; resuming",
                extra={"fields": {"key": label, "from_revision": next_revision,
                                  "retry_in_s": delay, "error": str(exc)}},
            )
            await asyncio.sleep(delay)
