"""The durable queue on a temp directory: order, commit, replay, bounds, torn tails."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from phoenixcp.errors import ConfigError, InvalidArgument, ResourceExhausted, Unavailable
from phoenixcp.platform.queue import (
    DEAD_LETTER_FILE,
    DurableQueue,
    FsyncPolicy,
    QueueConfig,
    QueueMetrics,
    _syncer_py,
)
from phoenixcp.platform.queue import queue as queue_module
from tests.unit._failing_syncer import FailingSyncer

pytestmark = pytest.mark.unit

SMALL = 64 * 1024


def config(path: Path, **kw: object) -> QueueConfig:
    return QueueConfig(directory=path, name="t", **kw)  # type: ignore[arg-type]


def segment_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


@pytest.fixture(autouse=True, params=sorted({queue_module.SYNCER, "python"}))
def syncer_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the C syncer and with its pure-Python twin."""
    if request.param == "python":
        monkeypatch.setattr(queue_module, "Syncer", _syncer_py.Syncer)
    return str(request.param)


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[DurableQueue]:
    q = DurableQueue(config=config(tmp_path))
    await q.start()
    yield q
    await q.close()


async def test_records_come_out_in_order_with_their_count_and_tenant(
        queue: DurableQueue) -> None:
    await asyncio.gather(*(queue.append(f"r{i}".encode(), count=i, tenant="acme")
                           for i in range(50)))
    got = await queue.get(100)
    assert [e.payload for e in got] == [f"r{i}".encode() for i in range(50)]
    assert [e.count for e in got] == list(range(50))
    assert {e.tenant for e in got} == {"acme"}
    assert len(queue) == 50
    queue.commit(got)
    assert len(queue) == 0
    assert queue.oldest_age() == 0.0


async def test_get_waits_for_an_append_and_times_out_when_empty(queue: DurableQueue) -> None:
    assert await queue.get(10, timeout=0.05) == []
    waiter = asyncio.create_task(queue.get(10))
    await asyncio.sleep(0.01)
    await queue.append(b"x", count=1)
    assert [e.payload for e in await asyncio.wait_for(waiter, 2)] == [b"x"]


@pytest.mark.parametrize("policy", list(FsyncPolicy))
async def test_uncommitted_records_replay_after_reopen(tmp_path: Path,
                                                       policy: FsyncPolicy) -> None:
    cfg = config(tmp_path, fsync=policy, segment_bytes=SMALL, max_bytes=4 * SMALL)
    async with DurableQueue(config=cfg) as q:
        for i in range(30):
            await q.append(bytes([i]) * 5000, count=1)  # rotates segments several times
        first = await q.get(10)
        q.commit(first)
        await q.get(5)  # handed out, never committed: must come back
    async with DurableQueue(config=cfg) as q:
        assert len(q) == 20
        again = await q.get(100)
        assert [e.payload[0] for e in again] == list(range(10, 30))
        q.commit(again)
    async with DurableQueue(config=cfg) as q:
        assert len(q) == 0 and await q.get(10, timeout=0.01) == []
        assert len(segment_files(tmp_path)) <= 2  # consumed segments were deleted


