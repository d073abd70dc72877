"""The durable queue between the receivers and one exporter: segment files, group commit.

Threads: the event loop owns all state and writes each record to the active segment itself
(a page-cache write). The syncs run on the queue's :class:`Syncer`, a thread of its own that
never takes the GIL (``_syncer.c``, ADR 0014). Group commit: an append asks for a sync and
waits for its generation; the syncer takes every request waiting at once, syncs each file
once, and signals an eventfd the loop watches, which wakes every append up to the generation
done. Checkpoint writes, segment deletes, dead-letter writes and the recovery scan at
``start`` run through ``asyncio.to_thread``. Reads are ``os.pread`` of bytes just written
(page cache) on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections import deque
from types import TracebackType
from typing import Protocol

from phoenixcp.errors import InvalidArgument, ResourceExhausted, Unavailable
from phoenixcp.platform.queue import _storage
from phoenixcp.platform.queue._format import MAGIC, Entry, encode_record, record_size
from phoenixcp.platform.queue._reader import SegmentReader
from phoenixcp.platform.queue.config import FsyncPolicy, QueueConfig
from phoenixcp.platform.queue.dead_letter import append_dead_letters
from phoenixcp.platform.queue.metrics import QueueMetrics

try:
    from phoenixcp.platform.queue._syncer import (  # type: ignore[import-not-found]
        CLOSE,
        FULL,
        Syncer,
    )

    SYNCER = "c"
except ImportError:  # the extension is not built: same contract, the thread takes the GIL
    from phoenixcp.platform.queue._syncer_py import CLOSE, FULL, Syncer

    SYNCER = "python"

__all__ = ["SYNCER", "DurableQueue"]

_log = logging.getLogger(__name__)
_Position = tuple[int, int]


class _SyncerLike(Protocol):
    def request(self, fd: int, flags: int = 0) -> int: ...
    def completed(self) -> tuple[int, int]: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


class DurableQueue:
    """A bounded, crash-safe FIFO of opaque records on disk, read at least once.

    ``append`` returns once the record is stored per :class:`FsyncPolicy`; ``get`` hands out
    records in append order; ``commit`` marks them done. After a crash (SIGKILL included)
    reading restarts at the first record not committed (committed records may be delivered
    again, up to ``checkpoint_interval`` of them: at-least-once). Concurrency: use from one
    event loop; any number of concurrent ``append`` calls (they share one sync), one reader
    (concurrent ``get`` calls are served one after the other). ``close`` is idempotent.
    """

    def __init__(self, *, config: QueueConfig, metrics: QueueMetrics | None = None) -> None:
        self._config = config
        self._dir = config.directory
        self._metrics = metrics
        self._syncer: _SyncerLike | None = None
        self._preallocate = config.preallocate and config.fsync is FsyncPolicy.ALWAYS
        self._prepared = False
        self._preparing: asyncio.Task[None] | None = None
        self._fd = -1
        self._dir_fd = -1
        self._segments: dict[int, int] = {}
        self._write: _Position = (0, len(MAGIC))
        self._durable: _Position = (0, len(MAGIC))
        self._read: _Position = (0, len(MAGIC))
        self._watermark: _Position = (0, len(MAGIC))
        self._outstanding: deque[Entry] = deque()
        self._committed: set[_Position] = set()
        self._bytes = 0
        self._records = 0
        self._oldest: float | None = None
        # Appends waiting for their sync: (syncer generation, end position, future).
        self._syncing: deque[tuple[int, _Position, asyncio.Future[None]]] = deque()
        self._unsynced = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readable = asyncio.Event()
        self._read_lock = asyncio.Lock()
        self._reader = SegmentReader(config.directory, queue=config.name)
        self._tasks: list[asyncio.Task[None]] = []
        self._checkpoint_due = asyncio.Event()
        self._failed: BaseException | None = None
        self._started = False
        self._closed = False

    @property
    def config(self) -> QueueConfig:
        """The queue's configuration."""
        return self._config

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran: :meth:`get` then returns at once."""
        return self._closed

    @property
    def size_bytes(self) -> int:
        """Bytes of segment files on disk (what ``max_bytes`` bounds)."""
        return self._bytes

    def __len__(self) -> int:
        """Records appended and not yet committed."""
        return self._records

    def oldest_age(self) -> float:
        """Seconds since the oldest record not yet committed was appended; 0 when empty."""
        return 0.0 if self._oldest is None else max(0.0, time.time() - self._oldest)

    async def start(self) -> None:
        """Recover the directory (truncating a torn tail) and start the writer. Idempotent."""
        if self._started:
            return
        found = await asyncio.to_thread(_storage.recover, self._dir, queue=self._config.name)
        self._segments = found.segments
        self._read = self._watermark = found.start
        self._records, self._oldest = found.records, found.oldest
        self._loop = asyncio.get_running_loop()
        self._syncer = Syncer()
        self._loop.add_reader(self._syncer.fileno(), self._synced)
        self._dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._open_segment(found.next_seq)
        self._write = self._durable = (found.next_seq, len(MAGIC))
        self._bytes = sum(self._segments.values())
        self._started = True
        self._tasks = [asyncio.create_task(self._run_checkpoints(), name="queue-checkpoint")]
        if self._config.fsync is FsyncPolicy.INTERVAL:
            self._tasks.append(asyncio.create_task(self._run_interval_sync()))
        if self._metrics is not None:
            self._metrics.max_bytes.labels(self._config.name).set(self._config.max_bytes)
            self._metrics.oldest_age.labels(self._config.name).set_function(self.oldest_age)
        self._update_gauges()
        if self._records:
            self._readable.set()
            _log.info("queue replays records left from the last run",
                      extra={"fields": {"queue": self._config.name, "records": self._records}})

    async def append(self, record: bytes, *, count: int, tenant: str = "") -> None:
        """Store ``record`` durably; ``count`` (e.g. samples) travels with it.

        Raises ``ResourceExhausted`` (with ``retry_after``) when the queue is full and stores
        nothing; ``InvalidArgument`` for a record larger than a segment; ``Unavailable`` when
        the disk failed. Not idempotent: appending twice stores twice. If the caller is
        cancelled while waiting, the record may still be stored.
        """
        self._check_usable()
        tenant_bytes = tenant.encode()
        size = record_size(len(record), len(tenant_bytes))
        if size + len(MAGIC) > self._config.segment_bytes or len(tenant_bytes) > 0xFFFF:
            raise InvalidArgument(f"a queue record of {size} bytes is larger than a segment "
                                  f"({self._config.segment_bytes} bytes)", field="record")
        seq, off = self._write
        rotate = off + size > self._config.segment_bytes and off > len(MAGIC)
        needed = size + (len(MAGIC) if rotate else 0)
        if self._bytes + needed > self._config.max_bytes:
            if self._metrics is not None:
                self._metrics.rejected.labels(self._config.name).inc()
            raise ResourceExhausted(
                f"queue {self._config.name} is full ({self._bytes} of "
                f"{self._config.max_bytes} bytes wait for the exporter)",
                retry_after=self._config.full_retry_after.total_seconds())
        head = encode_record(record, count=count, enqueued_ns=time.time_ns(),
                             tenant=tenant_bytes)
        try:
            if rotate:
                seq, off = seq + 1, len(MAGIC)
                self._open_segment(seq)
            _storage.write_at(self._fd, [head, record], off)
        except OSError as exc:  # a full or failing disk: what is in the file is unknown now
            self._fail(exc)
            raise Unavailable(f"queue {self._config.name} cannot write to disk: {exc}") from exc
        self._write = (seq, off + size)
        self._segments[seq] = off + size
        if (self._preallocate and not self._prepared and self._preparing is None
                and off > self._config.segment_bytes // 2):
            # Half full: write the next segment ahead, so it is ready when this one is full
            # (an idle queue never writes one).
            self._preparing = asyncio.create_task(self._prepare_next(), name="queue-prepare")
        self._bytes += needed
        self._records += 1
        if self._oldest is None:
            self._oldest = time.time()
        if self._config.fsync is not FsyncPolicy.ALWAYS:
            self._durable = self._write
            self._readable.set()
            if self._metrics is not None:
                self._metrics.appends.labels(self._config.name).inc()
                self._update_gauges()
            return
        assert self._loop is not None and self._syncer is not None
        waiter = self._loop.create_future()
        self._syncing.append((self._syncer.request(self._fd), self._write, waiter))
        self._unsynced += 1
        self._idle.clear()
        # Our own future: a cancelled caller cancels only its wait, not the shared sync.
        await waiter

    async def get(self, max_records: int, *, max_bytes: int = 8 << 20,
                  timeout: float | None = None) -> list[Entry]:
        """Up to ``max_records`` records (and about ``max_bytes``) not yet handed out, in order.

        Waits while there are none; returns ``[]`` after ``timeout`` seconds or once closed.
        A record is handed out once per run; it comes back after a restart unless committed.
        """
        async with self._read_lock:
            while True:
                entries = self._read_available(max_records, max_bytes)
                if entries or self._closed:
                    return entries
                self._readable.clear()
                try:
                    async with asyncio.timeout(timeout):
                        await self._readable.wait()
                except TimeoutError:
                    return []

    def commit(self, entries: list[Entry]) -> None:
        """Mark ``entries`` done; never delivered again once the checkpoint is written.

        Idempotent, and entries may be committed in any order: the checkpoint advances over
        the longest committed prefix. Persisting happens in the background within
        ``checkpoint_interval``; ``close`` persists the last position.
        """
        for entry in entries:
            self._committed.add((entry.segment, entry.offset))
        out = self._outstanding
        while out and (out[0].segment, out[0].offset) in self._committed:
            done = out.popleft()
            self._committed.discard((done.segment, done.offset))
            self._records -= 1
            self._watermark = (done.segment, done.end)
        if not out:
            self._committed.clear()
            self._watermark = self._read
        self._oldest = out[0].enqueued_at if out else self._peek_oldest_unread()
        self._checkpoint_due.set()
        self._update_gauges()

    async def dead_letter(self, entry: Entry, reason: str) -> None:
        """Set ``entry`` aside in the dead-letter file with ``reason``, then commit it."""
        await asyncio.to_thread(
            append_dead_letters, self._dir, [(entry, reason)], queue=self._config.name,
            max_bytes=self._config.dead_letter_max_bytes)
        if self._metrics is not None:
            self._metrics.dead_lettered.labels(self._config.name).inc()
        self.commit([entry])

    async def wait_committed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until every record appended so far is committed."""
        target = self._write
        deadline = time.monotonic() + timeout
        while self._normalized(self._watermark) < target:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self) -> None:
        """Finish pending appends, persist the checkpoint, stop the threads. Idempotent."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        self._readable.set()
        await self._idle.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(OSError):
            await self._persist_checkpoint()
        if self._preparing is not None:  # a thread cannot be cancelled: let it finish
            await asyncio.shield(self._preparing)
        if self._prepared:
            with contextlib.suppress(OSError):
                (self._dir / _storage.PREPARED).unlink()
            self._prepared = False
        syncer = self._syncer
        assert syncer is not None and self._loop is not None
        # The last requests: sync and close the segment and the directory; ``close`` runs
        # them before the thread stops (it joins, so off the loop).
        for fd, flags in ((self._fd, CLOSE), (self._dir_fd, FULL | CLOSE)):
            if fd >= 0:
                syncer.request(fd, flags)
        self._fd = self._dir_fd = -1
        self._loop.remove_reader(syncer.fileno())
        await asyncio.to_thread(syncer.close)
        self._reader.close()

    async def __aenter__(self) -> DurableQueue:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def _check_usable(self) -> None:
        if not self._started or self._closed:
            raise Unavailable(f"queue {self._config.name} is not open")
        if self._failed is not None:
            raise Unavailable(f"queue {self._config.name} cannot write to disk: {self._failed}")

    def _open_segment(self, seq: int) -> None:
        """Start segment ``seq``: the old one is synced and closed, the new one and the
        directory synced, all before any later append's sync completes (requests run in
        order)."""
        assert self._syncer is not None
        if self._prepared:  # zeros written and synced ahead: only the new name needs a sync
            fd = _storage.open_prepared(self._dir, seq)
            self._prepared = False
        else:
            fd = _storage.create_segment(self._dir, seq)
            self._syncer.request(fd)
        if self._fd >= 0:
            self._syncer.request(self._fd, CLOSE)
        self._fd = fd
        self._segments[seq] = len(MAGIC)
        self._syncer.request(self._dir_fd, FULL)

    async def _prepare_next(self) -> None:
        """Write the next segment ahead (zeros, synced) on a thread; see ``preallocate``."""
        try:
            await asyncio.to_thread(_storage.prepare_segment, self._dir,
                                    self._config.segment_bytes)
            self._prepared = True
        except OSError as exc:  # the next rotation creates a plain segment instead
            _log.warning("queue could not write its next segment ahead; appends still work, "
                         "their syncs are slower", extra={"fields": {
                             "queue": self._config.name, "error": str(exc)}})
        finally:
            self._preparing = None

    def _synced(self) -> None:
        """On the loop, when the syncer signals: resolve the appends it made durable."""
        assert self._syncer is not None
        done, err = self._syncer.completed()
        if err and self._failed is None:
            self._fail(OSError(err, os.strerror(err)))
        woken = 0
        while self._syncing and self._syncing[0][0] <= done:
            _, end, waiter = self._syncing.popleft()
            woken += 1
            if waiter.done():
                continue
            if self._failed is not None:
                waiter.set_exception(Unavailable(f"queue {self._config.name}: {self._failed}"))
                waiter.exception()  # the waiter may be gone; don't warn about it
            else:
                self._durable = end
                waiter.set_result(None)
        if not woken:
            return
        self._unsynced -= woken
        if not self._unsynced:
            self._idle.set()
        if self._failed is None:
            self._readable.set()
        if self._metrics is not None:
            self._metrics.appends.labels(self._config.name).inc(woken)
            self._update_gauges()

    def _fail(self, error: OSError) -> None:
        if self._failed is None:
            _log.error("queue cannot write to disk; appends fail until restart",
                       extra={"fields": {"queue": self._config.name, "error": str(error),
                                         "errno": errno.errorcode.get(error.errno or 0, "")}})
        self._failed = error

    async def _run_interval_sync(self) -> None:
        while True:
            await asyncio.sleep(self._config.fsync_interval.total_seconds())
            if self._syncer is not None and self._fd >= 0:
                self._syncer.request(self._fd)

    async def _run_checkpoints(self) -> None:
        while True:
            await self._checkpoint_due.wait()
            await asyncio.sleep(self._config.checkpoint_interval.total_seconds())
            self._checkpoint_due.clear()
            try:
                await self._persist_checkpoint()
            except OSError as exc:
                _log.error("queue checkpoint write failed; will retry",
                           extra={"fields": {"queue": self._config.name, "error": str(exc)}})
                self._checkpoint_due.set()

    async def _persist_checkpoint(self) -> None:
        position = self._normalized(self._watermark)
        await asyncio.to_thread(_storage.write_checkpoint, self._dir, position)
        consumed = [s for s in self._segments if s < position[0]]
        if not consumed:
            return
        self._reader.forget(consumed)
        await asyncio.to_thread(_storage.delete_segments, self._dir, consumed)
        for seq in consumed:
            self._bytes -= self._segments.pop(seq, 0)
        self._update_gauges()

    def _normalized(self, position: _Position) -> _Position:
        """``position`` moved past the ends of segments that later ones follow."""
        seq, off = position
        while seq < self._durable[0] and off >= self._segments.get(seq, 0):
            later = [s for s in self._segments if s > seq]
            seq, off = min(later), len(MAGIC)
        return seq, off

    def _read_available(self, max_records: int, max_bytes: int) -> list[Entry]:
        entries: list[Entry] = []
        while len(entries) < max_records and max_bytes > 0:
            seq, off = self._read = self._normalized(self._read)
            limit = self._durable[1] if seq == self._durable[0] else self._segments[seq]
            if off >= limit:
                break
            got, end, corrupt = self._reader.read(
                seq, off, limit, max_records=max_records - len(entries), max_bytes=max_bytes)
            if corrupt and self._metrics is not None:
                self._metrics.truncated.labels(self._config.name).inc()
            entries.extend(got)
            max_bytes -= sum(e.size for e in got)
            self._read = (seq, end)
        self._outstanding.extend(entries)
        return entries

    def _peek_oldest_unread(self) -> float | None:
        seq, off = self._normalized(self._read)
        if (seq, off) >= self._durable:
            return None if (seq, off) >= self._write else time.time()
        return self._reader.enqueued_at(seq, off)

    def _update_gauges(self) -> None:
        if self._metrics is not None:
            self._metrics.bytes.labels(self._config.name).set(self._bytes)
            self._metrics.records.labels(self._config.name).set(self._records)
