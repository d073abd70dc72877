"""A replica's membership in the Phoenix cluster: state in etcd, events on NATS, leadership.

:class:`ClusterMember` owns the process's one etcd connection, its :class:`StateStore`, its
:class:`EventBus` and, for services that elect a leader, the :class:`LeaderElection` and the
leader-only components it starts and stops. It publishes ``LeaderChanged`` on every gain or
loss and ``CertRotated`` when the replica's certificate is renewed.

Shutdown happens in two steps so a clean stop hands over at once: :meth:`resign` stops leader
work and deletes the leader key (another replica leads within about a second), the caller then
drains its gRPC server, and :meth:`shutdown` flushes events and closes the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from google.protobuf import timestamp_pb2
from prometheus_client import CollectorRegistry

from phoenixcp.api.phoenix.v1 import common_pb2, events_pb2, state_pb2
from phoenixcp.core.identity import ServiceIdentity
from phoenixcp.errors import NotLeader, PhoenixError, Unavailable
from phoenixcp.platform.bus import BusConfig, EventBus
from phoenixcp.platform.config import ServiceConfig
from phoenixcp.platform.coord import (
    EtcdConnection,
    Fence,
    LeaderElection,
    LeaderOnly,
    LeaderOnlyRunner,
    Membership,
    StateStore,
)
from phoenixcp.platform.names import service_enum
from phoenixcp.platform.tls import CertBundle

__all__ = ["ClusterMember"]

log = logging.getLogger(__name__)

_EVENT_FLUSH = 2.0  # seconds shutdown waits for the last LeaderChanged to be handed to the bus


class ClusterMember:
    """This replica's etcd state, NATS bus and (if its service elects) leadership.

    ``start`` connects (retrying NATS until it answers or ``shutdown`` is called);
    ``resign`` and ``shutdown`` are idempotent.
    """

    def __init__(
        self,
        *,
        config: ServiceConfig,
        identity: ServiceIdentity,
        address: Callable[[], str],
        registry: CollectorRegistry,
        leader_only: Sequence[LeaderOnly] = (),
    ) -> None:
        self._config = config
        self._identity = identity
        self._address = address
        self._registry = registry
        self._leader_only = tuple(leader_only)
        self._conn: EtcdConnection | None = None
        self._election: LeaderElection | None = None
        self._runner: LeaderOnlyRunner | None = None
        self.store: StateStore | None = None
        self.members: Membership | None = None
        """This replica's registration under ``members/<service>/``; ``members.count`` is
        how many replicas of the service are alive."""
        self.bus = EventBus(
            config=BusConfig(url=config.nats.url, connect_timeout=config.nats.connect_timeout),
            service=identity.name, replica_id=config.replica_id, registry=registry,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._resigning = False
        self._closed = False

    async def start(self) -> None:
        """Connect to etcd and NATS and, if the service elects, start campaigning."""
        self._conn = await EtcdConnection.open(self._config.etcd)
        self.store = StateStore(self._conn, registry=self._registry)
        self.members = Membership(self._conn, service=self._identity.name,
                                  replica_id=self._config.replica_id, address=self._address())
        await self.members.start()
        await self._start_bus()
        if not self._identity.elects_leader:
            return
        self._election = LeaderElection(
            conn=self._conn, service=self._identity.name, replica_id=self._config.replica_id,
            address=self._address(), ttl=self._config.election.ttl, registry=self._registry,
        )
        self._runner = LeaderOnlyRunner(election=self._election, components=self._leader_only)
        self._spawn(self._election.run(), self._runner.run(), self._announce_leadership())
        await self._settle_election()

    async def _settle_election(self) -> None:
        # Report ready once this replica knows who leads (itself or another), so a leader-only
        # RPC right after start does not meet a replica that has not looked yet.
        assert self._election is not None
        wait = self._config.election.ttl.total_seconds() + 1.0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                async for change in self._election.subscribe():
                    if change.is_leader or change.leader is not None:
                        return
        log.warning("no leader known yet; serving anyway", extra={"fields": {"waited_s": wait}})

    async def _start_bus(self) -> None:
        delay = 0.2
        while True:
            try:
                await self.bus.start()
                return
            except Unavailable as exc:
                log.warning("NATS does not answer yet; retrying",
                            extra={"fields": {"error": str(exc), "retry_in_s": delay}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _spawn(self, *coros: object) -> None:
        for coro in coros:
            self._tasks.append(asyncio.create_task(coro))  # type: ignore[arg-type]

    # -- what the service reads --------------------------------------------------------------

    def leadership(self) -> tuple[bool, state_pb2.LeaderRecord | None]:
        """``(is_leader, the current leader as last seen)``; ``(False, None)`` without election."""
        if self._election is None:
            return False, None
        return self._election.is_leader, self._election.leader

    def fence(self) -> Fence:
        """This replica's fence for leader-only writes; NotLeader naming the leader otherwise."""
        if self._election is None:
            raise NotLeader(f"{self._identity.name} has no leader election; every replica serves")
        return self._election.fence()

    def require_leader(self) -> None:
        """Raise NotLeader (FAILED_PRECONDITION naming the leader) unless this replica leads."""
        self.fence()

    # -- events --------------------------------------------------------------------------------

    async def _announce_leadership(self) -> None:
        assert self._election is not None
        leading = False
        async for change in self._election.subscribe():
            if change.is_leader == leading:
                continue
            leading = change.is_leader
            if leading:
                kind = events_pb2.LEADERSHIP_CHANGE_ACQUIRED
            elif self._resigning:
                kind = events_pb2.LEADERSHIP_CHANGE_RESIGNED
            else:
                kind = events_pb2.LEADERSHIP_CHANGE_LOST
            payload = events_pb2.LeaderChanged(
                service=service_enum(self._identity.name), change=kind, replica=self._me())
            if leading and change.leader is not None:
                payload.leader.CopyFrom(change.leader)
            await self._publish(events_pb2.Event(leader_changed=payload))

    def certificate_renewed(self, bundle: CertBundle, previous: CertBundle | None,
                            issuer: int) -> None:
        """Publish ``CertRotated`` for ``bundle`` (called by the renewer; never raises)."""
        not_before, not_after = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
        not_before.FromDatetime(bundle.certificate.not_valid_before_utc)
        not_after.FromDatetime(bundle.not_after)
        payload = events_pb2.CertRotated(
            replica=self._me(), spiffe_id=bundle.spiffe_id or "",
            serial_number=format(bundle.certificate.serial_number, "x"),
            previous_serial_number=(format(previous.certificate.serial_number, "x")
                                    if previous else ""),
            not_before=not_before, not_after=not_after, issuer=issuer,  # type: ignore[arg-type]
            reason="renewal at 2/3 of the certificate's lifetime",
        )
        if not self._closed:
            self._spawn(self._publish(events_pb2.Event(cert_rotated=payload)))

    def _me(self) -> common_pb2.ReplicaIdentity:
        return common_pb2.ReplicaIdentity(
            service=service_enum(self._identity.name), replica_id=self._config.replica_id,
            address=self._address())

    async def _publish(self, event: events_pb2.Event) -> None:
        try:
            await self.bus.publish(event)
        except PhoenixError as exc:
            log.error("event could not be published", extra={"fields": {
                "payload": event.WhichOneof("payload"), "error": str(exc)}})

    # -- stopping ------------------------------------------------------------------------------

    async def resign(self) -> None:
        """Stop leader-only work and hand leadership over now. Idempotent."""
        self._resigning = True
        if self._runner is not None:
            await self._runner.shutdown()
        if self._election is not None:
            await self._election.shutdown()

    async def shutdown(self) -> None:
        """Resign, flush the last events, close NATS and etcd. Idempotent."""
        if self._closed:
            return
        await self.resign()
        self._closed = True
        # The election's subscription ends with run(); let the last LeaderChanged reach the bus.
        _, pending = await asyncio.wait(self._tasks, timeout=_EVENT_FLUSH) if self._tasks \
            else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.bus.shutdown()
        if self.members is not None:
            await self.members.shutdown()
        if self._conn is not None:
            with contextlib.suppress(PhoenixError):
                await self._conn.close()
