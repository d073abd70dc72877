"""Reading and following a whole key prefix: consistent paged reads and the typed watch.

:class:`PrefixWatch` turns :func:`~.watching.resumable_watch`'s raw events into typed
:class:`~.ports.Change`\\ s and, when the history it needs was compacted, re-reads the prefix
and announces the difference as a snapshot, so a consumer's view converges either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, Generic, TypeAlias, TypeVar

from google.protobuf.message import DecodeError, Message

from phoenixcp.errors import InvalidArgument, Unavailable
from phoenixcp.platform.coord.etcd import EtcdConnection, RevisionCompacted, prefix_end
from phoenixcp.platform.coord.metrics import CoordMetrics, WatchLag
from phoenixcp.platform.coord.ports import Change, ChangeKind, Versioned
from phoenixcp.platform.coord.watching import EVENT_DELETE, Backoff, Compacted, resumable_watch

__all__ = ["PrefixWatch", "decode", "read_prefix"]

M = TypeVar("M", bound=Message)
T = TypeVar("T")
_KVs: TypeAlias = "list[Any]"
_log = logging.getLogger(__name__)
_PAGE: Final = 500


def decode(kv: Any, message_type: type[M], metrics: CoordMetrics) -> Versioned[M] | None:
    """The typed value of an etcd ``KeyValue``, or None (logged and counted) if it does not
    parse as ``message_type``."""
    value = message_type()
    try:
        value.ParseFromString(kv.value)
    except DecodeError as exc:
        name = message_type.DESCRIPTOR.full_name
        metrics.invalid_values.labels(name).inc()
        _log.warning("stored value does not parse; skipped", extra={"fields": {
            "key": kv.key.decode(errors="replace"), "type": name,
            "mod_revision": kv.mod_revision, "error": str(exc)}})
        return None
    return Versioned(value, int(kv.mod_revision), int(kv.create_revision))


async def read_prefix(conn: EtcdConnection, start: bytes) -> tuple[_KVs, int]:
    """Every ``KeyValue`` under ``start`` in key order, read in pages at one revision (a
    consistent snapshot), and that revision."""
    for _ in range(3):
        try:
            return await _read_pages(conn, start)
        except RevisionCompacted:
            continue  # compacted between two pages: read again at the new revision
    raise Unavailable(f"listing {start.decode()}: etcd compacted it on every attempt")


async def _read_pages(conn: EtcdConnection, start: bytes) -> tuple[_KVs, int]:
    end = prefix_end(start)
    kvs: _KVs = []
    revision = 0
    while True:
        resp = await conn.range(start, range_end=end, revision=revision, limit=_PAGE)
        revision = revision or int(resp.header.revision)
        kvs.extend(resp.kvs)
        if not resp.more or not resp.kvs:
            return kvs, revision
        start = bytes(resp.kvs[-1].key) + b"\x00"


async def retrying(call: Callable[[], Awaitable[T]]) -> T:
    """``call()`` until etcd answers: a watch outlives outages instead of failing on them."""
    backoff = Backoff()
    while True:
        try:
            return await call()
        except Unavailable as exc:
            delay = backoff.next()
            _log.warning("etcd read for a watch failed; retrying",
                         extra={"fields": {"retry_in_s": delay, "error": str(exc)}})
            await asyncio.sleep(delay)


class PrefixWatch(Generic[M]):
    """One typed watch of ``root + prefix`` (see :meth:`StateStore.watch` for the contract).

    It tracks the keys the consumer knows, to announce deletions after a compaction.
    """

    def __init__(self, conn: EtcdConnection, *, root: str, prefix: str,
                 decode: Callable[[Any], Versioned[M] | None], metrics: CoordMetrics) -> None:
        self._conn, self._root, self._prefix = conn, root, prefix
        self._start = (root + prefix).encode()
        self._decode, self._metrics = decode, metrics
        self._known: set[str] = set()

    def _relative(self, raw: bytes) -> str:
        return raw.decode()[len(self._root):]

    async def changes(self, from_revision: int | None) -> AsyncIterator[Change[M]]:
        lag = WatchLag(self._prefix)
        self._metrics.watch_lag.watches.add(lag)
        next_revision = await self._seed(from_revision)
        if next_revision == 0:  # what the consumer knew is compacted away already
            snapshot, next_revision = await self._snapshot()
            for change in snapshot:
                yield change
        while True:
            events = resumable_watch(self._conn, self._start, prefix=True,
                                     start_revision=next_revision, lag=lag,
                                     metrics=self._metrics)
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, Compacted):
                        break
                    typed = self._change(event)
                    if typed is not None:
                        yield typed
            _log.info("etcd watch fell behind a compaction; re-reading the prefix",
                      extra={"fields": {"prefix": self._prefix}})
            snapshot, next_revision = await self._snapshot()
            for change in snapshot:
                yield change

    def _change(self, event: Any) -> Change[M] | None:
        key = self._relative(event.kv.key)
        revision = int(event.kv.mod_revision)
        if event.type == EVENT_DELETE:
            self._known.discard(key)
            return Change(ChangeKind.DELETE, key, None, revision)
        self._known.add(key)
        parsed = self._decode(event.kv)
        return None if parsed is None else Change(ChangeKind.PUT, key, parsed.value, revision)

    async def _seed(self, from_revision: int | None) -> int:
        """Learn the keys the consumer knows; the first revision to watch (0: unknowable)."""
        if from_revision == 1:
            return 1
        at = 0 if from_revision is None else from_revision - 1
        try:
            resp = await retrying(lambda: self._conn.range(
                self._start, range_end=prefix_end(self._start), revision=at, keys_only=True))
        except RevisionCompacted:
            return 0
        except InvalidArgument:  # a future revision: there is nothing to know yet
            return at + 1
        self._known = {self._relative(kv.key) for kv in resp.kvs}
        return (int(resp.header.revision) if at == 0 else at) + 1

    async def _snapshot(self) -> tuple[list[Change[M]], int]:
        """A DELETE per vanished known key and a PUT per current key, all at one revision;
        and the revision to watch from next."""
        kvs, revision = await retrying(lambda: read_prefix(self._conn, self._start))
        current = {self._relative(kv.key): kv for kv in kvs}
        changes: list[Change[M]] = [
            Change(ChangeKind.DELETE, key, None, revision, snapshot=True)
            for key in sorted(self._known - current.keys())
        ]
        for key, kv in current.items():
            parsed = self._decode(kv)
            if parsed is not None:  # a bad value keeps the consumer's last good one
                changes.append(Change(ChangeKind.PUT, key, parsed.value, revision, snapshot=True))
        self._known = set(current)
        return changes, revision + 1
