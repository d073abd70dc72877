"""Typed protobuf state under ``/phoenix/v1/``: compare-and-swap, leader-fenced writes, watches.

Values are serialised protobuf messages (never JSON). A stored value that does not parse as
the asked type is an :class:`~phoenixcp.errors.InvalidArgument` from :meth:`StateStore.get`,
and is skipped with a warning and ``phoenix_etcd_invalid_values_total`` by :meth:`list` and
:meth:`watch`, so one bad write cannot stop a replica from following the rest of the state
(the replica keeps the last valid value it had, as state.proto asks for policies).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias, TypeVar

from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from phoenixcp.errors import Conflict, InvalidArgument, LeadershipLost
from phoenixcp.platform.coord.etcd import EtcdConnection
from phoenixcp.platform.coord.metrics import coord_metrics
from phoenixcp.platform.coord.ports import Change, Fence, Versioned
from phoenixcp.platform.coord.prefix_watch import PrefixWatch, decode, read_prefix

__all__ = ["StateStore"]

M = TypeVar("M", bound=Message)
_Items: TypeAlias = "list[tuple[str, Versioned[M]]]"
_Compares: TypeAlias = "list[Any]"


class StateStore:
    """The :class:`~phoenixcp.platform.coord.ports.ReplicatedState` port on etcd.

    Stateless apart from the connection: any number of tasks may call it concurrently.
    Keys are relative to ``prefix`` and must not start with ``/``.
    """

    def __init__(
        self, conn: EtcdConnection, *, prefix: str = "/phoenix/v1/",
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._conn = conn
        self._prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._metrics = coord_metrics(registry)

    def _key(self, key: str) -> bytes:
        if not key or key.startswith("/"):
            raise InvalidArgument(
                f"state key {key!r} must be relative to {self._prefix}, e.g. policies/acme/p1",
                field="key",
            )
        return (self._prefix + key).encode()

    def _relative(self, raw: bytes) -> str:
        return raw.decode()[len(self._prefix):]

    async def get(self, key: str, message_type: type[M]) -> Versioned[M] | None:
        """The value at ``key`` with its revisions, or None if absent."""
        resp = await self._conn.range(self._key(key))
        if not resp.kvs:
            return None
        parsed = decode(resp.kvs[0], message_type, self._metrics)
        if parsed is None:
            name = message_type.DESCRIPTOR.full_name
            raise InvalidArgument(f"the value at {self._prefix}{key} is not a valid {name}")
        return parsed

    async def list(
        self, prefix: str, message_type: type[M]
    ) -> tuple[_Items[M], int]:
        """Every value under ``prefix`` in key order, and the store revision they were read at.

        Read in pages at one revision, so the result is a consistent snapshot; pass
        ``revision + 1`` to :meth:`watch` to follow on without a gap.
        """
        kvs, revision = await read_prefix(self._conn, (self._prefix + prefix).encode())
        items: _Items[M] = []
        for kv in kvs:
            parsed = decode(kv, message_type, self._metrics)
            if parsed is not None:
                items.append((self._relative(kv.key), parsed))
        return items, revision

    def _compare_revision(self, key: bytes, expected: int | None) -> _Compares:
        if expected is None:
            return []
        if expected < 0:
            raise InvalidArgument(f"expected_revision must be None, 0 or positive, not {expected}")
        if expected == 0:
            return [self._conn.compare_create(key, 0)]
        return [self._conn.compare_mod(key, expected)]

    @staticmethod
    def _conflict(verb: str, key: bytes, expected: int, found: Any) -> Conflict:
        actual = int(found.kvs[0].mod_revision) if found.kvs else 0
        if expected == 0:
            return Conflict(f"create {key.decode()}: it exists already (revision {actual})")
        now = f"revision {actual}" if actual else "it no longer exists"
        return Conflict(
            f"{verb} {key.decode()}: expected revision {expected}, found {now}; re-read and retry"
        )

    async def put(self, key: str, value: Message, *, expected_revision: int | None = None) -> int:
        """Store ``value``; returns its new ``mod_revision``. Raises Conflict on a lost compare."""
        raw = self._key(key)
        data = value.SerializeToString()
        if expected_revision is None:
            return int((await self._conn.put(raw, data)).header.revision)
        resp = await self._conn.txn(
            self._compare_revision(raw, expected_revision),
            [self._conn.op_put(raw, data)], [self._conn.op_get(raw)],
        )
        if not resp.succeeded:
            found = resp.responses[0].response_range
            raise self._conflict("put", raw, expected_revision, found)
        return int(resp.header.revision)

    async def delete(self, key: str, *, expected_revision: int | None = None) -> bool:
        """Delete ``key``; False if it was absent. Raises Conflict on a lost compare."""
        raw = self._key(key)
        if expected_revision == 0:
            raise InvalidArgument("expected_revision=0 (create only) makes no sense for delete")
        if expected_revision is None:
            return int((await self._conn.delete(raw)).deleted) > 0
        resp = await self._conn.txn(
            self._compare_revision(raw, expected_revision),
            [self._conn.op_delete(raw)], [self._conn.op_get(raw)],
        )
        if not resp.succeeded:
            raise self._conflict("delete", raw, expected_revision, resp.responses[0].response_range)
        return int(resp.responses[0].response_delete_range.deleted) > 0

    def _refused(self, fence: Fence, key: bytes, where: str, holder: Any = None) -> LeadershipLost:
        service = fence.leader_key.rstrip("/").rsplit("/", 1)[-1]
        self._metrics.fenced_refused.labels(service, where).inc()
        if holder is None:
            now = "it has no holder" if where == "etcd" else "this replica stepped down"
        else:
            now = f"it is held by lease {holder.lease} since revision {holder.create_revision}"
        return LeadershipLost(
            f"write to {key.decode()} refused: this replica's lease {fence.lease_id} no longer "
            f"holds {fence.leader_key} ({now})"
        )

    async def _fenced(
        self, verb: str, key: bytes, op: Any, fence: Fence, expected_revision: int | None
    ) -> Any:
        if not fence.valid:
            raise self._refused(fence, key, "local")
        leader = fence.leader_key.encode()
        resp = await self._conn.txn(
            [
                self._conn.compare_lease(leader, fence.lease_id),
                self._conn.compare_create(leader, fence.create_revision),
                *self._compare_revision(key, expected_revision),
            ],
            [op],
            [self._conn.op_get(leader), self._conn.op_get(key)],
        )
        if resp.succeeded:
            return resp
        holder = resp.responses[0].response_range
        kv = holder.kvs[0] if holder.kvs else None
        if kv is None or kv.lease != fence.lease_id or kv.create_revision != fence.create_revision:
            raise self._refused(fence, key, "etcd", kv)
        assert expected_revision is not None  # only the revision compare is left to fail
        raise self._conflict(verb, key, expected_revision, resp.responses[1].response_range)

    async def put_fenced(
        self, key: str, value: Message, fence: Fence, *, expected_revision: int | None = None
    ) -> int:
        """:meth:`put` only while ``fence`` holds (checked by etcd in the same transaction).

        Raises LeadershipLost when this replica's term has ended, Conflict on a lost compare.
        """
        raw = self._key(key)
        op = self._conn.op_put(raw, value.SerializeToString())
        return int((await self._fenced("put", raw, op, fence, expected_revision)).header.revision)

    async def delete_fenced(
        self, key: str, fence: Fence, *, expected_revision: int | None = None
    ) -> bool:
        """:meth:`delete` only while ``fence`` holds; raises as :meth:`put_fenced`."""
        raw = self._key(key)
        if expected_revision == 0:
            raise InvalidArgument("expected_revision=0 (create only) makes no sense for delete")
        op = self._conn.op_delete(raw)
        resp = await self._fenced("delete", raw, op, fence, expected_revision)
        return int(resp.responses[0].response_delete_range.deleted) > 0

    def watch(
        self, prefix: str, message_type: type[M], *, from_revision: int | None = None
    ) -> AsyncIterator[Change[M]]:
        """Every change under ``prefix`` from ``from_revision`` (inclusive; None: from now).

        Survives etcd restarts and disconnects without missing a change. If the history it
        needs was compacted, it re-reads the prefix and yields a snapshot (``snapshot=True``):
        a DELETE for each key it knew that is gone and a PUT for every current key, then goes
        on watching. The keys it knows are those present at ``from_revision - 1`` plus those
        it has seen since; if even ``from_revision - 1`` is compacted when the watch starts,
        its first snapshot can only announce current keys. A value that does not parse is
        skipped (logged, counted). Runs until the consumer stops iterating; raises only what
        retrying cannot fix (e.g. PermissionDenied).
        """
        if from_revision is not None and from_revision < 1:
            raise InvalidArgument(f"from_revision must be 1 or more, not {from_revision}")
        watch = PrefixWatch(self._conn, root=self._prefix, prefix=prefix,
                            decode=lambda kv: decode(kv, message_type, self._metrics),
                            metrics=self._metrics)
        return watch.changes(from_revision)
