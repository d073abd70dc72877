"""The bus when things break: NATS stopped or killed, a consumer process SIGKILLed.

Tests that stop or kill NATS start their own server (its JetStream store in ``tmp_path``
survives the restart); the consumer-kill test uses the session server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import nats
import pytest
from prometheus_client import CollectorRegistry

from phoenixcp.api.phoenix.v1 import common_pb2, events_pb2
from phoenixcp.errors import ResourceExhausted, Unavailable
from phoenixcp.platform.bus import EVENTS_STREAM, BusConfig, EventBus
from phoenixcp.platform.embedded import EmbeddedNats, free_port

pytestmark = pytest.mark.chaos

CONSUMER = Path(__file__).with_name("_bus_consumer.py")


def make_bus(url: str, replica: str, registry: CollectorRegistry | None = None,
             **overrides: object) -> EventBus:
    values: dict[str, object] = {"url": url, "connect_timeout": timedelta(seconds=1),
                                 "pull_wait": timedelta(milliseconds=200),
                                 "shutdown_grace": timedelta(seconds=1)}
    values.update(overrides)
    return EventBus(config=BusConfig(**values),  # type: ignore[arg-type]
                    service="cost-optimizer", replica_id=replica, registry=registry)


def leader_changed(n: int) -> events_pb2.Event:
    event = events_pb2.Event()
    event.leader_changed.service = common_pb2.SERVICE_NAME_COST_OPTIMIZER
    event.leader_changed.change = events_pb2.LEADERSHIP_CHANGE_ACQUIRED
    event.leader_changed.replica.replica_id = f"co-{n}"
    return event


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def stored(url: str, subject: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(EVENTS_STREAM, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))
    finally:
        await nc.close()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A server of this test's own, to stop, kill and restart (store in tmp_path)."""
    server = EmbeddedNats(data_dir=tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


async def test_events_published_while_nats_is_down_arrive_after_it_returns_in_order_once(
    own_nats: EmbeddedNats,
) -> None:
    publisher, consumer = make_bus(own_nats.url, "co-0"), make_bus(own_nats.url, "pm-0")
    subject = "phoenix.events.leader_changed.acme"
    received: list[str] = []

    async def handle(event: events_pb2.Event) -> None:
        received.append(event.id)

    async with publisher, consumer:
        await consumer.subscribe(durable="outage", subjects=[subject], handler=handle)
        before = await publisher.publish(leader_changed(0), tenant="acme")
        await wait_for(lambda: received == [before])

        own_nats.stop()  # the JetStream store stays in data_dir
        await wait_for(lambda: not publisher.connected and not consumer.connected)
        ids, slowest = [], 0.0
        for n in range(1, 51):
            began = time.monotonic()
            ids.append(await publisher.publish(leader_changed(n), tenant="acme"))
            slowest = max(slowest, time.monotonic() - began)
        assert publisher.buffered == 50
        assert slowest < 0.05, f"publish blocked {slowest:.3f}s while NATS was down"

        down = time.monotonic()
        own_nats.start()  # same port, same store
        await wait_for(lambda: len(received) == 51, timeout=15)
        print(f"\n50 buffered events delivered {time.monotonic() - down:.2f}s after restart")
        await asyncio.sleep(0.5)  # and nothing arrives twice
        assert received == [before, *ids]
        assert publisher.buffered == 0
        assert await stored(own_nats.url, subject) == 51


async def test_a_full_buffer_refuses_loudly_and_keeps_what_it_accepted(
    own_nats: EmbeddedNats,
) -> None:
    registry = CollectorRegistry()
    bus = make_bus(own_nats.url, "co-0", registry, publish_buffer=5)
    subject = "phoenix.events.leader_changed.full"
    async with bus:
        own_nats.kill()  # a crash, not a clean stop
        await wait_for(lambda: not bus.connected)
        accepted = [await bus.publish(leader_changed(n), tenant="full") for n in range(5)]
        refused = leader_changed(99)
        with pytest.raises(ResourceExhausted) as caught:
            await bus.publish(refused, tenant="full")
        assert "buffer is full" in str(caught.value) and caught.value.retry_after
        assert bus.buffered == 5
        assert registry.get_sample_value("phoenix_bus_publish_rejected_total",
                                         {"reason": "buffer_full"}) == 1

        own_nats.start()
        await wait_for(lambda: bus.buffered == 0)
        after = await bus.publish(leader_changed(6), tenant="full")

    nc = await nats.connect(own_nats.url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(subject, durable="check", stream=EVENTS_STREAM)
        msgs = await sub.fetch(10, timeout=1)
    finally:
        await nc.close()
    assert [events_pb2.Event.FromString(m.data).id for m in msgs] == [*accepted, after]
    assert registry.get_sample_value("phoenix_bus_buffered_events") == 0


async def stopped(pid: int, timeout: float = 5.0) -> None:
    """Wait until every thread of ``pid`` is stopped: SIGSTOP reaches the threads of a busy
    process one by one, and one still running could store a message meant to time out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = _thread_states(pid)
        if states and all(state in ("T", "t") for state in states):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop within {timeout}s")


def _thread_states(pid: int) -> list[str]:
    """The state letter of each thread of ``pid`` (/proc/PID/task/*/stat)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
    return states


async def test_a_hung_nats_blocks_publish_no_longer_than_publish_timeout(
    own_nats: EmbeddedNats,
) -> None:
    bus = make_bus(own_nats.url, "co-0", publish_timeout=timedelta(milliseconds=300))
    subject = "phoenix.events.leader_changed.hung"
    assert own_nats.pid is not None
    async with bus:
        os.kill(own_nats.pid, signal.SIGSTOP)  # the TCP connection stays up; nothing answers
        await stopped(own_nats.pid)
        try:
            began = time.monotonic()
            ids = [await bus.publish(leader_changed(0), tenant="hung")]
            first = time.monotonic() - began
            began = time.monotonic()
            ids += [await bus.publish(leader_changed(n), tenant="hung") for n in range(1, 20)]
            rest = time.monotonic() - began
            assert bus.buffered == 20
        finally:
            os.kill(own_nats.pid, signal.SIGCONT)
        await wait_for(lambda: bus.buffered == 0)
    print(f"\nfirst publish to a hung NATS returned after {first:.3f}s, 19 more in {rest:.3f}s")
    assert 0.25 <= first < 0.6  # publish_timeout, then buffered
    assert rest < 0.05  # behind a non-empty buffer nothing waits on NATS
    nc = await nats.connect(own_nats.url)
    try:
        sub = await nc.jetstream().pull_subscribe(subject, durable="check", stream=EVENTS_STREAM)
        msgs = await sub.fetch(30, timeout=1)
    finally:
        await nc.close()
    assert [events_pb2.Event.FromString(m.data).id for m in msgs] == ids


async def test_start_waits_for_a_nats_that_comes_up_late_and_gives_up_on_time(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(data_dir=tmp_path / "nats", port=free_port())
    never = make_bus(server.url, "co-0", start_timeout=timedelta(milliseconds=400))
    began = time.monotonic()
    with pytest.raises(Unavailable, match="does not answer within"):
        await never.start()
    assert time.monotonic() - began < 1.5
    await never.shutdown()

    late = make_bus(server.url, "co-1", start_timeout=timedelta(seconds=10))
    starting = asyncio.create_task(late.start())
    await asyncio.sleep(0.3)
    assert not starting.done()
    server.start()
    try:
        await asyncio.wait_for(starting, 5)
        assert late.connected
        await late.publish(leader_changed(1), tenant="late")
        assert await stored(server.url, "phoenix.events.leader_changed.late") == 1
    finally:
        await late.shutdown()
        server.stop()


async def test_a_nats_that_lost_its_store_gets_streams_and_consumers_back(
    own_nats: EmbeddedNats,
) -> None:
    publisher, consumer = make_bus(own_nats.url, "co-0"), make_bus(own_nats.url, "pm-0")
    received: list[str] = []

    async def handle(event: events_pb2.Event) -> None:
        received.append(event.id)

    async with publisher, consumer:
        await consumer.subscribe(durable="amnesia", subjects=["phoenix.events.>"],
                                 handler=handle)
        own_nats.stop()
        shutil.rmtree(own_nats.data_dir / "jetstream")  # the disk is gone
        await wait_for(lambda: not publisher.connected)
        lost_with_nats = await publisher.publish(leader_changed(1), tenant="amnesia")
        own_nats.start()
        after = await publisher.publish(leader_changed(2), tenant="amnesia")
        await wait_for(lambda: received == [lost_with_nats, after])


def spawn_consumer(url: str, durable: str, subject: str, out: Path,
                   crash_after: int = 0) -> subprocess.Popen[bytes]:
    with out.with_name("consumer.log").open("ab") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, str(CONSUMER), url, durable, subject, str(out), "0.004",
             str(crash_after)],
            stdout=subprocess.DEVNULL, stderr=log,
        )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("how", ["sigkill-from-outside", "crash-between-effect-and-ack"])
async def test_a_killed_consumer_process_resumes_and_applies_every_event_once(
    nats_server: EmbeddedNats, tmp_path: Path, how: str,
) -> None:
    tenant = f"kill-{uuid.uuid4().hex[:8]}"
    subject, durable = f"phoenix.events.leader_changed.{tenant}", f"killed-{tenant}"
    out = tmp_path / "applied.txt"
    async with make_bus(nats_server.url, "co-0") as bus:
        ids = [await bus.publish(leader_changed(n), tenant=tenant) for n in range(300)]

    crash = how == "crash-between-effect-and-ack"
    first = spawn_consumer(nats_server.url, durable, subject, out, crash_after=100 if crash else 0)
    try:
        await wait_for(lambda: len(lines(out)) >= 100 or first.poll() is not None, timeout=20)
        if crash:
            assert first.wait(timeout=10) == -signal.SIGKILL
        else:
            assert first.poll() is None, (tmp_path / "consumer.log").read_text()
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
    finally:
        first.kill()
    killed_at = len(lines(out))

    second = spawn_consumer(nats_server.url, durable, subject, out)
    try:
        await wait_for(lambda: len(set(lines(out))) >= len(ids) or second.poll() is not None,
                       timeout=20)
        await asyncio.sleep(1.5)  # past ack_wait: any stray redelivery would show up
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=10) == 0
    finally:
        second.kill()

    applied = lines(out)
    skipped = lines(out.with_name(out.name + ".skips"))
    print(f"\nkilled after {killed_at} applied; redelivered and skipped by id: {len(skipped)}")
    assert set(applied) == set(ids)
    assert len(applied) == len(ids), "an event was applied twice"
    # It resumed where the durable stopped, not from the start of the stream.
    assert len(skipped) < 70
    if crash:
        # The 100th event was applied but never acked: redelivered, and skipped by its id.
        assert applied[99] in skipped
