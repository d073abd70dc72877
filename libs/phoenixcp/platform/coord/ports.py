"""The coordination ports: what the rest of Phoenix may ask of leader election and shared state.

Two small ``Protocol``\\ s, :class:`Leadership` and :class:`ReplicatedState`, and the values that
cross them. The etcd adapter (:mod:`.election`, :mod:`.store`) and the in-memory fake
(:mod:`.memory`) both implement them, so a component written against these names runs on either.

Keys given to :class:`ReplicatedState` are relative to the state prefix (``policies/acme/p1``
under ``/phoenix/v1/``); a :class:`Fence` names its leader key in full, since that is what the
fenced transaction compares.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from google.protobuf.message import Message

from phoenixcp.api.phoenix.v1 import state_pb2
from phoenixcp.errors import LeadershipLost

__all__ = [
    "Change",
    "ChangeKind",
    "Fence",
    "LeaderOnly",
    "Leadership",
    "LeadershipChange",
    "ReplicatedState",
    "Versioned",
]

M = TypeVar("M", bound=Message)


def _always() -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Fence:
    """The token a leader-only write carries: this term's hold on the leader key.

    etcd refuses a fenced write unless ``leader_key`` is still attached to ``lease_id`` and was
    created at ``create_revision`` (so a later term of the same lease is refused too).
    :attr:`valid` is the cheap local answer to the same question, and turns False the moment
    the election steps down (including when the process resumes from a pause past the lease
    deadline), so leader work that does not write to etcd checks it before each action.
    """

    leader_key: str
    lease_id: int
    create_revision: int
    local_check: Callable[[], bool] = field(default=_always, compare=False, repr=False)

    @property
    def valid(self) -> bool:
        """Whether this term is still ours as far as this process knows (no I/O)."""
        return self.local_check()

    def check(self) -> None:
        """Raise :class:`LeadershipLost` unless :attr:`valid`."""
        if not self.valid:
            raise LeadershipLost(
                f"this replica's lease {self.lease_id} no longer holds {self.leader_key}"
            )


@dataclass(frozen=True, slots=True)
class LeadershipChange:
    """One observation of leadership: whether we lead, who leads (if known), our fence if we do."""

    is_leader: bool
    leader: state_pb2.LeaderRecord | None
    fence: Fence | None = None


@dataclass(frozen=True, slots=True)
class Versioned(Generic[M]):
    """A stored value with etcd's revisions: ``mod_revision`` is what compare-and-swap takes."""

    value: M
    mod_revision: int
    create_revision: int


class ChangeKind(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Change(Generic[M]):
    """One change under a watched prefix.

    ``key`` is relative to the state prefix; ``value`` is None for a DELETE. ``revision`` is the
    etcd revision of the change, or for a ``snapshot`` change (synthesised after the watch fell
    behind a compaction) the revision the prefix was re-read at.
    """

    kind: ChangeKind
    key: str
    value: M | None
    revision: int
    snapshot: bool = False


class Leadership(Protocol):
    """Who leads a service, from one replica's point of view."""

    @property
    def is_leader(self) -> bool:
        """True only while this replica holds the leader key and its lease deadline is ahead."""
        ...

    @property
    def leader(self) -> state_pb2.LeaderRecord | None:
        """The current leader as last seen (ours or another's); None when unknown."""
        ...

    def fence(self) -> Fence:
        """This term's fence; raises :class:`~phoenixcp.errors.NotLeader` naming the leader."""
        ...

    def subscribe(self) -> AsyncIterator[LeadershipChange]:
        """The current state first, then every gain, loss and change of leader, in order."""
        ...


class ReplicatedState(Protocol):
    """Typed protobuf values under the state prefix, with compare-and-swap and fencing.

    ``expected_revision``: None writes unconditionally, 0 only creates, n > 0 requires the
    stored ``mod_revision`` to be n. A lost compare raises :class:`~phoenixcp.errors.Conflict`;
    a fenced write whose fence no longer holds raises :class:`~phoenixcp.errors.LeadershipLost`.
    """

    async def get(self, key: str, message_type: type[M]) -> Versioned[M] | None: ...

    async def list(
        self, prefix: str, message_type: type[M]
    ) -> tuple[list[tuple[str, Versioned[M]]], int]: ...

    async def put(
        self, key: str, value: Message, *, expected_revision: int | None = None
    ) -> int: ...

    async def delete(self, key: str, *, expected_revision: int | None = None) -> bool: ...

    async def put_fenced(
        self, key: str, value: Message, fence: Fence, *, expected_revision: int | None = None
    ) -> int: ...

    async def delete_fenced(
        self, key: str, fence: Fence, *, expected_revision: int | None = None
    ) -> bool: ...

    def watch(
        self, prefix: str, message_type: type[M], *, from_revision: int | None = None
    ) -> AsyncIterator[Change[M]]: ...


class LeaderOnly(Protocol):
    """A component that runs only on the leader.

    ``start`` is called when this replica wins, with the term's fence; it should return soon
    (spawn the work) and the work must check ``fence.valid`` before each action and write to
    etcd only with the fenced methods. ``stop`` is called at once when the term ends (or on
    shutdown) and should finish within the election's safety margin (0.5 s by default: the
    time between this replica giving up and etcd letting another win); it must be idempotent
    and must also work after a ``start`` that failed or was cancelled part-way.
    """

    async def start(self, fence: Fence) -> None: ...

    async def stop(self) -> None: ...
