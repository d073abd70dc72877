"""An etcd lease kept alive in the background, with a deadline this process trusts over etcd.

etcd cannot expire a lease before ``t + TTL``, where ``t`` is when the keep-alive that etcd
answered was *sent* (etcd processed it after that). So the lease is certainly ours until that
local deadline, whatever etcd or the network does meanwhile; past ``deadline - margin`` this
process treats the lease as lost, without asking etcd, so its leader work stops before any
other replica can win. The clock keeps running while the process is stopped (SIGSTOP) and, on
Linux, while the machine is suspended (``CLOCK_BOOTTIME``), so a resumed process sees at once
that its deadline has passed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from phoenixcp.errors import NotFound, PhoenixError
from phoenixcp.platform.coord.etcd import EtcdConnection

__all__ = ["KeptLease", "lease_clock"]

_log = logging.getLogger(__name__)

Clock = Callable[[], float]


def lease_clock() -> float:
    """Seconds on a clock that never stops: CLOCK_BOOTTIME where there is one."""
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


_BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)


class KeptLease:
    """One granted lease, renewed every ``ttl / 3`` by :meth:`keep_alive` until it is lost.

    Lost (for good; a new lease must be granted) when etcd says it no longer exists, when
    no renewal has succeeded before ``deadline - margin``, or on :meth:`abandon`.
    Single event loop; :meth:`valid` is cheap and may be called anywhere.
    """

    def __init__(
        self, *, conn: EtcdConnection, lease_id: int, ttl: float, deadline: float,
        margin: float, clock: Clock,
    ) -> None:
        self.conn = conn
        self.lease_id = lease_id
        self.ttl = ttl
        self.deadline = deadline
        self.margin = margin
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self._clock = clock

    @classmethod
    async def grant(
        cls, conn: EtcdConnection, *, ttl: int, margin: float, clock: Clock = lease_clock
    ) -> KeptLease:
        """Grant a lease of ``ttl`` seconds; raises Unavailable when etcd does not answer."""
        sent = clock()
        lease_id, granted = await conn.grant(ttl)
        return cls(
            conn=conn, lease_id=lease_id, ttl=granted, deadline=sent + granted, margin=margin,
            clock=clock,
        )

    def valid(self) -> bool:
        """Whether the lease is certainly still ours now (no I/O)."""
        return not self.lost.is_set() and self._clock() < self.deadline - self.margin

    def remaining(self) -> float:
        """Seconds until this process gives the lease up, by its own clock."""
        return self.deadline - self.margin - self._clock()

    def abandon(self, reason: str) -> None:
        """Mark the lease lost (idempotent; the first reason is kept)."""
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()

    async def keep_alive(self) -> None:
        """Renew until lost; returns then. Cancel it to stop renewing (the lease then expires)."""
        interval = max(self.ttl / 3, 0.2)
        retry = interval / 4
        next_renewal = self._clock() + interval
        failing = False
        while not self.lost.is_set():
            now = self._clock()
            if now >= self.deadline - self.margin:
                self.abandon(
                    f"no keep-alive answer for lease {self.lease_id} before its deadline; "
                    f"giving it up {self.margin:.2f}s before etcd may expire it"
                )
                return
            if now < next_renewal:
                await asyncio.sleep(min(next_renewal, self.deadline - self.margin) - now)
                continue
            sent = self._clock()
            try:
                ttl = await self.conn.keep_alive_once(
                    self.lease_id, timeout=max(0.05, min(interval, self.remaining()))
                )
            except NotFound:
                ttl = 0
            except PhoenixError as exc:
                # Once per outage at warning level: retries come every ttl/12 seconds.
                (_log.debug if failing else _log.warning)(
                    "lease keep-alive failed; retrying until its deadline",
                    extra={"fields": {"lease": self.lease_id, "error": str(exc),
                                      "seconds_left": round(self.remaining(), 3)}},
                )
                failing = True
                next_renewal = self._clock() + retry
                continue
            if ttl <= 0:
                self.abandon(f"etcd says lease {self.lease_id} has expired")
                return
            if failing:
                failing = False
                _log.info("lease keep-alive recovered", extra={"fields": {"lease": self.lease_id}})
            self.deadline = max(self.deadline, sent + ttl)
            next_renewal = sent + interval

    async def revoke(self, *, timeout: float) -> None:
        """Best-effort revoke (deletes the keys attached now); never raises."""
        self.abandon("revoked")
        try:
            await self.conn.revoke(self.lease_id, timeout=timeout)
        except PhoenixError as exc:
            _log.info(
                "lease revoke failed; it expires by itself",
                extra={"fields": {"lease": self.lease_id, "error": str(exc)}},
            )
