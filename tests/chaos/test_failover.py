"""HA with real service processes: three replicas of chaos-engineer, kill the leader, measure.

What a user checks: exactly one replica leads; after SIGKILL another leads within the lease
TTL (3 s, plus up to 0.5 s of etcd's lease-expiry tick); after SIGTERM (resign) within 1 s;
followers answer leader-only RPCs with FAILED_PRECONDITION naming the leader's address; each
change is announced as a ``LeaderChanged`` event on NATS.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from phoenixcp.api.phoenix.v1 import chaos_pb2, chaos_pb2_grpc, events_pb2
from phoenixcp.cli.stack import LocalStack, ServiceProcess, operator_bundle
from phoenixcp.cli.status import leadership
from phoenixcp.platform.bus import BusConfig, EventBus
from phoenixcp.platform.rpc import secure_channel
from phoenixcp.platform.tls import CertBundle

pytestmark = pytest.mark.chaos

SERVICE = "chaos-engineer"
ROUNDS = 5
KILL_BOUND = 3.6  # TTL 3 s + etcd checks lease expiry every 500 ms
TERM_BOUND = 1.0


@pytest.fixture(scope="module")
async def trio(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    stack = LocalStack(state_dir=tmp_path_factory.mktemp("ha"), replicas=3, services=[SERVICE])
    try:
        await stack.start(timeout=40)
        yield stack
    finally:
        stack.stop()


async def leaders(stack: LocalStack, bundle: CertBundle) -> list[ServiceProcess]:
    procs = [p for p in stack.processes if p.exit_code() is None and p.announced]
    flags = await asyncio.gather(*(leadership(p.announced["grpc"], bundle) for p in procs))
    return [p for p, leads in zip(procs, flags, strict=True) if leads]


async def wait_new_leader(stack: LocalStack, bundle: CertBundle, old: ServiceProcess,
                          since: float) -> tuple[ServiceProcess, float]:
    while time.monotonic() - since < 15:
        now = [p for p in await leaders(stack, bundle) if p is not old]
        if len(now) == 1:
            return now[0], time.monotonic() - since
        await asyncio.sleep(0.02)
    pytest.fail(f"no new leader within 15 s after {old.replica} went away")


async def test_exactly_one_leads_and_followers_name_it(trio: LocalStack) -> None:
    bundle = operator_bundle(trio.endpoints())
    (leader,) = await leaders(trio, bundle)
    follower = next(p for p in trio.processes if p is not leader)
    async with secure_channel(follower.announced["grpc"], bundle) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await chaos_pb2_grpc.ChaosEngineerServiceStub(channel).StartExperiment(
                chaos_pb2.StartExperimentRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert leader.announced["grpc"] in (info.value.details() or "")
    async with secure_channel(leader.announced["grpc"], bundle) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await chaos_pb2_grpc.ChaosEngineerServiceStub(channel).StartExperiment(
                chaos_pb2.StartExperimentRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # past the gate: the leader serves


@pytest.mark.parametrize(("signum", "bound"), [(signal.SIGKILL, KILL_BOUND),
                                               (signal.SIGTERM, TERM_BOUND)],
                         ids=["sigkill", "sigterm"])
async def test_failover_time(trio: LocalStack, signum: int, bound: float, tmp_path: Path) -> None:
    bundle = operator_bundle(trio.endpoints())
    events: list[events_pb2.Event] = []

    async def record(event: events_pb2.Event) -> None:
        events.append(event)

    bus = EventBus(config=BusConfig(url=trio.nats.url, connect_timeout=_seconds(2)),
                   service="chaos-engineer", replica_id=f"test-{signum}")
    await bus.start()
    await bus.subscribe(durable=f"failover-test-{signum}", deliver="new",
                        subjects=["phoenix.events.leader_changed.>"], handler=record)
    times: list[float] = []
    try:
        for _ in range(ROUNDS):
            (old,) = await leaders(trio, bundle)
            assert old.process is not None
            killed_at = time.monotonic()
            old.process.send_signal(signum)
            new, took = await wait_new_leader(trio, bundle, old, killed_at)
            times.append(took)
            await asyncio.to_thread(old.process.wait, 20)
            await trio.restart_replica(old, timeout=30)
            assert [p.replica for p in await leaders(trio, bundle)] == [new.replica]
        await asyncio.sleep(0.5)
    finally:
        await bus.shutdown()

    name = signal.Signals(signum).name
    print(f"\n{SERVICE} failover after {name}: median {statistics.median(times):.2f}s, "
          f"max {max(times):.2f}s over {ROUNDS}: {', '.join(f'{t:.2f}' for t in times)}")
    assert max(times) < bound
    changes = [e.leader_changed for e in events if e.WhichOneof("payload") == "leader_changed"]
    acquired = [c for c in changes if c.change == events_pb2.LEADERSHIP_CHANGE_ACQUIRED]
    assert len(acquired) >= ROUNDS
    if signum == signal.SIGTERM:
        resigned = [c for c in changes if c.change == events_pb2.LEADERSHIP_CHANGE_RESIGNED]
        assert len(resigned) == ROUNDS


def _seconds(n: float):  # type: ignore[no-untyped-def]
    import datetime as dt

    return dt.timedelta(seconds=n)
