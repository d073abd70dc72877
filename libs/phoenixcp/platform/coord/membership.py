"""Which replicas of a service are alive: a key per replica, held by its lease.

Each replica puts ``members/<service>/<replica_id>`` (a ``Member`` message is not needed: the
value is the replica's address) attached to its own lease and keeps the lease alive; a replica
that dies disappears within the TTL. Services that do not elect a leader (metrics-pipeline)
use it to know how many of them share the traffic, e.g. so window reports can carry the
replica count from which cardinality-guard derives per-replica caps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from phoenixcp.errors import PhoenixError
from phoenixcp.platform.coord.etcd import EtcdConnection, prefix_end
from phoenixcp.platform.coord.lease import KeptLease

__all__ = ["Membership"]

log = logging.getLogger(__name__)


class Membership:
    """This replica's presence, and the last known count of live replicas (at least 1).

    ``start`` registers (retrying while etcd is away) and returns at once; ``count`` never
    does I/O; ``shutdown`` (idempotent) revokes the lease so the count drops at once.
    """

    def __init__(self, conn: EtcdConnection, *, service: str, replica_id: str,
                 address: str = "", ttl: int = 10, root: str = "/phoenix/v1/") -> None:
        self._conn = conn
        self._prefix = f"{root}members/{service}/".encode()
        self._key = self._prefix + replica_id.encode()
        self._address = address.encode()
        self._ttl = ttl
        self._count = 1
        self._task: asyncio.Task[None] | None = None
        self._lease: KeptLease | None = None

    @property
    def count(self) -> int:
        return self._count

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="membership")

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                lease = self._lease = await KeptLease.grant(
                    self._conn, ttl=self._ttl, margin=0.5)
                await self._conn.put(self._key, self._address, lease=lease.lease_id)
                keeper = asyncio.create_task(lease.keep_alive())
                try:
                    while not lease.lost.is_set():
                        await self.refresh()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self._ttl / 2):
                                await lease.lost.wait()
                finally:
                    keeper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await keeper
                log.warning("membership lease lost; registering again",
                            extra={"fields": {"reason": lease.lost_reason}})
                delay = 0.5
            except PhoenixError as exc:
                log.debug("membership not registered yet", extra={"fields": {"error": str(exc)}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def refresh(self) -> int:
        """Read the number of live members now; keeps the last count if etcd is away."""
        try:
            resp = await self._conn.range(self._prefix, range_end=prefix_end(self._prefix),
                                          keys_only=True)
            self._count = max(1, len(resp.kvs))
        except PhoenixError as exc:
            log.debug("member count unavailable", extra={"fields": {"error": str(exc)}})
        return self._count

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._lease is not None:
            await self._lease.revoke(timeout=1.0)
            self._lease = None
