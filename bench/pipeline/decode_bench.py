"""Micro-benchmark: decode_remote_write on a 100k-series workload, in samples per CPU-second.

    .venv/bin/python bench/pipeline/decode_bench.py [--requests 300] [--seed 7] [--repeat 1]

Builds (before timing) snappy-compressed remote-write bodies of 1,000 samples each from a
deterministic workload of ~100k series over 50 metric names (job, instance x200, pod,
namespace, method, status_code, route), then times, in process CPU time:
snappy alone, ``decompress()`` (snappy, limits and the bytes the batch keeps), the C scanner
and the pure-Python scanner, each cold (first pass over the series) and warm (same series
again, as in steady state). Prints one line per case and a JSON summary. Not a test: figures
are noisy (±40 % on shared machines); ``--repeat N`` times each case N times and keeps the
best, which steadies them (the Python scanner's cold case is timed once: a second pass is
warm).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable

import cramjam

from phoenixcp.api.prometheus import remote_pb2
from phoenixcp.platform.ingest import _wirescan_py, remote_write

SAMPLES_PER_REQUEST = 1000


def workload(seed: int, series: int = 100_000) -> list[list[tuple[str, str]]]:
    """~``series`` label sets, deterministic for a seed, labels sorted by name."""
    rng = random.Random(seed)
    metrics = [f"app_metric_{i}_total" if i % 3 == 0 else f"app_metric_{i}" for i in range(50)]
    routes = [f"/api/v1/resource{i}" for i in range(20)]
    out = []
    for i in range(series):
        labels = {
            "__name__": metrics[i % 50],
            "instance": f"10.0.{(i // 50) % 200 // 256}.{(i // 50) % 200}:9100",
            "job": f"service-{(i // 50) % 200 % 17}",
            "method": rng.choice(["GET", "POST", "PUT", "DELETE"]),
            "namespace": f"ns-{(i // 50) % 10}",
            "pod": f"pod-{(i // 50) % 200}-{rng.randrange(1 << 20):05x}",
            "route": rng.choice(routes),
            "status_code": rng.choice(["200", "201", "404", "500"]),
        }
        out.append(sorted(labels.items()))
    return out


def bodies(sets: list[list[tuple[str, str]]], count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed + 1)
    ts = 1_700_000_000_000
    out = []
    for r in range(count):
        req = remote_pb2.WriteRequest()
        start = (r * SAMPLES_PER_REQUEST) % len(sets)
        for j in range(SAMPLES_PER_REQUEST):
            series = req.timeseries.add()
            for name, value in sets[(start + j) % len(sets)]:
                series.labels.add(name=name, value=value)
            series.samples.add(value=rng.random() * 1000, timestamp=ts + r * 15_000)
        out.append(bytes(cramjam.snappy.compress_raw(req.SerializeToString())))
    return out


def rate(fn: Callable[[bytes], object], items: list[bytes], repeat: int = 1) -> float:
    """Samples per CPU-second of ``fn`` over ``items``: the best of ``repeat`` passes."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - start)
    return len(items) * SAMPLES_PER_REQUEST / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1, help="passes per case; best kept")
    args = parser.parse_args()
    n = max(1, args.repeat)
    sets = workload(args.seed)
    compressed = bodies(sets, args.requests, args.seed)
    raw = [bytes(cramjam.snappy.decompress_raw(b)) for b in compressed]
    results = {
        "snappy_decompress": rate(lambda b: cramjam.snappy.decompress_raw(b), compressed, n),
        "decompress": rate(lambda b: remote_write.decompress(
            b, content_encoding=None, max_bytes=remote_write.DEFAULT_MAX_BYTES), compressed, n),
        "upb_parse": rate(remote_pb2.WriteRequest.FromString, raw, n),
    }
    scanners: dict[str, remote_write.Scanner] = {"python": _wirescan_py.scan}
    if remote_write.SCANNER == "c":
        scanners["c"] = remote_write._scan
    for name, scanner in scanners.items():
        if name == "python":
            _wirescan_py._validated.clear()
        for phase in ("cold", "warm"):
            results[f"validate_{name}_{phase}"] = rate(
                lambda b, s=scanner: remote_write.validate_write_request(b, scanner=s), raw,
                1 if (name, phase) == ("python", "cold") else n,
            )
    for phase in ("cold", "warm"):  # the whole decode, with whichever scanner is built
        _wirescan_py._validated.clear()
        results[f"decode_remote_write_{remote_write.SCANNER}_{phase}"] = rate(
            lambda b: remote_write.decode_remote_write(b, tenant="bench"), compressed,
            1 if (remote_write.SCANNER, phase) == ("python", "cold") else n,
        )
    for name, value in results.items():
        print(f"{name:34s} {value / 1e6:7.2f} M samples per CPU-second")
    print(json.dumps({"requests": args.requests, "seed": args.seed, "repeat": n,
                      "samples_per_cpu_second": {k: round(v) for k, v in results.items()}}))


if __name__ == "__main__":
    main()
