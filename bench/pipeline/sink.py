"""The benchmark's null backend: a remote-write receiver that counts, cheaply enough to keep up.

    .venv/bin/python bench/pipeline/sink.py --port 9201     # GET /stats -> JSON counts
    .venv/bin/python bench/pipeline/sink.py --measure DIR   # its CPU per series, offline

Phoenix's ``CountingSink`` (phoenixcp.platform.export.sink) parses each request fully and loops
over its series in Python: about 0.5 M samples per CPU-second, less than a relay forwards, so it
would become what is measured. This one reads each request in one pass in C with the pipeline's
remote-write scanner (``phoenixcp.platform.ingest._wirescan.scan``, no Python object per series),
which gives the exact sample count and one 64-bit key per ``TimeSeries``: xxh64 of its canonical
(sorted) label bytes. ``GET /stats?distinct=1`` adds ``distinct_series``, the number of different
keys since the last ``POST /reset`` (run.py resets when a relay starts, so it counts what that
relay sent, warm-up included); two label sets colliding in 64 bits is ignored (~1 in 10^9 at
200k series). Keys are collected in a buffer merged into a sorted array (:class:`DistinctKeys`):
a Python set costs 300-400 ns per key at 270k keys, this 40-60 ns.

Cost per series received (``--measure`` over the benchmark's bodies on the bench machine):
snappy decompression ~0.14 µs, the scan ~0.21-0.25 µs (a protobuf parse that only counts series
costs ~0.03 µs: the scan is what keys cost), the distinct count ~0.04-0.06 µs. ``/stats``
reports the CPU the scan and the keys took (``scan_cpu_seconds``, ``distinct_cpu_seconds``) and
the process's (``cpu_seconds``); run.py prints them as shares of the driver core while loaded.
``--no-distinct`` skips the keys. A request the scanner refuses (a label name Prometheus would
refuse, say) is still counted, by a slower upb parse, and its series are not keyed
(``unkeyed_series``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cramjam
import numpy as np
from aiohttp import web
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_scan: Callable[[bytes], tuple[Any, ...]] | None
try:  # the C extension only: its pure-Python twin would be slower than the relays
    from phoenixcp.platform.ingest import _wirescan  # type: ignore[attr-defined]

    _scan = _wirescan.scan
except ImportError:
    _scan = None


def _message_classes() -> tuple[Any, Any]:
    """(WriteRequest with TimeSeries as bytes, WriteRequest whose TimeSeries keeps only samples)."""
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="phoenix_bench_sink.proto", package="phoenix_bench_sink", syntax="proto3"
    )
    raw = proto.message_type.add(name="RawWriteRequest")
    raw.field.add(name="timeseries", number=1, type=field.TYPE_BYTES, label=field.LABEL_REPEATED)
    series = proto.message_type.add(name="SamplesOnly")
    series.field.add(name="samples", number=2, type=field.TYPE_BYTES, label=field.LABEL_REPEATED)
    series.field.add(name="histograms", number=4, type=field.TYPE_BYTES,
                     label=field.LABEL_REPEATED)
    counted = proto.message_type.add(name="CountedWriteRequest")
    counted.field.add(name="timeseries", number=1, type=field.TYPE_MESSAGE,
                      label=field.LABEL_REPEATED, type_name=".phoenix_bench_sink.SamplesOnly")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    find = pool.FindMessageTypeByName
    return (message_factory.GetMessageClass(find("phoenix_bench_sink.RawWriteRequest")),
            message_factory.GetMessageClass(find("phoenix_bench_sink.CountedWriteRequest")))


_RAW_REQUEST, _COUNTED_REQUEST = _message_classes()


class DistinctKeys:
    """An exact count of distinct uint64 keys, cheap per key: keys are appended to a buffer
    and merged into a sorted array of the keys seen when it fills (or on :meth:`count`).

    About 30 ns per key (a set of Python ints costs 300-400 ns at 270k keys: a cache miss per
    key); the price is a pause of ~20 ms per ``buffer`` keys. Not thread-safe.
    """

    def __init__(self, buffer: int = 1 << 19) -> None:
        self._seen = np.empty(0, dtype=np.uint64)
        self._pending = np.empty(buffer, dtype=np.uint64)
        self._n = 0

    def add(self, keys: np.ndarray) -> None:
        while len(keys):
            room = len(self._pending) - self._n
            self._pending[self._n:self._n + min(room, len(keys))] = keys[:room]
            self._n += min(room, len(keys))
            keys = keys[room:]
            if self._n == len(self._pending):
                self._merge()

    def count(self) -> int:
        self._merge()
        return len(self._seen)

    def clear(self) -> None:
        self._seen = np.empty(0, dtype=np.uint64)
        self._n = 0

    def _merge(self) -> None:
        if not self._n:
            return
        new = _unique_sorted(np.sort(self._pending[:self._n]))
        # Two sorted runs: numpy's stable sort (timsort for 64-bit keys) merges them in O(n).
        self._seen = _unique_sorted(np.sort(np.concatenate((self._seen, new)), kind="stable"))
        self._n = 0


def _unique_sorted(a: np.ndarray) -> np.ndarray:
    if len(a) < 2:
        return a
    keep = np.empty(len(a), dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


class Counts:
    """What the sink received. Not thread-safe: one event loop updates it."""

    def __init__(self, *, distinct: bool = True) -> None:
        self.requests = self.series = self.samples = self.bytes = self.refused = 0
        self.unkeyed_series = 0
        self.scan_cpu = self.distinct_cpu = 0.0
        self.keys = DistinctKeys() if distinct and _scan is not None else None

    def add(self, data: bytes) -> None:
        """Count one uncompressed ``WriteRequest``; ValueError if it is not one."""
        began = time.thread_time()
        try:
            if _scan is None:
                raise ValueError("no scanner")
            keys, samples, histograms, *_ = _scan(data)
        except ValueError:
            self._add_unkeyed(data)
            self.scan_cpu += time.thread_time() - began
            return
        scanned = time.thread_time()
        self.scan_cpu += scanned - began
        self.series += len(keys) // 8
        self.samples += samples + histograms
        if self.keys is not None:
            self.keys.add(np.frombuffer(keys, dtype=np.uint64))
            self.distinct_cpu += time.thread_time() - scanned

    def _add_unkeyed(self, data: bytes) -> None:
        try:
            counted = _COUNTED_REQUEST.FromString(data)
        except Exception as exc:  # upb's DecodeError; the caller answers 400
            raise ValueError(str(exc)) from None
        n = len(counted.timeseries)
        self.series += n
        self.unkeyed_series += n
        self.samples += sum(len(s.samples) + len(s.histograms) for s in counted.timeseries)

    def reset_distinct(self) -> None:
        if self.keys is not None:
            self.keys.clear()

    def distinct_series(self) -> int | None:
        """Distinct series since the last reset (None: not counted)."""
        if self.keys is None:
            return None
        began = time.thread_time()
        n = self.keys.count()
        self.distinct_cpu += time.thread_time() - began
        return n

    def as_json(self, *, distinct: bool = False) -> dict[str, float | int | None]:
        """The counts; with ``distinct``, ``distinct_series`` too (it merges the key buffer:
        a few ms, so run.py's frequent polls go without)."""
        out: dict[str, float | int | None] = {
            "requests": self.requests, "series": self.series, "samples": self.samples,
            "bytes": self.bytes, "refused": self.refused, "unkeyed_series": self.unkeyed_series,
            "cpu_seconds": time.process_time(), "scan_cpu_seconds": self.scan_cpu,
            "distinct_cpu_seconds": self.distinct_cpu}
        if distinct:
            out["distinct_series"] = self.distinct_series()
        return out


def make_app(counts: Counts) -> web.Application:
    async def write(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            counts.add(bytes(cramjam.snappy.decompress_raw(body)))
        except Exception as exc:
            counts.refused += 1
            return web.Response(status=400, text=f"cannot decode: {exc}")
        counts.requests += 1
        counts.bytes += len(body)
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counts.as_json(distinct="distinct" in request.query))

    async def reset(request: web.Request) -> web.Response:
        out = counts.as_json(distinct=True)
        counts.reset_distinct()
        return web.json_response(out)

    app = web.Application(client_max_size=256 << 20)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)  # before the catch-all write route
    app.router.add_post("/{tail:.*}", write)
    return app


