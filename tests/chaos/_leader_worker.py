"""A replica process for tests/chaos/test_fencing.py; the test SIGSTOPs, SIGKILLs and SIGTERMs it.

    python _leader_worker.py ENDPOINT PREFIX NAME LOG_FILE

It runs a LeaderElection (TTL 3 s) and a LeaderOnlyRunner with one leader-only component
that, every 20 ms, makes a fenced write to ``<PREFIX>chaos/counter``. The write deliberately
carries the fence *without* its local check, so after a pause it is etcd that must refuse it.
Every event is one line appended to LOG_FILE (one ``write`` call on an O_APPEND descriptor, so
lines from several processes never interleave):

    <wall time> <name> <pid> start <lease> <create_revision>
    <wall time> <name> <pid> write <lease> <revision>     (time taken *before* sending)
    <wall time> <name> <pid> write-refused <lease>
    <wall time> <name> <pid> probe <lease> <revision> | probe-refused <lease>
    <wall time> <name> <pid> stop
    <wall time> <name> <pid> resumed <is_leader>
    <wall time> <name> <pid> ready | leading | not-leading | exit

On SIGCONT it makes one ``probe`` write with its last term's fence, as a process resumed
from a pause would before noticing it lost.
SIGTERM is a clean stop: leader work stops, then the election resigns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time

from phoenixcp.api.phoenix.v1 import state_pb2
from phoenixcp.errors import LeadershipLost, PhoenixError
from phoenixcp.platform.config import EtcdConfig
from phoenixcp.platform.coord import (
    EtcdConnection,
    Fence,
    LeaderElection,
    LeaderOnlyRunner,
    StateStore,
)


class Log:
    def __init__(self, path: str, name: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._prefix = f"{name} {os.getpid()}"

    def __call__(self, what: str, *fields: object, at: float | None = None) -> None:
        stamp = time.time() if at is None else at
        line = " ".join([f"{stamp:.6f}", self._prefix, what, *map(str, fields)]) + "\n"
        os.write(self._fd, line.encode())


class CounterWriter:
    """The leader-only work: fenced writes, stopped at a write boundary."""

    def __init__(self, store: StateStore, log: Log) -> None:
        self._store, self._log = store, log
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.last_fence: Fence | None = None

    async def start(self, fence: Fence) -> None:
        self._log("start", fence.lease_id, fence.create_revision)
        self.last_fence = fence
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._work(fence))

    async def _write(self, fence: Fence, n: int, what: str) -> bool:
        raw = Fence(fence.leader_key, fence.lease_id, fence.create_revision)  # etcd decides
        before = time.time()
        try:
            revision = await self._store.put_fenced(
                "chaos/counter", state_pb2.FeatureFlag(name=f"{os.getpid()}-{n}"), raw)
        except LeadershipLost:
            self._log(f"{what}-refused", fence.lease_id)
            return False
        except PhoenixError:
            return True
        self._log(what, fence.lease_id, revision, at=before)
        return True

    async def _work(self, fence: Fence) -> None:
        n = 0
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.02)
            if self._stopping.is_set() or not await self._write(fence, n := n + 1, "write"):
                return

    async def probe(self) -> None:
        """One write with the last term's fence, as a process just resumed would attempt."""
        if self.last_fence is not None:
            await self._write(self.last_fence, 0, "probe")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._stopping.set()
            await task  # a write in flight finishes (and is logged) first
            self._log("stop")


async def main(endpoint: str, prefix: str, name: str, path: str) -> None:
    log = Log(path, name)
    conn = await EtcdConnection.open(EtcdConfig(endpoints=(endpoint,)))
    election = LeaderElection(conn=conn, service="cost-optimizer", replica_id=name,
                              address=f"{name}:7000", prefix=prefix)
    writer = CounterWriter(StateStore(conn, prefix=prefix), log)
    runner = LeaderOnlyRunner(election=election, components=[writer])
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    probes: set[asyncio.Task[None]] = set()

    def resumed() -> None:
        log("resumed", election.is_leader)
        task = asyncio.create_task(writer.probe())
        probes.add(task)
        task.add_done_callback(probes.discard)

    loop.add_signal_handler(signal.SIGCONT, resumed)

    async def watch_leadership() -> None:
        leading = False
        async for change in election.subscribe():
            if change.is_leader != leading:
                leading = change.is_leader
                log("leading" if leading else "not-leading")

    tasks = [asyncio.create_task(election.run()), asyncio.create_task(runner.run()),
             asyncio.create_task(watch_leadership())]
    log("ready")
    await stop.wait()
    await runner.shutdown()
    await election.shutdown()
    await asyncio.gather(*tasks[:2])
    tasks[2].cancel()
    await conn.close()
    log("exit")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
