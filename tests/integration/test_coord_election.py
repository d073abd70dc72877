"""Leader election against a real etcd: one leader, fast hand-over, local step-down, fencing.

Each test campaigns under its own key prefix, so tests share the session's etcd. Failover
times are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest

from phoenixcp.api.phoenix.v1 import state_pb2
from phoenixcp.errors import LeadershipLost, NotLeader
from phoenixcp.platform.config import EtcdConfig
from phoenixcp.platform.coord import (
    EtcdConnection,
    Fence,
    LeaderElection,
    LeaderOnlyRunner,
    StateStore,
)
from phoenixcp.platform.embedded import EmbeddedEtcd
from tests.integration._coord_support import TcpProxy, wait_until

pytestmark = pytest.mark.integration

TTL = timedelta(seconds=3)
Connect = Callable[..., Awaitable[EtcdConnection]]


@pytest.fixture
def prefix() -> str:
    return f"/test-{uuid.uuid4().hex[:10]}/"


@pytest.fixture
async def connect(etcd_server: EmbeddedEtcd) -> AsyncIterator[Connect]:
    """Open connections to the session etcd (or another endpoint); all closed afterwards."""
    conns: list[EtcdConnection] = []

    async def make(endpoint: str | None = None) -> EtcdConnection:
        conn = await EtcdConnection.open(EtcdConfig(endpoints=(endpoint or etcd_server.endpoint,)))
        conns.append(conn)
        return conn

    yield make
    for conn in conns:
        await conn.close()


class Replicas:
    """Elections of one service under a test prefix, each run as a task; all shut down after."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.elections: list[LeaderElection] = []
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, conn: EtcdConnection, name: str) -> LeaderElection:
        election = LeaderElection(conn=conn, service="cost-optimizer", replica_id=name,
                                  address=f"10.0.0.{len(self.elections) + 1}:7000",
                                  ttl=TTL, prefix=self.prefix)
        self.elections.append(election)
        self.tasks.append(asyncio.create_task(election.run()))
        return election

    def leaders(self) -> list[LeaderElection]:
        return [e for e in self.elections if e.is_leader]

    async def close(self) -> None:
        for election in self.elections:
            await election.shutdown()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results), results


@pytest.fixture
async def replicas(prefix: str) -> AsyncIterator[Replicas]:
    group = Replicas(prefix)
    yield group
    await group.close()


async def test_exactly_one_of_three_leads_and_a_clean_stop_hands_over_at_once(
    connect: Connect, replicas: Replicas
) -> None:
    conn = await connect()
    for i in range(3):
        replicas.start(conn, f"co-{i}")
    await wait_until(lambda: len(replicas.leaders()) == 1, timeout=5)
    for _ in range(50):  # and it stays exactly one
        assert len(replicas.leaders()) == 1
        await asyncio.sleep(0.01)
    leader = replicas.leaders()[0]
    await wait_until(lambda: all(
        e.leader is not None and e.leader.leader.replica_id == leader.replica_id
        for e in replicas.elections), timeout=2)
    record = replicas.elections[0].leader
    assert record is not None and record.lease_id == leader.lease_id
    assert record.leader.address.startswith("10.0.0.")
    follower = next(e for e in replicas.elections if e is not leader)
    with pytest.raises(NotLeader, match=f"the leader is {leader.replica_id} at 10.0.0") as exc:
        follower.fence()
    assert exc.value.leader == record.leader.address

    start = time.monotonic()
    await leader.shutdown()
    assert not leader.is_leader
    await wait_until(lambda: len(replicas.leaders()) == 1, timeout=2)
    took = time.monotonic() - start
    print(f"\nclean stop: a new leader in {took * 1000:.0f} ms")
    assert took < 1.0
    assert replicas.leaders()[0] is not leader


async def test_a_cancelled_run_also_resigns(connect: Connect, prefix: str) -> None:
    conn = await connect()
    group = Replicas(prefix)
    first, second = group.start(conn, "co-a"), group.start(conn, "co-b")
    await wait_until(lambda: len(group.leaders()) == 1, timeout=5)
    leader = group.leaders()[0]
    follower = second if leader is first else first
    group.tasks[group.elections.index(leader)].cancel()
    took = await wait_until(lambda: follower.is_leader, timeout=2)
    print(f"\ncancelled run(): a new leader in {took * 1000:.0f} ms")
    assert not leader.is_leader
    await group.close()


