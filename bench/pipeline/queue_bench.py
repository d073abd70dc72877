"""Durable-queue throughput and append latency under each fsync policy.

    .venv/bin/python bench/pipeline/queue_bench.py [--seconds 3] [--record-bytes 60000]
        [--appenders 32] [--dir /path/on/the/data/disk]

For each policy (always with and without preallocated segments, interval, never):
``--appenders`` concurrent tasks append records of
``--record-bytes`` (a 1,000-sample remote-write request is ~50-70 KB uncompressed) while one
consumer gets and commits them, like an exporter that keeps up. Prints appends/s, MB/s, p50
and p99 append latency (the ingest-side cost of durability), the process's CPU per append
(the syncer's fsyncs included), and writes JSON to
bench/results/queue_bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from phoenixcp.platform.queue import DurableQueue, FsyncPolicy, QueueConfig


async def run_policy(policy: FsyncPolicy, preallocate: bool,
                     args: argparse.Namespace) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        queue = DurableQueue(config=QueueConfig(directory=Path(directory), name="bench",
                                                fsync=policy, max_bytes=2 << 30,
                                                preallocate=preallocate))
        await queue.start()
        record = os.urandom(args.record_bytes)
        latencies: list[float] = []
        stop = time.monotonic() + args.seconds

        async def appender() -> None:
            while time.monotonic() < stop:
                started = time.perf_counter()
                await queue.append(record, count=1000)
                latencies.append(time.perf_counter() - started)

        async def consumer() -> None:
            while time.monotonic() < stop:
                queue.commit(await queue.get(256, timeout=0.05))

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(consumer(), *(appender() for _ in range(args.appenders)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        await queue.close()
    latencies.sort()
    n = len(latencies)
    return {
        "policy": policy.value + ("" if preallocate else "-plain")
        if policy is FsyncPolicy.ALWAYS else policy.value,
        "appends_per_s": round(n / elapsed),
        "mb_per_s": round(n * args.record_bytes / elapsed / 1e6, 1),
        "samples_per_s": round(n * 1000 / elapsed),
        "p50_ms": round(statistics.median(latencies) * 1e3, 3),
        "p99_ms": round(latencies[int(n * 0.99) - 1] * 1e3, 3),
        "cpu_us_per_append": round(cpu / n * 1e6, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description="durable queue throughput per fsync policy")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--record-bytes", type=int, default=60_000)
    parser.add_argument("--appenders", type=int, default=32)
    parser.add_argument("--dir", default=None, help="where to put the queue (default: $TMPDIR)")
    args = parser.parse_args()
    variants = [(FsyncPolicy.ALWAYS, True), (FsyncPolicy.ALWAYS, False),
                (FsyncPolicy.INTERVAL, False), (FsyncPolicy.NEVER, False)]
    results = [await run_policy(policy, preallocate, args) for policy, preallocate in variants]
    for r in results:
        print(f"fsync={r['policy']:<13} {r['appends_per_s']:>6} appends/s {r['mb_per_s']:>6} MB/s"
              f" {r['samples_per_s']:>9} samples/s (1000/record)   append p50 {r['p50_ms']} ms"
              f"  p99 {r['p99_ms']} ms   CPU {r['cpu_us_per_append']} us/append")
    write_results({"record_bytes": args.record_bytes, "appenders": args.appenders,
                   "results": results})


def write_results(document: dict[str, object]) -> None:
    out = Path(__file__).resolve().parents[1] / "results" / "queue_bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
