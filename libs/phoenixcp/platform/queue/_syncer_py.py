"""The pure-Python twin of ``_syncer.c``: the same contract, on a Python thread.

It runs when the C extension is not built. Its thread needs the GIL to take requests and
to publish results, which is what the C version avoids (ADR 0014); results are the same.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Final

__all__ = ["CLOSE", "FULL", "NO_SYNC", "Syncer"]

FULL: Final = 1
"""fsync instead of fdatasync (directories, metadata)."""
CLOSE: Final = 2
"""Close the fd once synced (or skipped)."""
NO_SYNC: Final = 4
"""Do not sync, only keep the order (e.g. close after the earlier requests)."""
_ALL: Final = FULL | CLOSE | NO_SYNC


@dataclass(slots=True, frozen=True)
class _Request:
    fd: int
    flags: int
    gen: int


class Syncer:
    """Group commit: ``request`` a sync, learn from ``completed`` which generations are done.

    ``fileno()`` is an eventfd that becomes readable when generations complete; the caller's
    event loop watches it and calls ``completed()``, which also clears it. Requests run in
    order; a run of equal requests is one sync. Errors are sticky: once a sync failed, its
    errno is reported with every later generation.
    """

    def __init__(self) -> None:
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._cv = threading.Condition()
        self._requests: list[_Request] = []
        self._next = 0
        self._done = 0
        self._err = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="queue-syncer", daemon=True)
        self._thread.start()

    def request(self, fd: int, flags: int = 0) -> int:
        """Queue a sync of ``fd`` after every earlier request; return its generation."""
        if fd < 0:
            raise ValueError(f"fd must be >= 0, got {fd}")
        if flags & ~_ALL:
            raise ValueError(f"unknown flags {flags:#x} (allowed: FULL=1, CLOSE=2, NO_SYNC=4)")
        with self._cv:
            if self._stop:
                raise RuntimeError("the syncer is closed")
            self._next += 1
            self._requests.append(_Request(fd, flags, self._next))
            self._cv.notify()
            return self._next

    def completed(self) -> tuple[int, int]:
        """(last generation done, errno of the first failed sync or 0)."""
        with self._cv:  # cleared under the lock it is signalled under (see _run)
            if self._efd >= 0:
                try:
                    os.eventfd_read(self._efd)
                except BlockingIOError:
                    pass
            return self._done, self._err

    def fileno(self) -> int:
        """An eventfd, readable when generations completed."""
        if self._efd < 0:
            raise ValueError("the syncer is closed")
        return self._efd

    def close(self) -> None:
        """Finish the requests made, stop the thread. Idempotent."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join()
        if self._efd >= 0:
            os.close(self._efd)
            self._efd = -1

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._requests and not self._stop:
                    self._cv.wait()
                if not self._requests:
                    return
                batch, self._requests = self._requests, []
            err = _run_batch(batch)
            with self._cv:
                if err and not self._err:
                    self._err = err
                self._done = batch[-1].gen
                os.eventfd_write(self._efd, 1)


def _run_batch(batch: list[_Request]) -> int:
    err = 0
    for i, r in enumerate(batch):
        nxt = batch[i + 1] if i + 1 < len(batch) else None
        same_as_next = (nxt is not None and nxt.fd == r.fd and nxt.flags == r.flags
                        and not r.flags & CLOSE)
        if not r.flags & NO_SYNC and not same_as_next:
            try:
                (os.fsync if r.flags & FULL else os.fdatasync)(r.fd)
            except OSError as exc:
                err = err or exc.errno or 0
        if r.flags & CLOSE:
            with contextlib.suppress(OSError):
                os.close(r.fd)
    return err
