"""Points where long CPU work may pause so that latency-sensitive work runs first.

The window close and the window report are seconds of CPU in the worst case (a cold start,
a series bomb) and run on a worker thread beside the event loop that answers ingest
requests. Code that may run long calls :func:`checkpoint` every few hundred microseconds of
work; the thread that runs it decides what a checkpoint does (the metrics-pipeline parks the
worker while its event loop has work: :mod:`phoenixcp.platform.idle_work`). Anywhere else a
checkpoint is a no-op that costs one thread-local lookup, so the domain code stays plain
functions that tests call directly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["checkpoint", "checkpoints_call"]

_local = threading.local()


def checkpoint() -> None:
    """Let the current thread's checkpoint hook run, if it has one (it may block)."""
    hook: Callable[[], None] | None = getattr(_local, "hook", None)
    if hook is not None:
        hook()


@contextmanager
def checkpoints_call(hook: Callable[[], None]) -> Iterator[None]:
    """Within the block, :func:`checkpoint` on this thread calls ``hook``. Not reentrant."""
    _local.hook = hook
    try:
        yield
    finally:
        _local.hook = None