async def test_out_of_order_commits_advance_over_the_committed_prefix(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    async with DurableQueue(config=cfg) as q:
        for i in range(6):
            await q.append(bytes([i]), count=1)
        entries = await q.get(6)
        q.commit(entries[3:])
        q.commit(entries[3:])  # idempotent
        assert len(q) == 6
        q.commit(entries[:1])
        assert len(q) == 5
    async with DurableQueue(config=cfg) as q:
        # 1 and 2 were never committed: replay starts there (3..5 again: at-least-once).
        assert [e.payload[0] for e in await q.get(10)] == [1, 2, 3, 4, 5]


async def test_full_queue_raises_resource_exhausted_then_accepts_after_commit(
        tmp_path: Path) -> None:
    registry = CollectorRegistry()
    cfg = config(tmp_path, segment_bytes=SMALL, max_bytes=2 * SMALL,
                 checkpoint_interval=__import__("datetime").timedelta(milliseconds=10))
    async with DurableQueue(config=cfg, metrics=QueueMetrics(registry)) as q:
        stored = 0
        with pytest.raises(ResourceExhausted) as info:
            while True:
                await q.append(b"y" * 10_000, count=1)
                stored += 1
        assert info.value.retry_after == 1.0
        assert registry.get_sample_value("phoenix_queue_appends_rejected_total",
                                         {"queue": "t"}) == 1
        assert q.size_bytes <= 2 * SMALL
        q.commit(await q.get(stored))
        for _ in range(100):
            if q.size_bytes < SMALL:
                break
            await asyncio.sleep(0.01)
        await q.append(b"y" * 10_000, count=1)
        assert registry.get_sample_value("phoenix_queue_records", {"queue": "t"}) == 1


async def test_a_record_larger_than_a_segment_is_invalid(tmp_path: Path) -> None:
    async with DurableQueue(config=config(tmp_path, segment_bytes=SMALL,
                                          max_bytes=2 * SMALL)) as q:
        with pytest.raises(InvalidArgument):
            await q.append(b"z" * SMALL, count=1)


@pytest.mark.parametrize("damage", ["torn", "crc", "header-then-zeros"])
async def test_a_torn_or_corrupt_tail_is_truncated_and_earlier_records_survive(
        tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(tmp_path)
    async with DurableQueue(config=cfg) as q:
        for i in range(5):
            await q.append(bytes([i]) * 100, count=1)
    segment = max(segment_files(tmp_path), key=lambda p: p.stat().st_size)
    size = segment.stat().st_size
    with segment.open("r+b") as f:
        if damage == "torn":
            f.truncate(size - 30)
        elif damage == "crc":
            f.seek(size - 1)
            f.write(b"\xff")
        else:  # a record whose first bytes reached the disk, in a preallocated segment
            f.seek(size)
            f.write(b"\x07" + b"\0" * 4096)
    async with DurableQueue(config=cfg) as q:
        expected = [0, 1, 2, 3, 4] if damage == "header-then-zeros" else [0, 1, 2, 3]
        assert [e.payload[0] for e in await q.get(10)] == expected
    assert "truncating" in caplog.text


async def test_a_zero_tail_is_a_clean_end_not_damage(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(tmp_path)
    async with DurableQueue(config=cfg) as q:
        for i in range(5):
            await q.append(bytes([i]) * 100, count=1)
    segment = max(segment_files(tmp_path), key=lambda p: p.stat().st_size)
    size = segment.stat().st_size
    with segment.open("ab") as f:  # what a preallocated segment holds past its records
        f.write(b"\0" * 65536)
    async with DurableQueue(config=cfg) as q:
        assert [e.payload[0] for e in await q.get(10)] == [0, 1, 2, 3, 4]
    assert "truncating" not in caplog.text
    assert segment.stat().st_size == size + 65536  # not truncated


@pytest.mark.parametrize("preallocate", [True, False])
async def test_segments_are_written_ahead_with_zeros_when_preallocating(
        tmp_path: Path, preallocate: bool) -> None:
    cfg = config(tmp_path, segment_bytes=SMALL, max_bytes=8 * SMALL,
                 preallocate=preallocate)
    record = b"r" * 1000
    async with DurableQueue(config=cfg) as q:
        for _ in range(40):  # past half of the first segment
            await q.append(record, count=1)
        for _ in range(20):
            await asyncio.sleep(0.05)
            if (tmp_path / "next-segment.tmp").exists() or not preallocate:
                break
        assert (tmp_path / "next-segment.tmp").exists() == preallocate
        for _ in range(60):  # into the second segment
            await q.append(record, count=1)
        sizes = [p.stat().st_size for p in segment_files(tmp_path)]
        assert len(sizes) == 2
        # The second segment was the prepared one: full size at once, zeros past its records.
        assert (sizes[1] == SMALL) == preallocate
    assert not (tmp_path / "next-segment.tmp").exists()  # close removes an unused one
    async with DurableQueue(config=cfg) as q:
        got = await q.get(200, timeout=0.1)
        assert len(got) == 100 and {e.payload for e in got} == {record}


async def test_dead_letter_writes_the_reason_and_commits(queue: DurableQueue) -> None:
    await queue.append(b"bad", count=7, tenant="acme")
    await queue.append(b"good", count=1)
    bad, good = await queue.get(2)
    await queue.dead_letter(bad, "HTTP 400: out of order")
    assert len(queue) == 1
    line = json.loads((queue.config.directory / DEAD_LETTER_FILE).read_text())
    assert line["reason"] == "HTTP 400: out of order" and line["count"] == 7
    assert line["payload_b64"] == "YmFk" and line["tenant"] == "acme"
    assert good.payload == b"good"


async def test_oldest_age_tracks_the_first_uncommitted_record(queue: DurableQueue) -> None:
    await queue.append(b"a", count=1)
    await asyncio.sleep(0.05)
    await queue.append(b"b", count=1)
    assert queue.oldest_age() >= 0.05
    a, _ = await queue.get(2)
    queue.commit([a])
    assert queue.oldest_age() < 0.05


def test_config_names_the_bad_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        QueueConfig(directory=tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    assert info.value.key == "max_bytes"
    with pytest.raises(ConfigError) as info:
        QueueConfig(directory=tmp_path, fsync="sometimes")  # type: ignore[arg-type]
    assert info.value.key == "fsync"


async def test_append_after_close_is_unavailable(tmp_path: Path) -> None:
    q = DurableQueue(config=config(tmp_path))
    await q.start()
    await q.close()
    await q.close()
    with pytest.raises(Exception, match="not open"):
        await q.append(b"x", count=1)
    assert os.listdir(tmp_path)


async def test_a_failed_sync_fails_the_append_and_every_later_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_module, "Syncer", FailingSyncer)
    q = DurableQueue(config=config(tmp_path))
    await q.start()
    await q.append(b"kept", count=1)
    FailingSyncer.made[-1].fail = True
    with pytest.raises(Unavailable, match="Invalid argument"):
        await q.append(b"unsure", count=1)
    with pytest.raises(Unavailable, match=r"cannot write to disk: .*Invalid argument"):
        await q.append(b"refused", count=1)
    assert [e.payload for e in await q.get(10, timeout=0.1)] == [b"kept"]
    await q.close()
