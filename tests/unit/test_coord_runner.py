"""LeaderOnlyRunner starts leader-only work per term and stops it the moment the term ends."""

from __future__ import annotations

import asyncio

import pytest

from phoenixcp.platform.coord import Fence, LeaderOnlyRunner, MemoryLeadership, MemoryState

pytestmark = pytest.mark.unit


class Component:
    def __init__(self, name: str, log: list[str], *, start_delay: float = 0.0,
                 fail: bool = False) -> None:
        self.name, self.log = name, log
        self.start_delay, self.fail = start_delay, fail
        self.fences: list[Fence] = []

    async def start(self, fence: Fence) -> None:
        self.log.append(f"start {self.name}")
        self.fences.append(fence)
        await asyncio.sleep(self.start_delay)
        if self.fail:
            raise RuntimeError("cannot start")
        self.log.append(f"started {self.name}")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_components_start_in_order_and_stop_in_reverse_per_term() -> None:
    log: list[str] = []
    election = MemoryLeadership(state=MemoryState(), service="s", replica_id="r1")
    runner = LeaderOnlyRunner(election=election,
                              components=[Component("a", log), Component("b", log)])
    task = asyncio.create_task(runner.run())
    await settle()
    assert log == [] and not runner.active
    await election.campaign()
    await settle()
    assert log == ["start a", "started a", "start b", "started b"]
    election.expire()
    await settle()
    assert log[4:] == ["stop b", "stop a"] and not runner.active
    await election.campaign()
    await settle()
    await runner.shutdown()
    await runner.shutdown()  # idempotent
    await task
    assert log[6:] == ["start a", "started a", "start b", "started b", "stop b", "stop a"]


async def test_a_loss_cancels_a_start_in_progress_and_still_stops_it() -> None:
    log: list[str] = []
    election = MemoryLeadership(state=MemoryState(), service="s", replica_id="r1")
    slow = Component("slow", log, start_delay=10)
    never = Component("never", log)
    runner = LeaderOnlyRunner(election=election, components=[slow, never])
    task = asyncio.create_task(runner.run())
    await election.campaign()
    await settle()
    election.expire()
    await settle()
    assert log == ["start slow", "stop slow"]
    await runner.shutdown()
    await task


async def test_a_failing_start_is_logged_and_the_others_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    election = MemoryLeadership(state=MemoryState(), service="s", replica_id="r1")
    runner = LeaderOnlyRunner(election=election, components=[
        Component("bad", log, fail=True), Component("good", log)])
    task = asyncio.create_task(runner.run())
    await election.campaign()
    await settle()
    assert log == ["start bad", "start good", "started good"]
    assert "failed to start" in caplog.text
    await runner.shutdown()
    await task
    assert log[3:] == ["stop good", "stop bad"]


async def test_components_get_the_terms_fence() -> None:
    log: list[str] = []
    election = MemoryLeadership(state=MemoryState(), service="s", replica_id="r1")
    component = Component("a", log)
    runner = LeaderOnlyRunner(election=election, components=[component])
    task = asyncio.create_task(runner.run())
    await election.campaign()
    await settle()
    fence = component.fences[0]
    assert fence == election.fence() and fence.valid
    election.expire()
    assert not fence.valid  # at once, before the runner has even run
    await runner.shutdown()
    await task
