"""Membership against a real etcd: replicas count each other; one that leaves or dies drops
out (revoked at once on shutdown, by lease expiry when its connection dies)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from phoenixcp.platform.config import EtcdConfig
from phoenixcp.platform.coord import EtcdConnection, Membership
from phoenixcp.platform.embedded import EmbeddedEtcd

pytestmark = pytest.mark.integration


async def settle(member: Membership, want: int, timeout: float) -> int:
    """Read the count until it is ``want`` or ``timeout`` passes; the last count read."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (count := await member.refresh()) != want:
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    return count


async def test_members_count_each_other_and_a_leaver_drops_out(
        etcd_server: EmbeddedEtcd) -> None:
    root = f"/test-{uuid.uuid4().hex[:10]}/"
    conns = [await EtcdConnection.open(EtcdConfig(endpoints=(etcd_server.endpoint,)))
             for _ in range(3)]
    members = [Membership(conn, service="metrics-pipeline", replica_id=f"r{i}", ttl=2,
                          root=root) for i, conn in enumerate(conns)]
    try:
        for m in members:
            await m.start()
        assert [await settle(m, 3, 5.0) for m in members] == [3, 3, 3]
        await members[0].shutdown()  # revoked: gone at once
        assert [await m.refresh() for m in members[1:]] == [2, 2]
        # A replica whose connection dies stops renewing; its lease (TTL 2 s) expires.
        await conns[2].close()
        assert await settle(members[1], 1, 6.0) == 1
    finally:
        for m in members:
            await m.shutdown()
        for conn in conns:
            await conn.close()
