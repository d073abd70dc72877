"""Window close and window report alone, on the bench workload: CPU per 10 s window.

    .venv/bin/python bench/pipeline/window_bench.py [--scenario plain|cap] [--windows 7]
                                                    [--dump FILE] [--gaps N]

Writes the workload of ``run.py``'s scenario (bench/pipeline/workload.py: 101k series over 50
metrics; cap adds the 10% ``user_id`` bomb and the 120k cap policy of policies/cap.yaml),
cuts its bodies into ``--windows`` windows of about one round each (every series about once
per window, as an agent scraping every 10 s sends them; in cap the bomb's series are new in
every window and window edges move a little, so every metric's series change), and per
window feeds the bodies
through ``decode_remote_write`` and a :class:`PolicyEngine` (untimed), then times, in CPU
milliseconds of this process:

* ``close_window``: :meth:`PolicyEngine.close_window` (the window's snapshots);
* ``build_reports``: :func:`build_reports` of every snapshot (the parts as messages), with a
  :class:`ReportCache` kept from window to window as the reporter keeps one;
* ``encode_reports``: what :class:`WindowReporter` does before publishing: the same parts,
  serialised (:func:`encode_reports`, with its own cache).

The first window (every series new) is printed apart; the figures are the medians of the
others. ``close_window`` is split in two: ``take`` runs on the pipeline's event loop
(:meth:`PolicyEngine.window_jobs`), ``build`` on a worker thread that parks at its
checkpoints while the loop has work (ADR 0015).

Each window also prints the longest stretches of the worker's work (build and encode)
between two :func:`~phoenixcp.core.checkpoints.checkpoint` calls: how long the event loop
can wait for the GIL while a window is built. ``--gaps N`` lists the N longest, with where
they started and ended. ``--dump FILE`` writes the last window's report parts (JSON,
sketches base64) to compare the output of two versions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import json_format

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_bench import BenchSource, scenario_policies  # noqa: E402
from workload import write_workload  # noqa: E402

from phoenixcp.api.phoenix.v1 import telemetry_pb2  # noqa: E402
from phoenixcp.core.checkpoints import checkpoints_call  # noqa: E402
from phoenixcp.core.policy.engine import PolicyEngine  # noqa: E402
from phoenixcp.platform.ingest import decode_remote_write  # noqa: E402
from phoenixcp.platform.telemetry import DEFAULT_MAX_BYTES  # noqa: E402
from phoenixcp.platform.telemetry.window_report import (  # noqa: E402
    ReportCache,
    build_reports,
    encode_reports,
)

WINDOW_MS = 10_000
START_MS = 1_767_225_600_000


class _Clock:
    def __init__(self) -> None:
        self.now_ms = START_MS

    def __call__(self) -> int:
        return self.now_ms


def _bodies(scenario: str, windows: int) -> list[list[bytes]]:
    """The bodies of ``windows`` rounds, one list per window."""
    rounds = windows if scenario == "cap" else 2  # plain rounds differ only in values
    with tempfile.TemporaryDirectory() as tmp:
        write_workload(Path(tmp), rounds=rounds, otlp=False,
                       bomb_share=0.1 if scenario == "cap" else 0.0)
        bodies = [p.read_bytes() for p in sorted(Path(tmp).glob("rw-*.bin"))]
    per = len(bodies) // rounds
    chunks = [bodies[i * per:(i + 1) * per] for i in range(rounds)]
    return [chunks[w % rounds] for w in range(windows)]


def _dump(path: Path, parts: list[telemetry_pb2.WindowReport]) -> None:
    docs = [json_format.MessageToDict(p, preserving_proto_field_name=True) for p in parts]
    path.write_text(json.dumps(docs, indent=1, sort_keys=True))


class _Gaps:
    """Wall time between consecutive checkpoints (and from the start and to the end of each
    recorded block), with the places they were called from."""

    def __init__(self) -> None:
        self.checkpoints = 0
        self._stretches: list[tuple[float, str]] = []
        self._last = 0.0
        self._where = "start"

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        self._last, self._where = time.perf_counter(), "start of block"
        with checkpoints_call(self._hit):
            yield
        self._note("end of block")

    def _hit(self) -> None:
        self.checkpoints += 1
        caller = sys._getframe(2)
        self._note(f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}")

    def _note(self, where: str) -> None:
        now = time.perf_counter()
        self._stretches.append(((now - self._last) * 1e3, f"{self._where} -> {where}"))
        self._last, self._where = time.perf_counter(), where

    def longest_ms(self) -> float:
        return max(ms for ms, _ in self._stretches)

    def top(self, n: int) -> list[tuple[float, str]]:
        return sorted(self._stretches, reverse=True)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["plain", "cap"], default="plain")
    parser.add_argument("--windows", type=int, default=7)
    parser.add_argument("--dump", type=Path)
    parser.add_argument("--gaps", type=int, default=0,
                        help="list the N longest stretches between checkpoints, with places")
    args = parser.parse_args()
    if args.windows < 2:
        parser.error("--windows must be at least 2 (the first one is cold)")
    windows = _bodies(args.scenario, args.windows)
    clock = _Clock()
    engine = PolicyEngine(replica_id="bench", clock_ms=clock)
    engine.apply(BenchSource(scenario_policies(args.scenario)))  # type: ignore[arg-type]
    message_cache, bytes_cache = ReportCache(), ReportCache()
    rows: list[tuple[int, int, int, float, float, float, float, float, int]] = []
    parts: list[telemetry_pb2.WindowReport] = []
    for bodies in windows:
        samples = 0
        for i, body in enumerate(bodies):
            clock.now_ms += WINDOW_MS // len(bodies) if i else 0
            batch = decode_remote_write(body, tenant="default")
            engine.process(batch)
            samples += batch.sample_count
        clock.now_ms = START_MS + (len(rows) + 1) * WINDOW_MS
        start = time.process_time()
        jobs = engine.window_jobs()
        taken = time.process_time()
        gaps = _Gaps()
        with gaps.recording():
            snapshots = [job() for job in jobs]
        closed = time.process_time()
        parts = [p for s in snapshots
                 for p in build_reports(s, max_bytes=DEFAULT_MAX_BYTES, cache=message_cache)]
        built = time.process_time()
        with gaps.recording():
            encoded = [b for s in snapshots
                       for b in encode_reports(s, max_bytes=DEFAULT_MAX_BYTES,
                                               cache=bytes_cache)]
        done = time.process_time()
        series = sum(len(m.all_keys) for s in snapshots for m in s.metrics)
        rows.append((series, samples, sum(map(len, encoded)), (taken - start) * 1e3,
                     (closed - taken) * 1e3, (built - closed) * 1e3, (done - built) * 1e3,
                     gaps.longest_ms(), gaps.checkpoints))
        if args.gaps:
            print(f"window {len(rows)}: the {args.gaps} longest stretches between checkpoints")
            for ms, where in gaps.top(args.gaps):
                print(f"  {ms:6.2f} ms  {where}")
    print(f"scenario {args.scenario}: {len(rows)} windows, "
          f"{rows[-1][0]:,} series and {rows[-1][1]:,} samples in the last, "
          f"{len(parts)} report part(s) of {rows[-1][2]:,} bytes")
    print("  CPU ms per window   take (loop)  build (worker)  build_reports  "
          "encode_reports (worker)  longest stretch ms  checkpoints")
    for w, row in enumerate(rows, 1):
        label = "first (cold)" if w == 1 else f"  window {w}"
        print(f"  {label:<18}{row[3]:12.1f}  {row[4]:14.1f}  {row[5]:13.1f}  {row[6]:23.1f}"
              f"  {row[7]:18.2f}  {row[8]:11,d}")
    rest = rows[1:]
    take_ms, close_ms, build_ms, encode_ms, gap_ms = (
        statistics.median(r[i] for r in rest) for i in (3, 4, 5, 6, 7))
    print(f"  {'median':<18}{take_ms:12.1f}  {close_ms:14.1f}  {build_ms:13.1f}  "
          f"{encode_ms:23.1f}  {gap_ms:18.2f}")
    print(f"  take + build {take_ms + close_ms + build_ms:.1f} ms; take + build + encode (the "
          f"pipeline's work per window) {take_ms + close_ms + encode_ms:.1f} ms")
    if args.dump:
        _dump(args.dump, parts)


if __name__ == "__main__":
    main()
