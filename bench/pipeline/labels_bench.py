"""Micro-benchmark: the labels of new series, ``MetricBatch.label_sets`` against the old path.

    .venv/bin/python bench/pipeline/labels_bench.py [--requests 40] [--seed 7]

The policy engine decodes the label set of every series it has not seen before (``_learn``).
This builds (before timing) remote-write requests of 1,000 series with 9 labels each
(``__name__``, instance, job, method, namespace, pod, route, status_code and a ``user_id``
seen nowhere else, so every series is new, as in a cardinality bomb), and times per request:

* ``c``: ``batch.label_sets(index)`` with the C scanner's ``labels``;
* ``python``: the same with the pure-Python twin (``_wirescan_py.labels``);
* ``old``: what ``_learn`` did before: ``batch.subset(index).columns()`` (upb and a Python
  loop, ``decode_columns``), then each label set sorted and its pairs interned in a dict.

each for all 1,000 series of a request and for 100 of them (a 10 % bomb: the fixed cost per
call shows), in wall time per call (one thread, nothing else running), as the median and the
minimum over the requests, in µs per series. Caches start empty for each case; the first
request is a warm-up. Then, with tracemalloc, the memory of 100,000 distinct label sets held
in a dict ``{series key: label set}`` (as the engine's catalog holds them), built by each
path: traced bytes after, minus before, including each path's caches (the C labels cache,
``decode_columns``' label set table, the old path's pair dict). Not a test: figures are
noisy (±40 % on shared machines).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
import statistics
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from phoenixcp.core.batch import LabelDecoder, LabelSet, MetricBatch
from phoenixcp.platform.ingest import _wirescan_py, columns, remote_write
from phoenixcp.platform.ingest.remote_write import decode_remote_write

SERIES_PER_REQUEST = 1000
BOMB_SHARE = 100  # series of a request that are new in the 10 % case


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def label_sets(seed: int, count: int, first_user: int) -> list[list[tuple[str, str]]]:
    """``count`` label sets of 9 labels, sorted by name, each with a new ``user_id``."""
    rng = random.Random(seed * 1_000_003 + first_user)
    metrics = [f"http_requests_{i}_total" for i in range(20)]
    routes = [f"/api/v1/resource{i}" for i in range(20)]
    out = []
    for i in range(count):
        instance = rng.randrange(200)
        labels = {
            "__name__": rng.choice(metrics),
            "instance": f"10.0.{instance // 100}.{instance % 100}:9100",
            "job": f"service-{instance % 17}",
            "method": rng.choice(["GET", "POST", "PUT", "DELETE"]),
            "namespace": f"ns-{instance % 10}",
            "pod": f"pod-{instance}-{instance * 7919 % 65536:04x}",
            "route": rng.choice(routes),
            "status_code": rng.choice(["200", "201", "404", "500"]),
            "user_id": f"u{first_user + i:09d}",
        }
        out.append(sorted(labels.items()))
    return out


def request(sets: list[list[tuple[str, str]]], timestamp: int) -> bytes:
    """A WriteRequest with one sample per label set, encoded as Prometheus does."""
    sample = _len_field(2, b"\x09" + struct.pack("<d", 1.5) + b"\x10" + _varint(timestamp))
    return b"".join(
        _len_field(1, b"".join(_len_field(1, _len_field(1, k.encode()) + _len_field(2, v.encode()))
                               for k, v in labels) + sample)
        for labels in sets
    )


def batches(seed: int, count: int, first_user: int) -> list[MetricBatch]:
    out = []
    for r in range(count):
        data = request(label_sets(seed, SERIES_PER_REQUEST,
                                  first_user + r * SERIES_PER_REQUEST), 1_700_000_000_000)
        out.append(decode_remote_write(data, tenant="bench", content_encoding="identity"))
    return out


Learn = Callable[[MetricBatch, npt.NDArray[np.intp]], list[LabelSet]]


@dataclass
class Case:
    """One way to get the label sets of new series; ``start()`` empties its caches."""

    labeler: LabelDecoder | None
    start: Callable[[], Learn]

    def prepare(self, items: list[MetricBatch]) -> list[MetricBatch]:
        return [dataclasses.replace(b, labeler=self.labeler) for b in items]


def _label_sets(batch: MetricBatch, index: npt.NDArray[np.intp]) -> list[LabelSet]:
    return batch.label_sets(index)


def _old_start() -> Learn:
    """``_learn`` before ``label_sets``: decode the subset's columns, sort, intern pairs."""
    columns._interned.clear()
    intern: dict[tuple[str, str], tuple[str, str]] = {}

    def learn(batch: MetricBatch, index: npt.NDArray[np.intp]) -> list[LabelSet]:
        cols = batch.subset(index).columns()
        out = []
        for labels in cols.label_sets:
            pairs = []
            for pair in sorted(labels):
                pairs.append(intern.setdefault(pair, pair))
            out.append(tuple(pairs))
        return out

    return learn