async def serve(host: str, port: int, *, distinct: bool) -> None:
    runner = web.AppRunner(make_app(Counts(distinct=distinct)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"bench sink on http://{host}:{port}/api/v1/write", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def measure(directory: Path, passes: int) -> None:
    """Print the sink's CPU per series, step by step, over the ``rw-*.bin`` bodies in
    ``directory`` (bench/pipeline/workload.py), each body ``passes`` times, as a request
    goes: decompressed, then counted while its bytes are in cache."""
    bodies = [p.read_bytes() for p in sorted(directory.glob("rw-*.bin"))]
    if not bodies:
        raise SystemExit(f"no rw-*.bin in {directory}: write them with workload.py")
    counts = Counts()
    decompress = raw_parse = 0.0
    for _ in range(passes):
        for body in bodies:
            began = time.thread_time()
            data = bytes(cramjam.snappy.decompress_raw(body))
            decompressed = time.thread_time()
            len(_RAW_REQUEST.FromString(data).timeseries)
            decompress += decompressed - began
            raw_parse += time.thread_time() - decompressed
            counts.add(data)
    distinct = counts.distinct_series()
    n = counts.series
    print(f"{len(bodies)} bodies, {n // passes:,} series per pass, {passes} passes, "
          f"{distinct:,} distinct series")
    for label, seconds in (("snappy decompress", decompress),
                           ("upb parse (series count only)", raw_parse),
                           ("scan: keys and exact samples", counts.scan_cpu),
                           ("distinct: merge of sorted keys", counts.distinct_cpu)):
        print(f"  {label:32} {seconds / n * 1e9:7.0f} ns per series")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9201)
    parser.add_argument("--no-distinct", action="store_true",
                        help="do not count distinct series (no set of keys)")
    parser.add_argument("--measure", type=Path, metavar="DIR",
                        help="print the cost per series over DIR's rw-*.bin bodies and exit")
    parser.add_argument("--passes", type=int, default=3, help="with --measure")
    args = parser.parse_args()
    if _scan is None:
        print("sink: phoenixcp's _wirescan C extension is not built (make install-dev): "
              "counting with upb, no distinct series", file=sys.stderr)
    if args.measure:
        measure(args.measure, args.passes)
        return
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, distinct=not args.no_distinct))


if __name__ == "__main__":
    main()