@pytest.mark.parametrize("blackhole", [False, True], ids=["reset", "blackhole"])
async def test_a_partitioned_leader_steps_down_before_another_wins(
    connect: Connect, replicas: Replicas, etcd_server: EmbeddedEtcd, blackhole: bool
) -> None:
    """Kill-like loss: the leader's connections are cut (no resign, no keep-alive), either
    refused at once or silently dropped."""
    proxy = await TcpProxy(etcd_server.endpoint).start()
    try:
        leader = replicas.start(await connect(proxy.endpoint), "co-cut")
        await wait_until(lambda: leader.is_leader, timeout=5)
        others = [replicas.start(await connect(), f"co-{i}") for i in range(2)]
        await wait_until(lambda: all(e.leader is not None for e in others), timeout=2)
        events: list[tuple[str, bool, float]] = []

        async def record(election: LeaderElection) -> None:
            async for change in election.subscribe():
                events.append((election.replica_id, change.is_leader, time.monotonic()))

        watchers = [asyncio.create_task(record(e)) for e in replicas.elections]
        await asyncio.sleep(0.05)
        cut_at = time.monotonic()
        proxy.cut(blackhole=blackhole)
        took = await wait_until(lambda: any(e.is_leader for e in others), timeout=TTL.seconds + 2)
        # is_leader is set before the subscribers hear of it: wait for the event too.
        await wait_until(lambda: any(lead for who, lead, _ in events if who != "co-cut"),
                         timeout=2)
        stepped_down = [t for who, lead, t in events if who == "co-cut" and not lead and t > cut_at]
        won = [t for who, lead, t in events if who != "co-cut" and lead]
        mode = "blackhole" if blackhole else "reset"
        print(f"\nleader cut off ({mode}): stepped down after "
              f"{(stepped_down[0] - cut_at) * 1000:.0f} ms, a new leader after "
              f"{took * 1000:.0f} ms (TTL {TTL.seconds}s)")
        assert stepped_down and won and stepped_down[0] < won[0]
        assert took < TTL.total_seconds() + 1  # etcd expires leases on a 500 ms tick
        assert not leader.is_leader
        for task in watchers:
            task.cancel()
    finally:
        await proxy.close()


async def test_a_closed_connection_loses_leadership_within_the_ttl(
    connect: Connect, replicas: Replicas
) -> None:
    conn = await connect()
    leader = replicas.start(conn, "co-dies")
    await wait_until(lambda: leader.is_leader, timeout=5)
    follower = replicas.start(await connect(), "co-lives")
    await wait_until(lambda: follower.leader is not None, timeout=2)
    await conn.close()  # the lease is neither revoked nor renewed any more
    took = await wait_until(lambda: follower.is_leader, timeout=TTL.seconds + 2)
    print(f"\nconnection closed: a new leader after {took * 1000:.0f} ms")
    assert took < TTL.total_seconds() + 1
    assert not leader.is_leader


class Recorder:
    """A leader-only component that logs its start and stop with the time."""

    def __init__(self, name: str, log: list[tuple[str, str, float]]) -> None:
        self.name, self.log = name, log
        self.fence: Fence | None = None

    async def start(self, fence: Fence) -> None:
        self.fence = fence
        self.log.append((self.name, "start", time.monotonic()))

    async def stop(self) -> None:
        self.log.append((self.name, "stop", time.monotonic()))


async def test_a_paused_leader_knows_it_lost_on_resume_and_etcd_refuses_its_writes(
    connect: Connect, replicas: Replicas
) -> None:
    """The event loop is blocked past the TTL, as a SIGSTOP would: on resume, before any
    await, the old leader already says it is not leader; its stale fence is refused by etcd;
    its leader work stops before the next term's starts. (Both replicas share the paused
    loop, so either may win the next term; the chaos test pauses one process only.)"""
    conn = await connect()
    store = StateStore(conn, prefix=replicas.prefix)
    log: list[tuple[str, str, float]] = []
    paused = replicas.start(conn, "co-paused")
    await wait_until(lambda: paused.is_leader, timeout=5)
    other = replicas.start(await connect(), "co-other")
    await wait_until(lambda: other.leader is not None, timeout=2)
    runners = [LeaderOnlyRunner(election=e, components=[Recorder(e.replica_id, log)])
               for e in (paused, other)]
    runner_tasks = [asyncio.create_task(r.run()) for r in runners]
    await wait_until(lambda: len(log) == 1, timeout=2)
    fence = paused.fence()
    await store.put_fenced("experiments/e1", state_pb2.Experiment(id="by-paused"), fence)

    time.sleep(TTL.total_seconds() + 0.8)  # noqa: ASYNC251 - the pause under test
    assert not paused.is_leader
    assert not fence.valid
    with pytest.raises(NotLeader):
        paused.fence()
    # Without the local check, etcd itself refuses the deposed term's write.
    stale = Fence(fence.leader_key, fence.lease_id, fence.create_revision)
    with pytest.raises(LeadershipLost, match=f"lease {fence.lease_id} no longer holds"):
        await store.put_fenced("experiments/e1", state_pb2.Experiment(id="late"), stale)

    await wait_until(lambda: len(replicas.leaders()) == 1, timeout=TTL.seconds + 1)
    new_fence = replicas.leaders()[0].fence()
    assert (new_fence.lease_id, new_fence.create_revision) != (
        fence.lease_id, fence.create_revision)
    await wait_until(lambda: len(log) == 3, timeout=1)
    assert [what for _, what, _ in log] == ["start", "stop", "start"]
    assert log[0][0] == log[1][0] == "co-paused"
    assert log[1][2] <= log[2][2]
    value = await store.get("experiments/e1", state_pb2.Experiment)
    assert value is not None and value.value.id == "by-paused"
    for runner in runners:
        await runner.shutdown()
    await asyncio.gather(*runner_tasks)
    assert log[-1][1] == "stop"


