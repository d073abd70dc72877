"""OTLP/gRPC load driver: pre-encoded ``ExportMetricsServiceRequest`` bodies, N calls in flight.

    taskset -c 1 .venv/bin/python bench/pipeline/otlp_driver.py --target 127.0.0.1:4317 \\
        --dir WORKLOAD_DIR --count 201 --duration 20 [--concurrency 16] [--channels 2] \\
        [--rate REQ_PER_S] [--sink-url http://127.0.0.1:PORT]

The files are ``otlp-NNNNN.bin`` (bench/pipeline/workload.py). Before the clock starts every
body is read and parsed once to count its data points and the Prometheus samples they become
(a Gauge or Sum point is one sample; a Histogram point is one ``_bucket`` per bucket, ``_sum``
and ``_count``; a Summary point one per quantile, ``_sum`` and ``_count``). The timed part sends
the raw bytes (identity request serializer: nothing is encoded while timing) with grpc.aio:
``--concurrency`` workers spread over ``--channels`` channels (each its own HTTP/2 connection),
each with one unary ``MetricsService/Export`` call in flight, bodies round-robin from a
per-worker offset. Workers start no call after ``--duration`` s; calls in flight then finish.

Unpaced by default (closed loop: as fast as the server answers). ``--rate R`` paces the whole
driver at R requests/s: worker i sends its k-th call at t0 + (k x concurrency + i) / R, or at
once if it is behind. Latency is timed from the actual send (``latency_us``) and, when paced,
also from the scheduled send (``scheduled_latency_us``), which does not hide a stall behind
the calls it delayed (coordinated omission).

Points accepted = the points of each OK answer minus its ``partial_success.rejected_data_points``
(samples accepted scale by the same share). With ``--sink-url`` the bench sink's sample count
is read when the clock starts and when the load ends. Prints one line ``OTLP_JSON {...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def counts(body: bytes) -> tuple[int, int]:
    """(data points, Prometheus samples) of one encoded request."""
    request = ExportMetricsServiceRequest.FromString(body)
    points = samples = 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                for p in getattr(metric, kind).data_points:
                    points += 1
                    if kind == "histogram":
                        samples += max(1, len(p.bucket_counts)) + p.HasField("sum") + 1
                    elif kind == "summary":
                        samples += len(p.quantile_values) + 2
                    else:
                        samples += 1  # gauge, sum (exponential histograms are refused)
    return points, samples


def sink_samples(url: str | None) -> int | None:
    if url is None:
        return None
    with _HTTP.open(f"{url}/stats", timeout=5) as response:
        return int(json.loads(response.read())["samples"])


def percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    return {"min": ordered[0], "mean": round(sum(ordered) / len(ordered), 1),
            "max": ordered[-1], "p50": at(50), "p90": at(90), "p99": at(99), "p999": at(99.9)}


class Stats:
    def __init__(self) -> None:
        self.ok = self.points_sent = self.points_accepted = self.points_rejected = 0
        self.samples_accepted = 0.0
        self.errors: dict[str, int] = {}
        self.latency_us: list[int] = []
        self.scheduled_latency_us: list[int] = []


async def worker(index: int, call: Any, bodies: list[tuple[bytes, int, int]], args: Any,
                 t0: float, deadline: float, stats: Stats) -> None:
    position = index * 37 % len(bodies)
    k = 0
    while True:
        scheduled = t0 + (k * args.concurrency + index) / args.rate if args.rate else None
        if scheduled is not None:
            if scheduled >= deadline:
                return
            if scheduled > time.perf_counter():
                await asyncio.sleep(scheduled - time.perf_counter())
        sent = time.perf_counter()
        if sent >= deadline:
            return
        body, points, samples = bodies[position]
        position = (position + 1) % len(bodies)
        k += 1
        try:
            reply: ExportMetricsServiceResponse = await call(body, timeout=args.timeout)
        except grpc.aio.AioRpcError as exc:
            name = exc.code().name
            stats.errors[name] = stats.errors.get(name, 0) + 1
            continue
        answered = time.perf_counter()
        stats.latency_us.append(round((answered - sent) * 1e6))
        if scheduled is not None:
            stats.scheduled_latency_us.append(round((answered - scheduled) * 1e6))
        rejected = min(points, reply.partial_success.rejected_data_points)
        stats.ok += 1
        stats.points_sent += points
        stats.points_accepted += points - rejected
        stats.points_rejected += rejected
        stats.samples_accepted += samples * (points - rejected) / points if points else 0


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    bodies = []
    for i in range(args.count):
        body = (args.dir / f"otlp-{i:05d}.bin").read_bytes()
        bodies.append((body, *counts(body)))
    options = [("grpc.max_send_message_length", 64 << 20),
               ("grpc.max_receive_message_length", 64 << 20),
               ("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
    channels = [grpc.aio.insecure_channel(args.target, options=options)
                for _ in range(args.channels)]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 15)
        calls: list[Any] = [
            channel.unary_unary(EXPORT, request_serializer=None,  # the bytes as they are
                                response_deserializer=ExportMetricsServiceResponse.FromString)
            for channel in channels]
        stats = Stats()
        sink0 = sink_samples(args.sink_url)
        t0 = time.perf_counter()
        deadline = t0 + args.duration
        await asyncio.gather(*(worker(i, calls[i % len(calls)], bodies, args, t0, deadline, stats)
                               for i in range(args.concurrency)))
        elapsed = time.perf_counter() - t0
        sink1 = sink_samples(args.sink_url)
    finally:
        for channel in channels:
            await channel.close()
    return {
        "requests_ok": stats.ok, "errors": stats.errors, "duration_s": elapsed,
        "points_sent": stats.points_sent, "points_accepted": stats.points_accepted,
        "points_rejected": stats.points_rejected,
        "samples_accepted": round(stats.samples_accepted),
        "points_per_request": sum(b[1] for b in bodies) / len(bodies),
        "samples_per_point": sum(b[2] for b in bodies) / max(1, sum(b[1] for b in bodies)),
        "sink_samples_delta": None if sink0 is None or sink1 is None else sink1 - sink0,
        "latency_us": percentiles(stats.latency_us),
        "scheduled_latency_us": percentiles(stats.scheduled_latency_us),
        "rate": args.rate, "concurrency": args.concurrency, "channels": args.channels,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", required=True, help="host:port of the OTLP/gRPC receiver")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--rate", type=float, default=None, help="requests/s; default unpaced")
    parser.add_argument("--timeout", type=float, default=10.0, help="per call, seconds")
    parser.add_argument("--sink-url", default=None)
    args = parser.parse_args()
    if args.count < 1 or args.concurrency < 1 or args.channels < 1:
        raise SystemExit("--count, --concurrency and --channels must be at least 1")
    summary = asyncio.run(drive(args))
    sys.stdout.write("OTLP_JSON " + json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
