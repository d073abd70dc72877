"""Queue → ExportWorker → RemoteWriteExporter → a real HTTP CountingSink."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import cramjam
import pytest
from prometheus_client import CollectorRegistry

from phoenixcp.platform.export import (
    ExportMetrics,
    ExportResult,
    ExportWorker,
    ExportWorkerConfig,
    RemoteWriteConfig,
    RemoteWriteExporter,
)
from phoenixcp.platform.export.sink import CountingSink
from phoenixcp.platform.queue import DEAD_LETTER_FILE, DurableQueue, QueueConfig
from tests.integration._export_support import FAST, numbered, sample_values

pytestmark = pytest.mark.integration

@pytest.fixture
async def sink() -> AsyncIterator[CountingSink]:
    s = CountingSink(keep_bodies=True)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[DurableQueue]:
    async with DurableQueue(config=QueueConfig(directory=tmp_path, name="rw")) as q:
        yield q


def worker(queue: DurableQueue, sink: CountingSink, registry: CollectorRegistry,
           **kw: object) -> ExportWorker:
    exporter = RemoteWriteExporter(config=RemoteWriteConfig(url=sink.url, tenant_header=True))
    w = ExportWorker(queue=queue, exporter=exporter, config=ExportWorkerConfig(
        **{**FAST.__dict__, **kw}), metrics=ExportMetrics(registry))
    w.start()
    return w


async def test_every_sample_arrives_with_its_tenant(queue: DurableQueue,
                                                    sink: CountingSink) -> None:
    registry = CollectorRegistry()
    w = worker(queue, sink, registry)
    await asyncio.gather(*(queue.append(numbered(b), count=50, tenant=("a", "b")[b % 2])
                           for b in range(100)))
    assert await w.force_flush(10)
    assert sink.counts.samples == 5000 and sink.counts.series == 1000
    assert sink.counts.by_tenant == {"a": 2500, "b": 2500}
    assert sorted(sample_values(sink.bodies)) == sorted(
        sample_values([numbered(b) for b in range(100)]))
    assert sink.counts.requests < 100  # records were combined into larger requests
    assert len(queue) == 0
    assert registry.get_sample_value("phoenix_export_samples_total",
                                     {"exporter": "remote-write", "outcome": "exported"}) == 5000
    assert registry.get_sample_value("phoenix_export_end_to_end_seconds_count",
                                     {"exporter": "remote-write"}) == 100
    assert await w.shutdown(5)


async def test_an_outage_is_retried_and_nothing_is_lost(queue: DurableQueue,
                                                        sink: CountingSink) -> None:
    registry = CollectorRegistry()
    sink.status = 503
    w = worker(queue, sink, registry)
    for b in range(20):
        await queue.append(numbered(b), count=50)
    for _ in range(200):
        if sink.counts.refused >= 5:
            break
        await asyncio.sleep(0.01)
    assert sink.counts.refused >= 5 and sink.counts.samples == 0
    assert len(queue) == 20  # nothing committed while the backend is down
    assert (registry.get_sample_value("phoenix_export_samples_total",
                                      {"exporter": "remote-write", "outcome": "retried"}) or 0) > 0
    sink.status = None
    assert await w.force_flush(10)
    assert sorted(sample_values(sink.bodies)) == sorted(
        sample_values([numbered(b) for b in range(20)]))
    await w.shutdown(5)


async def test_a_refused_batch_is_dead_lettered_and_the_queue_moves_on(
        queue: DurableQueue, sink: CountingSink, caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    sink.decide = lambda body, tenant: 400 if b"poison" in body else None
    w = worker(queue, sink, registry)
    for b in range(10):
        await queue.append(numbered(b, marker="poison" if b in (3, 7) else "ok"), count=50)
    assert await w.force_flush(10)
    assert sink.counts.samples == 8 * 50  # the good records of a refused batch got through
    lines = [json.loads(line) for line in
             (queue.config.directory / DEAD_LETTER_FILE).read_text().splitlines()]
    assert len(lines) == 2
    assert all("HTTP 400" in line["reason"] and "refuses" in line["reason"] for line in lines)
    assert registry.get_sample_value("phoenix_export_samples_total",
                                     {"exporter": "remote-write",
                                      "outcome": "dead_lettered"}) == 100
    assert caplog.text.count("dead-letter file") == 1  # logged once per reason
    await w.shutdown(5)


async def test_exporter_outcomes_by_status(sink: CountingSink) -> None:
    exporter = RemoteWriteExporter(config=RemoteWriteConfig(url=sink.url))
    body = numbered(0)
    assert (await exporter.export(body, tenant="")).result is ExportResult.SUCCESS
    for status, result in ((429, ExportResult.RETRYABLE), (500, ExportResult.RETRYABLE),
                           (400, ExportResult.REJECTED), (404, ExportResult.REJECTED)):
        sink.status = status
        outcome = await exporter.export(body, tenant="")
        assert outcome.result is result and f"HTTP {status}" in outcome.reason
    await exporter.shutdown()
    dead = RemoteWriteExporter(config=RemoteWriteConfig(url="http://127.0.0.1:1/api/v1/write"))
    assert (await dead.export(body, tenant="")).result is ExportResult.RETRYABLE
    await dead.shutdown()
    assert bytes(cramjam.snappy.decompress_raw(cramjam.snappy.compress_raw(body))) == body


async def test_shutdown_during_an_outage_keeps_records_for_the_next_start(
        tmp_path: Path, sink: CountingSink) -> None:
    cfg = QueueConfig(directory=tmp_path, name="rw")
    sink.status = 503
    async with DurableQueue(config=cfg) as q:
        w = worker(q, sink, CollectorRegistry())
        for b in range(5):
            await q.append(numbered(b), count=50)
        assert not await w.shutdown(0.3)
    sink.status = None
    async with DurableQueue(config=cfg) as q:
        w = worker(q, sink, CollectorRegistry())
        assert await w.force_flush(10)
        assert sink.counts.samples == 250
        await w.shutdown(5)


async def test_compressed_records_pass_through_or_combine_once(queue: DurableQueue,
                                                               sink: CountingSink) -> None:
    """With snappy payloads, a full-size record goes out alone, as one request; smaller records
    of a tenant are combined into one request; every sample arrives unchanged."""
    registry = CollectorRegistry()
    w = worker(queue, sink, registry, snappy_payloads=True, max_samples=50)
    big = bytes(cramjam.snappy.compress_raw(numbered(0)))  # 50 samples: a full batch alone
    await queue.append(big, count=50, tenant="a")
    assert await w.force_flush(10)
    assert sink.counts.requests == 1
    assert sink.bodies[0] == numbered(0)  # the sink keeps the decompressed body
    w2_records = [bytes(cramjam.snappy.compress_raw(numbered(b))) for b in range(1, 5)]
    await w.shutdown(5)
    w = worker(queue, sink, CollectorRegistry(), snappy_payloads=True, max_samples=200)
    await asyncio.gather(*(queue.append(r, count=50, tenant="a") for r in w2_records))
    assert await w.force_flush(10)
    assert sink.counts.samples == 250
    assert sink.counts.requests == 2  # the four small records left as one request
    assert sorted(sample_values(sink.bodies)) == sorted(
        sample_values([numbered(b) for b in range(5)]))
    assert await w.shutdown(5)


@pytest.mark.timeout(20)  # a regression spins without yielding: only the alarm ends it
async def test_a_worker_whose_queue_is_closed_under_it_stops_and_keeps_what_is_unsent(
        tmp_path: Path, sink: CountingSink) -> None:
    """Shut down out of order (the queue first): the worker stops instead of spinning on a
    queue that no longer waits, and the records it had not sent are there at the next start."""
    config = QueueConfig(directory=tmp_path, name="rw")
    sink.status = 503
    async with DurableQueue(config=config) as queue:
        w = worker(queue, sink, CollectorRegistry())
        for b in range(5):
            await queue.append(numbered(b), count=50)
        for _ in range(200):
            if sink.counts.refused:
                break
            await asyncio.sleep(0.01)
        assert sink.counts.refused
    task = w._run_task
    assert task is not None
    await asyncio.wait_for(asyncio.shield(task), 5)  # returns: not spinning until shutdown
    await w.shutdown(1)
    async with DurableQueue(config=config) as reopened:
        assert len(reopened) == 5
