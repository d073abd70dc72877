"""Leader election for one service: campaign on ``<prefix>leaders/<service>`` with a lease.

The leader key holds a serialised ``LeaderRecord`` and is attached to the winner's lease, so
it vanishes when the winner resigns (revokes) or dies (the lease expires after its TTL). Only
a transaction that finds no key (``create_revision == 0``) can win. Followers watch the key
and campaign again as soon as it is deleted.

Leadership is dropped locally, at once, when the lease is lost: when etcd says it expired,
or when no keep-alive has been answered before the lease's local deadline minus a safety
margin (see :mod:`.lease`), even while etcd is unreachable. etcd cannot expire the lease
earlier, so no other replica can have won by then. ``is_leader`` and the term's
:class:`~.ports.Fence` compare that deadline with the clock on every call, so a process
resumed after a pause past its TTL sees it has lost before it does any leader work; its
fenced writes are refused by etcd in any case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import timedelta
from typing import Any

from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry

from phoenixcp.api.phoenix.v1 import common_pb2, state_pb2
from phoenixcp.errors import NotLeader, PhoenixError, Unavailable
from phoenixcp.platform.coord.etcd import EtcdConnection
from phoenixcp.platform.coord.lease import KeptLease, lease_clock
from phoenixcp.platform.coord.metrics import coord_metrics
from phoenixcp.platform.coord.ports import Fence, LeadershipChange
from phoenixcp.platform.coord.watching import EVENT_DELETE, Backoff, Compacted, resumable_watch
from phoenixcp.platform.names import service_enum_or_unspecified

__all__ = ["LeaderElection"]

_log = logging.getLogger(__name__)


def _parse_record(value: bytes) -> state_pb2.LeaderRecord | None:
    record = state_pb2.LeaderRecord()
    try:
        record.ParseFromString(value)
    except DecodeError:
        return None
    return record


class _Term:
    """One uninterrupted hold of the leader key by one lease."""

    def __init__(self, lease: KeptLease, create_revision: int, key: str,
                 is_current: Callable[[_Term], bool]) -> None:
        self.lease = lease
        self.fence = Fence(
            leader_key=key, lease_id=lease.lease_id, create_revision=create_revision,
            local_check=lambda: is_current(self),
        )


class LeaderElection:
    """The :class:`~.ports.Leadership` port on etcd, for one replica of ``service``.

    ``run()`` campaigns until ``shutdown()`` (or cancellation); both resign: the lease is
    revoked, which deletes the leader key so a follower wins at once. ``shutdown()`` is
    idempotent and steps down locally before its first await. Call it after
    :class:`~.leader_only.LeaderOnlyRunner.shutdown` so leader work stops before the hand-over.
    One event loop; the properties may be read from any task.
    """

    def __init__(
        self, *, conn: EtcdConnection, service: str, replica_id: str, address: str,
        ttl: timedelta = timedelta(seconds=3), prefix: str = "/phoenix/v1/",
        safety_margin: timedelta = timedelta(milliseconds=500),
        registry: CollectorRegistry | None = None, clock: Callable[[], float] = lease_clock,
    ) -> None:
        ttl_s, margin_s = ttl.total_seconds(), safety_margin.total_seconds()
        if ttl_s < 1:
            raise ValueError(f"ttl {ttl} is below etcd's smallest lease, 1s")
        if not 0 < margin_s < ttl_s / 2:
            raise ValueError(f"safety_margin {safety_margin} must be above 0 and below ttl/2")
        self._conn = conn
        self.service = service
        self.replica_id = replica_id
        self.key = f"{prefix if prefix.endswith('/') else prefix + '/'}leaders/{service}"
        self._ttl = math.ceil(ttl_s)  # etcd leases are whole seconds
        self._margin = margin_s
        self._clock = clock
        self._identity = common_pb2.ReplicaIdentity(
            service=service_enum_or_unspecified(service), replica_id=replica_id, address=address
        )
        self._metrics = coord_metrics(registry)
        self._metrics.leader.labels(service).set(0)
        self._lease: KeptLease | None = None
        self._term: _Term | None = None
        self._leader: state_pb2.LeaderRecord | None = None
        self._subscribers: set[asyncio.Queue[LeadershipChange | None]] = set()
        self._stopping = asyncio.Event()
        self._running = False
        self._finished = asyncio.Event()

    # -- what other components read -----------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True while we hold the key and our lease deadline (minus the margin) is ahead."""
        term = self._term
        return term is not None and term.lease.valid()

    @property
    def leader(self) -> state_pb2.LeaderRecord | None:
        """The leader as last seen (ours or another's); None while unknown or vacant."""
        return self._leader

    @property
    def lease_id(self) -> int | None:
        """The lease this replica campaigns with now, if any."""
        return None if self._lease is None else self._lease.lease_id

    def fence(self) -> Fence:
        """This term's fence; raises NotLeader (with the leader's address) on a follower."""
        term = self._term
        if term is None or not term.lease.valid():
            seen = self._leader
            address = seen.leader.address if seen is not None else None
            who = (f"the leader is {seen.leader.replica_id} at {address}"
                   if seen is not None else "no leader is known right now")
            raise NotLeader(
                f"{self.replica_id} is not the leader of {self.service}; {who}", leader=address
            )
        return term.fence

    def _current(self) -> LeadershipChange:
        term = self._term
        if term is not None and term.lease.valid():
            return LeadershipChange(True, self._leader, term.fence)
        return LeadershipChange(False, None if term is not None else self._leader)

    async def subscribe(self) -> AsyncIterator[LeadershipChange]:
        """The current state, then each gain, loss and change of leader; ends after run() ends.

        Every subscriber sees every change, in order (changes are rare; the queue is unbounded).
        """
        queue: asyncio.Queue[LeadershipChange | None] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            yield self._current()
            if self._finished.is_set():
                return
            while (change := await queue.get()) is not None:
                yield change
        finally:
            self._subscribers.discard(queue)

    def _notify(self, change: LeadershipChange | None) -> None:
        for queue in self._subscribers:
            queue.put_nowait(change)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Campaign, lead or follow, and campaign again, until shutdown(); never raises on an
        etcd outage (it waits and retries)."""
        if self._running:
            raise RuntimeError(f"LeaderElection({self.service}).run() is already running")
        self._running = True
        backoff = Backoff(first=0.1, cap=1.0)
        try:
            while not self._stopping.is_set():
                try:
                    await self._hold_lease()
                    backoff.reset()
                except PhoenixError as exc:
                    delay = backoff.next()
                    _log.warning(
                        "election: etcd error; campaigning again",
                        extra={"fields": {"service": self.service, "replica": self.replica_id,
                                          "retry_in_s": delay, "error": str(exc)}},
                    )
                    await self._first(asyncio.sleep(delay))
        finally:
            self._step_down("shutdown")
            self._finished.set()
            self._notify(None)

    async def shutdown(self) -> None:
        """Stop leading at once, resign, and wait for run() to end. Idempotent."""
        self._stopping.set()
        self._step_down("shutdown")
        if self._running:
            await self._finished.wait()
        elif not self._finished.is_set():  # run() never started: end the subscriptions
            self._finished.set()
            self._notify(None)

    # -- the campaign --------------------------------------------------------------------------

    async def _hold_lease(self) -> None:
        """Grant a lease, keep it alive, and campaign with it until it is lost or we stop."""
        lease = await KeptLease.grant(self._conn, ttl=self._ttl, margin=self._margin,
                                      clock=self._clock)
        self._lease = lease
        keeper = asyncio.create_task(lease.keep_alive(), name=f"lease-{lease.lease_id}")
        try:
            while lease.valid() and not self._stopping.is_set():
                await self._campaign(lease)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            self._step_down(lease.lost_reason or "lease given up")
            self._lease = None
            # Revoking hands over at once on shutdown, and after a local step-down frees the
            # key sooner if etcd still holds it; when etcd is away the lease just expires.
            await lease.revoke(timeout=min(1.0, self._conn.timeout))

    async def _campaign(self, lease: KeptLease) -> None:
        record = state_pb2.LeaderRecord(leader=self._identity, lease_id=lease.lease_id)
        record.since.GetCurrentTime()
        key = self.key.encode()
        resp = await self._conn.txn(
            [self._conn.compare_create(key, 0)],
            [self._conn.op_put(key, record.SerializeToString(), lease=lease.lease_id)],
            [self._conn.op_get(key)],
        )
        if resp.succeeded:
            await self._lead(lease, int(resp.header.revision), record)
            return
        kvs = resp.responses[0].response_range.kvs
        if not kvs:
            return
        held = kvs[0]
        holder = _parse_record(held.value)
        if held.lease == lease.lease_id:  # we won earlier but lost the answer; it is ours
            await self._lead(lease, int(held.create_revision), holder or record)
        else:
            await self._follow(lease, holder, int(resp.header.revision) + 1)

    async def _lead(self, lease: KeptLease, create_revision: int,
                    record: state_pb2.LeaderRecord) -> None:
        if not lease.valid() or self._stopping.is_set():
            return  # the campaign outlived the lease (e.g. a pause): do not start a term
        term = _Term(lease, create_revision, self.key,
                     lambda t: self._term is t and t.lease.valid())
        self._term, self._leader = term, record
        self._metrics.leader.labels(self.service).set(1)
        self._metrics.transitions.labels(self.service, "gained").inc()
        _log.info("election: gained leadership", extra={"fields": {
            "service": self.service, "replica": self.replica_id, "lease": lease.lease_id,
            "create_revision": create_revision}})
        self._notify(LeadershipChange(True, record, term.fence))
        reason = await self._first(self._watch_key(create_revision + 1, lease), lease=lease)
        self._step_down(reason)

    async def _follow(self, lease: KeptLease, holder: state_pb2.LeaderRecord | None,
                      from_revision: int) -> None:
        self._see_leader(holder)
        await self._first(self._watch_key(from_revision, None), lease=lease)

    async def _watch_key(self, from_revision: int, lease: KeptLease | None) -> str:
        """Until the key is deleted (or, for the leader, taken by another lease)."""
        key = self.key.encode()
        while True:
            events = resumable_watch(self._conn, key, prefix=False, start_revision=from_revision)
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, Compacted):
                        break
                    if event.type == EVENT_DELETE:
                        return "the leader key was deleted"
                    if lease is None:
                        self._see_leader(_parse_record(event.kv.value))
                    elif event.kv.lease != lease.lease_id:
                        return "the leader key was taken over by another lease"
            if lease is None:
                return "watch compacted; re-reading the leader key"
            # A compaction is no reason for a leader to step down: check the key, go on.
            from_revision = await self._still_ours(key, lease)
            if from_revision == 0:
                return "the leader key is no longer ours"

    async def _still_ours(self, key: bytes, lease: KeptLease) -> int:
        """The revision to watch on from if ``key`` is still ours, else 0; retries outages
        (bounded by the lease: the caller stops waiting when it is lost)."""
        backoff = Backoff()
        while True:
            try:
                resp = await self._conn.range(key)
            except Unavailable:
                await asyncio.sleep(backoff.next())
                continue
            held = resp.kvs[0] if resp.kvs else None
            if held is None or held.lease != lease.lease_id:
                return 0
            return int(resp.header.revision) + 1

    async def _first(self, work: Coroutine[Any, Any, Any], *,
                     lease: KeptLease | None = None) -> str:
        """Run ``work`` until it ends, the lease is lost or we stop; say which happened."""
        waits = {asyncio.create_task(work): ""}
        waits[asyncio.create_task(self._stopping.wait())] = "shutdown"
        if lease is not None:
            waits[asyncio.create_task(lease.lost.wait())] = "lost"
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        finished = next(iter(done))
        if waits[finished] == "lost" and lease is not None:
            return lease.lost_reason
        return waits[finished] or str(finished.result())

    def _see_leader(self, record: state_pb2.LeaderRecord | None) -> None:
        if record == self._leader:
            return
        self._leader = record
        if record is not None:
            _log.info("election: leader is %s", record.leader.replica_id, extra={"fields": {
                "service": self.service, "replica": self.replica_id,
                "leader": record.leader.replica_id, "address": record.leader.address}})
        self._notify(LeadershipChange(False, record))

    def _step_down(self, reason: str) -> None:
        """Drop leadership now (no await: nothing can run in between). Idempotent."""
        term, self._term = self._term, None
        if term is None:
            return
        self._leader = None
        self._metrics.leader.labels(self.service).set(0)
        self._metrics.transitions.labels(self.service, "lost").inc()
        _log.warning("election: lost leadership", extra={"fields": {
            "service": self.service, "replica": self.replica_id, "reason": reason,
            "lease": term.lease.lease_id}})
        self._notify(LeadershipChange(False, None))