def cases() -> dict[str, Case]:
    def fresh(clear: Callable[[], None]) -> Callable[[], Learn]:
        def start() -> Learn:
            clear()
            return _label_sets
        return start

    out: dict[str, Case] = {}
    if remote_write.SCANNER == "c":
        from phoenixcp.platform.ingest import _wirescan  # type: ignore[attr-defined]

        out["c"] = Case(_wirescan.labels, fresh(_wirescan.label_cache_clear))
    out["python"] = Case(_wirescan_py.labels, fresh(_wirescan_py.label_cache_clear))
    out["old"] = Case(None, _old_start)
    return out


def time_case(case: Case, items: list[MetricBatch], share: int,
              seed: int) -> tuple[float, float]:
    """(median, min) µs per series over the requests after the first (a warm-up)."""
    rng = np.random.default_rng(seed)
    everything = np.arange(SERIES_PER_REQUEST, dtype=np.intp)
    indexes = [everything if share == SERIES_PER_REQUEST
               else np.sort(rng.choice(SERIES_PER_REQUEST, share, replace=False)).astype(np.intp)
               for _ in items]
    prepared = case.prepare(items)
    learn = case.start()
    per_series = []
    gc.collect()
    for n, (batch, index) in enumerate(zip(prepared, indexes, strict=True)):
        begin = time.perf_counter_ns()
        learn(batch, index)
        elapsed = time.perf_counter_ns() - begin
        if n:
            per_series.append(elapsed / 1000 / len(index))
    return statistics.median(per_series), min(per_series)


def memory(case: Case, items: list[MetricBatch]) -> tuple[int, int, int]:
    """(traced bytes, series, bytes of the dict itself) for the distinct label sets of
    ``items`` held in a dict by series key, the case's caches included."""
    prepared = case.prepare(items)
    keys = [b.series_keys.tolist() for b in prepared]  # the ints exist before, as in _learn
    index = np.arange(SERIES_PER_REQUEST, dtype=np.intp)
    learn = case.start()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    catalog: dict[int, LabelSet] = {}
    for batch, batch_keys in zip(prepared, keys, strict=True):
        for key, labels in zip(batch_keys, learn(batch, index), strict=True):
            catalog[key] = labels
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used, len(catalog), sys.getsizeof(catalog)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--memory-series", type=int, default=100_000)
    args = parser.parse_args()
    items = batches(args.seed, args.requests, first_user=0)
    timing: dict[str, dict[str, float]] = {}
    for share in (SERIES_PER_REQUEST, BOMB_SHARE):
        for name, case in cases().items():
            med, low = time_case(case, items, share, args.seed)
            timing[f"{name}_{share}_of_{SERIES_PER_REQUEST}"] = {"median": round(med, 3),
                                                                 "min": round(low, 3)}
            print(f"{name:7s} {share:5d} new of {SERIES_PER_REQUEST}: {med:8.3f} µs per series "
                  f"(median; min {low:.3f})")
    mem: dict[str, dict[str, float]] = {}
    held = batches(args.seed, args.memory_series // SERIES_PER_REQUEST, first_user=10**8)
    for name, case in cases().items():
        used, count, table = memory(case, held)
        mem[name] = {"mib": round(used / 2**20, 1), "bytes_per_series": round(used / count),
                     "dict_mib": round(table / 2**20, 1)}
        print(f"{name:7s} {count} distinct label sets in a dict: {used / 2**20:6.1f} MiB "
              f"({used / count:.0f} B per series, caches and the dict's own "
              f"{table / 2**20:.1f} MiB included)")
    print(json.dumps({"requests": args.requests, "seed": args.seed,
                      "series_per_request": SERIES_PER_REQUEST, "labels_per_series": 9,
                      "us_per_series": timing, "memory": mem}))


if __name__ == "__main__":
    main()
