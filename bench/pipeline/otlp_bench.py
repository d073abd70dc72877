"""Micro-benchmark: OTLP ingest in process, in data points per CPU-second.

    .venv/bin/python bench/pipeline/otlp_bench.py [--dir WORKLOAD_DIR] [--rounds 1] [--seed 1]
        [--repeat 3] [--profile]

The bodies are the pipeline benchmark's ``otlp-NNNNN.bin`` (bench/pipeline/workload.py): read
from ``--dir`` when given, else generated in this process for ``--seed`` and ``--rounds``
(201 bodies per 3 rounds; 67 per round, ~925 data points each). Their data points and samples
are counted as ``otlp_driver.py`` counts them. Then, in process CPU time
(``time.process_time()``, so other load on the machine matters less), the best of
``--repeat`` passes over all bodies of:

- ``parse``: ``ExportMetricsServiceRequest.FromString``: what OTLP/HTTP still does first (the
  gRPC receiver gets the raw bytes since ADR 0013's amendment, and does not parse them);
- ``decode_otlp``: the request bytes → batch + partial success;
- ``servicer``: ``OtlpMetricsServicer.Export`` on the request bytes (as gRPC hands them over)
  with a fake context and an ``accept`` that returns at once: decode plus the servicer's own
  per-request work (tenant, prometheus_client counters, the reply), driven by one event loop.

Prints one line per case (data points per CPU-second, µs per data point, ms per request) and a
JSON summary; ``--profile`` adds a cProfile of ``decode_otlp`` over every body (top 15 by
own time). Not a test: figures are noisy on shared machines (``--repeat`` steadies them).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "services"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (  # noqa: E402
    ExportMetricsServiceRequest,
)
from otlp_driver import counts  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from workload import DEFAULT_START_MS, build_series, otlp_bodies  # noqa: E402

from phoenixcp.core.batch import MetricBatch  # noqa: E402
from phoenixcp.platform.ingest import decode_otlp  # noqa: E402


def load_bodies(directory: Path | None, *, seed: int, rounds: int) -> list[bytes]:
    """The workload's OTLP bodies: the files of ``directory``, or generated here."""
    if directory is not None:
        files = sorted(directory.glob("otlp-*.bin"))
        if not files:
            raise SystemExit(f"no otlp-*.bin in {directory}: run workload.py without --no-otlp")
        return [f.read_bytes() for f in files]
    return otlp_bodies(build_series(seed), rounds=rounds, start_ms=DEFAULT_START_MS)


def best_seconds(fn: Callable[[Any], object], items: list[Any], repeat: int) -> float:
    """The least CPU time of ``repeat`` passes of ``fn`` over ``items``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - start)
    return best


class _Context:
    """What ``Export`` asks of a grpc.aio servicer context, answered at once."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-scope-orgid", "bench"),)

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    async def abort(self, code: object, details: str) -> None:
        raise RuntimeError(f"aborted: {code} {details}")

    async def abort_with_status(self, status: object) -> None:
        raise RuntimeError(f"aborted: {status}")


def servicer_seconds(requests: list[bytes], repeat: int) -> float:
    from metrics_pipeline.ingest_metrics import IngestMetrics
    from metrics_pipeline.ingest_otlp import OtlpMetricsServicer

    async def accept(batch: MetricBatch) -> None:
        return None

    servicer = OtlpMetricsServicer(accept=accept,
                                   metrics=IngestMetrics(CollectorRegistry()))
    context: Any = _Context()

    async def run() -> float:
        best = float("inf")
        for _ in range(repeat):
            start = time.process_time()
            for request in requests:
                await servicer.Export(request, context)
            best = min(best, time.process_time() - start)
        return best

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="a workload.py --out directory")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="passes per case; best kept")
    parser.add_argument("--profile", action="store_true", help="cProfile decode_otlp, top 15")
    args = parser.parse_args()
    repeat = max(1, args.repeat)
    bodies = load_bodies(args.dir, seed=args.seed, rounds=args.rounds)
    points = samples = 0
    for body in bodies:
        p, s = counts(body)
        points, samples = points + p, samples + s
    seconds = {
        "parse": best_seconds(ExportMetricsServiceRequest.FromString, bodies, repeat),
        "decode_otlp": best_seconds(lambda r: decode_otlp(r, tenant="bench"), bodies, repeat),
        "servicer": servicer_seconds(bodies, repeat),
    }
    print(f"{len(bodies)} bodies, {points} data points ({points / len(bodies):.0f} per "
          f"request), {samples} samples")
    for name, s in seconds.items():
        print(f"{name:12s} {points / s / 1e3:9.1f} k points per CPU-second "
              f"{s / points * 1e6:7.2f} µs per point {s / len(bodies) * 1e3:7.2f} ms per request")
    print(json.dumps({
        "bodies": len(bodies), "points": points, "samples": samples, "repeat": repeat,
        "points_per_cpu_second": {k: round(points / s) for k, s in seconds.items()},
        "us_per_point": {k: round(s / points * 1e6, 3) for k, s in seconds.items()},
    }))
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for request in bodies:
            decode_otlp(request, tenant="bench")
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
