"""The lease's local deadline: trusted over etcd, counted from when a renewal was sent."""

from __future__ import annotations

import asyncio
import time
from typing import cast

import pytest

from phoenixcp.errors import Unavailable
from phoenixcp.platform.coord.etcd import EtcdConnection
from phoenixcp.platform.coord.lease import KeptLease, lease_clock

pytestmark = pytest.mark.unit


class FakeLeases:
    """Stands in for EtcdConnection's lease calls; ``answer`` decides each renewal."""

    def __init__(self, *, delay: float = 0.0, ttl: int = 1) -> None:
        self.delay, self.ttl = delay, ttl
        self.renewals = 0
        self.answer: int | Exception = ttl
        self.revoked: list[int] = []

    async def grant(self, ttl: int) -> tuple[int, int]:
        await asyncio.sleep(self.delay)
        return 42, ttl

    async def keep_alive_once(self, lease_id: int, *, timeout: float) -> int:
        self.renewals += 1
        await asyncio.sleep(self.delay)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        self.revoked.append(lease_id)


def conn(fake: FakeLeases) -> EtcdConnection:
    return cast(EtcdConnection, fake)


async def test_the_deadline_counts_from_when_the_grant_was_sent() -> None:
    fake = FakeLeases(delay=0.2)
    sent = lease_clock()
    lease = await KeptLease.grant(conn(fake), ttl=1, margin=0.1)
    assert sent <= lease.deadline - 1 <= sent + 0.01  # not from when the answer came
    assert lease.valid() and 0.5 < lease.remaining() < 0.7


async def test_renewals_keep_it_valid_and_failures_lose_it_before_etcd_could() -> None:
    fake = FakeLeases()
    lease = await KeptLease.grant(conn(fake), ttl=1, margin=0.2)
    keeper = asyncio.create_task(lease.keep_alive())
    await asyncio.sleep(1.2)
    assert lease.valid() and fake.renewals >= 3
    fake.answer = Unavailable("etcd is away")
    failed_at = lease_clock()
    last_deadline = lease.deadline
    await asyncio.wait_for(lease.lost.wait(), timeout=2)
    lost_at = lease_clock()
    await keeper
    assert lost_at <= last_deadline - 0.2 + 0.05  # given up before etcd may expire it
    assert lost_at - failed_at < 1
    assert "deadline" in lease.lost_reason and not lease.valid()


async def test_etcd_saying_expired_loses_it_at_once() -> None:
    fake = FakeLeases()
    lease = await KeptLease.grant(conn(fake), ttl=1, margin=0.2)
    fake.answer = 0
    await asyncio.wait_for(lease.keep_alive(), timeout=1)
    assert not lease.valid() and "expired" in lease.lost_reason


async def test_a_pause_past_the_deadline_is_seen_without_any_await() -> None:
    offset = [0.0]
    lease = await KeptLease.grant(conn(FakeLeases()), ttl=3, margin=0.5,
                                  clock=lambda: time.monotonic() + offset[0])
    assert lease.valid()
    offset[0] = 2.6  # as if SIGSTOPped for 2.6 s: 0.1 s inside etcd's TTL, past the margin
    assert not lease.valid()


def test_the_lease_clock_runs_with_the_monotonic_clock() -> None:
    before, start = time.monotonic(), lease_clock()
    time.sleep(0.05)
    assert abs((lease_clock() - start) - (time.monotonic() - before)) < 0.01


async def test_revoke_is_best_effort_and_marks_it_lost() -> None:
    fake = FakeLeases()
    lease = await KeptLease.grant(conn(fake), ttl=1, margin=0.2)
    await lease.revoke(timeout=1)
    assert fake.revoked == [42] and not lease.valid()


def test_the_fake_has_the_connections_lease_calls() -> None:
    for name in ("grant", "keep_alive_once", "revoke"):
        assert callable(getattr(EtcdConnection, name)) and callable(getattr(FakeLeases, name))