async def test_fenced_writers_race_and_only_the_current_term_wins(
    connect: Connect, replicas: Replicas
) -> None:
    """STYLE guideline 8: two writers with fences race on one key; the deposed one is refused."""
    conn = await connect()
    store = StateStore(conn, prefix=replicas.prefix)
    first = replicas.start(await connect(), "co-1")
    await wait_until(lambda: first.is_leader, timeout=5)
    second = replicas.start(await connect(), "co-2")
    await wait_until(lambda: second.leader is not None, timeout=2)
    old = first.fence()
    deposed = Fence(old.leader_key, old.lease_id, old.create_revision)  # no local check
    await first.shutdown()
    await wait_until(lambda: second.is_leader, timeout=2)
    current = second.fence()

    outcomes = await asyncio.gather(
        *(store.put_fenced("budgets/acme", state_pb2.Budget(tenant=f"old-{i}"), deposed)
          for i in range(10)),
        *(store.put_fenced("budgets/acme", state_pb2.Budget(tenant=f"new-{i}"), current)
          for i in range(10)),
        return_exceptions=True,
    )
    refused, written = outcomes[:10], outcomes[10:]
    assert all(isinstance(o, LeadershipLost) for o in refused), refused
    assert all(isinstance(o, int) for o in written), written
    stored = await store.get("budgets/acme", state_pb2.Budget)
    assert stored is not None and stored.value.tenant.startswith("new-")
    assert "no longer holds" in str(refused[0]) and str(old.lease_id) in str(refused[0])

    # A compare on the value's revision still applies inside the fence.
    with pytest.raises(Exception, match="expected revision 1"):
        await store.put_fenced("budgets/acme", state_pb2.Budget(), current, expected_revision=1)
    assert await store.delete_fenced("budgets/acme", current)
    with pytest.raises(LeadershipLost):
        await store.delete_fenced("budgets/acme", deposed)


async def test_writes_during_a_hand_over_never_interleave_terms(
    connect: Connect, replicas: Replicas
) -> None:
    """Both replicas write as fast as they can while leadership moves: every accepted write
    of the old term has a lower revision than the new term's leader key."""
    store = StateStore(await connect(), prefix=replicas.prefix)
    a = replicas.start(await connect(), "co-a")
    await wait_until(lambda: a.is_leader, timeout=5)
    b = replicas.start(await connect(), "co-b")
    await wait_until(lambda: b.leader is not None, timeout=2)
    fences = {"a": a.fence()}
    accepted: dict[str, list[int]] = {"a": [], "b": []}

    async def write(name: str, fence: Fence) -> None:
        stale = Fence(fence.leader_key, fence.lease_id, fence.create_revision)
        for i in range(200):
            try:
                accepted[name].append(await store.put_fenced(
                    "flags/race", state_pb2.FeatureFlag(name=f"{name}-{i}"), stale))
            except LeadershipLost:
                await asyncio.sleep(0)

    writer_a = asyncio.create_task(write("a", fences["a"]))
    await asyncio.sleep(0.05)
    await a.shutdown()
    await wait_until(lambda: b.is_leader, timeout=2)
    fences["b"] = b.fence()
    await asyncio.gather(writer_a, write("b", fences["b"]))
    assert accepted["a"] and accepted["b"]
    assert max(accepted["a"]) < fences["b"].create_revision < min(accepted["b"])


async def test_leadership_survives_a_quick_etcd_restart_with_never_two_leaders(
    tmp_path: Path, prefix: str
) -> None:
    with EmbeddedEtcd(data_dir=tmp_path / "etcd") as etcd:
        group = Replicas(prefix)
        conns = [await EtcdConnection.open(EtcdConfig(endpoints=(etcd.endpoint,)))
                 for _ in range(3)]
        try:
            for i, conn in enumerate(conns):
                group.start(conn, f"co-{i}")
            await wait_until(lambda: len(group.leaders()) == 1, timeout=5)
            before = group.leaders()[0]
            most = 0

            async def sample() -> None:
                nonlocal most
                while True:
                    most = max(most, len(group.leaders()))
                    await asyncio.sleep(0.002)

            sampler = asyncio.create_task(sample())
            await asyncio.to_thread(etcd.restart)
            await asyncio.sleep(TTL.total_seconds())
            sampler.cancel()
            assert most == 1
            assert group.leaders() == [before]  # the lease outlived the restart
        finally:
            await group.close()
            for conn in conns:
                await conn.close()
