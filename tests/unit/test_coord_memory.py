"""The in-memory fakes keep the etcd rules other components' unit tests rely on."""

from __future__ import annotations

import asyncio

import pytest

from phoenixcp.api.phoenix.v1 import state_pb2
from phoenixcp.errors import Conflict, InvalidArgument, LeadershipLost, NotLeader
from phoenixcp.platform.coord import (
    Change,
    ChangeKind,
    Fence,
    Leadership,
    LeadershipChange,
    MemoryLeadership,
    MemoryState,
    ReplicatedState,
)

pytestmark = pytest.mark.unit


def flag(name: str) -> state_pb2.FeatureFlag:
    return state_pb2.FeatureFlag(name=name)


async def test_revisions_and_compare_and_swap() -> None:
    state: ReplicatedState = MemoryState()
    first = await state.put("flags/a", flag("a1"), expected_revision=0)
    with pytest.raises(Conflict, match="exists already"):
        await state.put("flags/a", flag("a2"), expected_revision=0)
    second = await state.put("flags/a", flag("a2"), expected_revision=first)
    with pytest.raises(Conflict, match=f"expected revision {first}, found {second}"):
        await state.put("flags/a", flag("a3"), expected_revision=first)
    got = await state.get("flags/a", state_pb2.FeatureFlag)
    assert got is not None
    assert (got.value.name, got.create_revision, got.mod_revision) == ("a2", first, second)
    await state.put("flags/b", flag("b"))
    await state.put("other/c", flag("c"))
    items, revision = await state.list("flags/", state_pb2.FeatureFlag)
    assert [key for key, _ in items] == ["flags/a", "flags/b"] and revision == second + 2
    with pytest.raises(InvalidArgument):
        await state.delete("flags/a", expected_revision=0)
    with pytest.raises(InvalidArgument):
        await state.put("/phoenix/v1/flags/a", flag("absolute"))
    assert await state.delete("flags/a", expected_revision=second)
    assert not await state.delete("flags/a")


async def test_watch_replays_from_a_revision_then_follows() -> None:
    state = MemoryState()
    first = await state.put("flags/a", flag("a1"))
    await state.put("other/x", flag("x"))
    seen: list[Change[state_pb2.FeatureFlag]] = []

    async def consume() -> None:
        async for change in state.watch("flags/", state_pb2.FeatureFlag, from_revision=first):
            seen.append(change)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    await state.delete("flags/a")
    await state.put("flags/b", flag("b"))
    for _ in range(10):
        await asyncio.sleep(0)
    task.cancel()
    assert [(c.kind, c.key) for c in seen] == [
        (ChangeKind.PUT, "flags/a"), (ChangeKind.DELETE, "flags/a"), (ChangeKind.PUT, "flags/b")]
    assert seen[0].value == flag("a1") and seen[1].value is None


async def test_the_fake_election_fences_writes_like_etcd() -> None:
    state = MemoryState()
    one: Leadership = MemoryLeadership(state=state, service="cost-optimizer", replica_id="co-1",
                                       address="10.0.0.1:7000")
    two = MemoryLeadership(state=state, service="cost-optimizer", replica_id="co-2")
    assert isinstance(one, MemoryLeadership)
    with pytest.raises(NotLeader):
        one.fence()
    assert await one.campaign()
    assert not await two.campaign()
    assert two.leader is not None and two.leader.leader.replica_id == "co-1"
    with pytest.raises(NotLeader) as refused:
        two.fence()
    assert refused.value.leader == "10.0.0.1:7000"

    fence = one.fence()
    await state.put_fenced("budgets/acme", state_pb2.Budget(tenant="acme"), fence)
    one.expire()
    assert not fence.valid and two.leader is None
    stale = Fence(fence.leader_key, fence.lease_id, fence.create_revision)
    with pytest.raises(LeadershipLost, match=f"lease {fence.lease_id} no longer holds"):
        await state.put_fenced("budgets/acme", state_pb2.Budget(tenant="late"), stale)
    assert await two.campaign()
    with pytest.raises(LeadershipLost):
        await state.delete_fenced("budgets/acme", stale)
    assert await state.delete_fenced("budgets/acme", two.fence())


async def test_the_fake_election_announces_every_change() -> None:
    state = MemoryState()
    one = MemoryLeadership(state=state, service="s", replica_id="r1")
    two = MemoryLeadership(state=state, service="s", replica_id="r2")
    seen: list[LeadershipChange] = []

    async def consume() -> None:
        async for change in two.subscribe():
            seen.append(change)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    await one.campaign()
    await one.resign()
    await two.campaign()
    await asyncio.sleep(0)
    task.cancel()
    assert [(c.is_leader, c.leader.leader.replica_id if c.leader else None) for c in seen] == [
        (False, None), (False, "r1"), (False, None), (True, "r2")]
    assert seen[-1].fence == two.fence()
