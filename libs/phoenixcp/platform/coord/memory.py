"""In-memory fakes of the coord ports, for unit tests of the components that use them.

:class:`MemoryState` keeps etcd's rules that callers rely on: one store-wide revision that
every write bumps, ``mod_revision``/``create_revision``, compare-and-swap, fenced writes checked
against the leader key's lease, and watches from any past revision. It keeps its whole history
and never compacts. :class:`MemoryLeadership` is an election a test drives by hand:
``campaign()``, ``resign()``, ``expire()``. Single event loop; not for production.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import Message

from phoenixcp.api.phoenix.v1 import common_pb2, state_pb2
from phoenixcp.errors import Conflict, InvalidArgument, LeadershipLost, NotLeader
from phoenixcp.platform.coord.ports import Change, ChangeKind, Fence, LeadershipChange, Versioned

__all__ = ["MemoryLeadership", "MemoryState"]

M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class _Entry:
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


class MemoryState:
    """The :class:`~.ports.ReplicatedState` port in a dict (keys relative to ``prefix``)."""

    def __init__(self, *, prefix: str = "/phoenix/v1/") -> None:
        self.prefix = prefix
        self.revision = 0
        self._entries: dict[str, _Entry] = {}
        self._history: list[tuple[int, str, _Entry | None]] = []
        self._wakeup = asyncio.Event()
        self._leases = itertools.count(0x1000)
        self._elections: list[MemoryLeadership] = []

    def _write(self, key: str, value: bytes | None, lease: int = 0) -> int:
        if not key or key.startswith("/"):
            raise InvalidArgument(f"state key {key!r} must be relative to {self.prefix}")
        self.revision += 1
        old = self._entries.get(key)
        if value is None:
            self._entries.pop(key, None)
            entry = None
        else:
            created = old.create_revision if old else self.revision
            entry = self._entries[key] = _Entry(value, created, self.revision, lease)
        self._history.append((self.revision, key, entry))
        self._wakeup.set()
        self._wakeup = asyncio.Event()
        for election in self._elections:
            election._observe(key)
        return self.revision

    def _check(self, verb: str, key: str, expected: int | None) -> None:
        entry = self._entries.get(key)
        found = entry.mod_revision if entry else 0
        if expected is None or found == expected:
            return
        if expected == 0:
            raise Conflict(f"create {self.prefix}{key}: it exists already (revision {found})")
        raise Conflict(f"{verb} {self.prefix}{key}: expected revision {expected}, found {found}")

    def _check_fence(self, key: str, fence: Fence) -> None:
        leader = self._entries.get(fence.leader_key.removeprefix(self.prefix))
        if (not fence.valid or leader is None or leader.lease != fence.lease_id
                or leader.create_revision != fence.create_revision):
            raise LeadershipLost(f"write to {self.prefix}{key} refused: this replica's lease "
                                 f"{fence.lease_id} no longer holds {fence.leader_key}")

    @staticmethod
    def _typed(entry: _Entry, message_type: type[M]) -> Versioned[M]:
        value = message_type()
        value.ParseFromString(entry.value)
        return Versioned(value, entry.mod_revision, entry.create_revision)

    async def get(self, key: str, message_type: type[M]) -> Versioned[M] | None:
        entry = self._entries.get(key)
        return None if entry is None else self._typed(entry, message_type)

    async def list(
        self, prefix: str, message_type: type[M]
    ) -> tuple[list[tuple[str, Versioned[M]]], int]:
        items = [(key, self._typed(entry, message_type))
                 for key, entry in sorted(self._entries.items()) if key.startswith(prefix)]
        return items, self.revision

    async def put(self, key: str, value: Message, *, expected_revision: int | None = None) -> int:
        self._check("put", key, expected_revision)
        return self._write(key, value.SerializeToString())

    async def delete(self, key: str, *, expected_revision: int | None = None) -> bool:
        if expected_revision == 0:
            raise InvalidArgument("expected_revision=0 (create only) makes no sense for delete")
        self._check("delete", key, expected_revision)
        if key not in self._entries:
            return False
        self._write(key, None)
        return True

    async def put_fenced(
        self, key: str, value: Message, fence: Fence, *, expected_revision: int | None = None
    ) -> int:
        self._check_fence(key, fence)
        return await self.put(key, value, expected_revision=expected_revision)

    async def delete_fenced(
        self, key: str, fence: Fence, *, expected_revision: int | None = None
    ) -> bool:
        self._check_fence(key, fence)
        return await self.delete(key, expected_revision=expected_revision)

    async def watch(
        self, prefix: str, message_type: type[M], *, from_revision: int | None = None
    ) -> AsyncIterator[Change[M]]:
        position = self.revision + 1 if from_revision is None else from_revision
        while True:
            wakeup = self._wakeup
            for revision, key, entry in self._history[max(position - 1, 0):]:
                position = revision + 1
                if not key.startswith(prefix):
                    continue
                if entry is None:
                    yield Change(ChangeKind.DELETE, key, None, revision)
                else:
                    yield Change(ChangeKind.PUT, key, self._typed(entry, message_type).value,
                                 revision)
            await wakeup.wait()


class MemoryLeadership:
    """The :class:`~.ports.Leadership` port, driven by the test: nobody leads until told to."""

    def __init__(self, *, state: MemoryState, service: str, replica_id: str,
                 address: str = "") -> None:
        self._state = state
        self._key = f"leaders/{service}"
        self._identity = common_pb2.ReplicaIdentity(replica_id=replica_id, address=address)
        self._fence: Fence | None = None
        self._leader: state_pb2.LeaderRecord | None = None
        self._queues: set[asyncio.Queue[LeadershipChange]] = set()
        state._elections.append(self)

    @property
    def is_leader(self) -> bool:
        return self._fence is not None

    @property
    def leader(self) -> state_pb2.LeaderRecord | None:
        return self._leader

    def fence(self) -> Fence:
        if self._fence is None:
            address = self._leader.leader.address if self._leader else None
            raise NotLeader(f"{self._identity.replica_id} is not the leader", leader=address)
        return self._fence

    async def campaign(self) -> bool:
        """Take the leader key if it is free; True if this replica leads now."""
        if self._fence is None and self._key not in self._state._entries:
            lease = next(self._state._leases)
            record = state_pb2.LeaderRecord(leader=self._identity, lease_id=lease)
            self._leader = record  # so the write below is not seen as someone else's term
            revision = self._state._write(self._key, record.SerializeToString(), lease)
            fence = Fence(f"{self._state.prefix}{self._key}", lease, revision,
                          local_check=lambda: self._fence is fence)
            self._fence = fence
            self._publish(LeadershipChange(True, record, fence))
        return self.is_leader

    async def resign(self) -> None:
        """Give up leadership and delete the key, as a clean shutdown does."""
        self.expire()

    def expire(self) -> None:
        """Lose the lease now, as a keep-alive failure would (the key goes with it)."""
        fence, self._fence = self._fence, None
        if fence is not None:
            self._leader = None
            self._publish(LeadershipChange(False, None))
            self._state._write(self._key, None)

    def _observe(self, key: str) -> None:
        if key != self._key or self._fence is not None:
            return
        entry = self._state._entries.get(key)
        record = None
        if entry is not None:
            record = state_pb2.LeaderRecord()
            record.ParseFromString(entry.value)
        if record != self._leader:
            self._leader = record
            self._publish(LeadershipChange(False, record))

    def _publish(self, change: LeadershipChange) -> None:
        if change.is_leader:
            self._leader = change.leader
        for queue in self._queues:
            queue.put_nowait(change)

    async def subscribe(self) -> AsyncIterator[LeadershipChange]:
        queue: asyncio.Queue[LeadershipChange] = asyncio.Queue()
        self._queues.add(queue)
        try:
            yield LeadershipChange(self.is_leader, self._leader, self._fence)
            while True:
                yield await queue.get()
        finally:
            self._queues.discard(queue)
