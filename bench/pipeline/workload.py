"""The pipeline benchmark's workload: ~100k active series as pre-encoded request bodies.

    .venv/bin/python bench/pipeline/workload.py --out DIR [--seed 1] [--rounds 3]

Deterministic for a seed (and ``--start-ms``): 200 instances (10 jobs, 5 namespaces, one pod
each) x 505 series = 101,000 series over 50 metric names: 20 counters (11 method/status_code/
route combinations per instance), 15 gauges (5 routes) and 5 histograms (3 method/route
combinations x 12 ``le`` buckets, ``_sum``, ``_count``). One *round* is one sample of every series,
15 s after the previous round, in a fixed shuffled order (as a Prometheus agent's shards mix
series); the rounds are cut into requests of exactly 1,000 samples (101 per round).

Files written to ``--out``:

- ``rw-NNNNN.bin``: snappy-compressed (block format) remote-write 1.0 ``WriteRequest`` bodies,
  ready to POST to ``/api/v1/write``;
- ``otlp-NNNNN.bin``: the same series, as uncompressed OTLP ``ExportMetricsServiceRequest``
  bodies, one per 3 instances and round (930 data points = 1,515 Prometheus samples), named
  per the OTel/Prometheus compatibility spec (counters without ``_total``, one Histogram point
  per ``le`` set; ``service.name``/``service.instance.id`` as resource attributes, pod and
  namespace as point attributes so the converted series are the same ones);
- ``manifest.json``: counts, seed, start time, and the samples per request.

``--bomb-share 0.1`` adds a ``user_id`` cardinality bomb (bench/pipeline scenarios ``cap`` and
``drop-label``): 10% of all samples are of one more counter, ``http_user_requests_total``
(labels job, instance, namespace and pod of one of the 200 instances, route of 4, and
``user_id``), and every one of them is a new series: a ``user_id`` never repeats within the
workload (a bijection of a counter, offset by the seed). Per round that is
``base x share / (1 - share)`` samples, rounded so the rounds fill whole 1,000-sample bodies
(11,200 for 10% and 15 rounds), shuffled among the round's 101,000
(one more seeded shuffle per round). Replayed round-robin, the bomb brings ``rounds x 11,200``
series per pass over the bodies; without ``user_id`` they fall into 800 groups (instance x
route). Without ``--bomb-share`` the bodies are byte for byte what they were.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cramjam

SAMPLES_PER_REQUEST = 1000
INSTANCES = 200
ROUND_INTERVAL_MS = 15_000
INSTANCES_PER_OTLP_REQUEST = 3
DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

JOBS = ("api", "checkout", "cart", "search", "auth", "payments", "inventory", "shipping",
        "frontend", "recommendations")  # fmt: skip
NAMESPACES = ("shop", "platform", "payments", "edge", "data")
METHODS = ("GET", "POST", "PUT", "DELETE")
STATUS_CODES = ("200", "201", "204", "400", "404", "500")
ROUTES = tuple(f"/api/v1/{r}" for r in ("orders", "orders/{id}", "items", "items/{id}", "cart",
               "users", "users/{id}", "search", "login", "payments", "shipments", "health"))
COUNTERS = tuple(f"{m}_total" for m in (
    "http_requests", "http_request_errors", "http_response_bytes", "http_request_bytes",
    "grpc_server_handled", "grpc_server_started", "db_queries", "db_query_errors",
    "cache_hits", "cache_misses", "queue_messages_published", "queue_messages_consumed",
    "auth_attempts", "auth_failures", "payments_processed", "payments_declined",
    "emails_sent", "jobs_completed", "jobs_failed", "retries"))  # fmt: skip
GAUGES = ("http_requests_in_flight", "db_connections_open", "db_connections_idle",
          "cache_items", "cache_bytes", "queue_depth", "queue_lag_seconds", "goroutines",
          "threads", "open_fds", "memory_rss_bytes", "cpu_usage_ratio", "workers_busy",
          "workers_idle", "last_success_timestamp_seconds")  # fmt: skip
HISTOGRAMS = ("http_request_duration_seconds", "grpc_server_handling_seconds",
              "db_query_duration_seconds", "cache_lookup_duration_seconds",
              "queue_processing_duration_seconds")  # fmt: skip
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LE = (*(f"{b:g}" for b in BOUNDS), "+Inf")
# Share of observations at or below each bound (cumulative, ends at 1).
CDF = (0.05, 0.12, 0.3, 0.5, 0.7, 0.85, 0.93, 0.97, 0.99, 0.996, 0.999, 1.0)
COUNTER_COMBOS, GAUGE_COMBOS, HISTOGRAM_COMBOS = 11, 5, 3
BOMB_METRIC = "http_user_requests_total"
BOMB_LABEL = "user_id"
BOMB_ROUTES = ROUTES[:4]
_USER_ID_MULTIPLIER = 0x9E3779B97F4A7C15  # odd: n -> n * M mod 2**48 is a bijection
_USER_ID_MASK = (1 << 48) - 1
_SMALL_VARINTS = tuple(bytes((n,)) for n in range(0x80))


@dataclass(frozen=True, slots=True)
class Series:
    """One Prometheus series and how its value moves with time."""

    labels: tuple[tuple[str, str], ...]  # sorted by name; __name__ first
    kind: str  # counter, gauge, bucket, sum, count
    rate: float  # per second: increments (counter, histogram) or the gauge's level
    share: float = 1.0  # bucket: cumulative share of observations


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _label_bytes(labels: tuple[tuple[str, str], ...]) -> bytes:
    return b"".join(_len_field(1, _len_field(1, k.encode()) + _len_field(2, v.encode()))
                    for k, v in labels)


def build_series(seed: int) -> list[Series]:
    """All series of the workload, in instance order (deterministic for ``seed``)."""
    rng = random.Random(seed)
    combos = [(m, s, r) for m in METHODS for s in STATUS_CODES for r in ROUTES]
    out: list[Series] = []
    for i in range(INSTANCES):
        job = JOBS[i % len(JOBS)]
        base = {
            "job": job,
            "instance": f"10.0.{i // 100}.{i % 100 + 10}:8080",
            "namespace": NAMESPACES[i % len(JOBS) % len(NAMESPACES)],
            "pod": f"{job}-{rng.getrandbits(32):08x}-{rng.getrandbits(20):05x}",
        }

        def labels(name: str, extra: dict[str, str], base: dict[str, str] = base) -> tuple[
            tuple[str, str], ...
        ]:
            return tuple(sorted({"__name__": name, **base, **extra}.items()))

        for name in COUNTERS:
            for method, code, route in rng.sample(combos, COUNTER_COMBOS):
                extra = {"method": method, "status_code": code, "route": route}
                out.append(Series(labels(name, extra), "counter", rng.uniform(0.05, 200.0)))
        for name in GAUGES:
            for route in rng.sample(ROUTES, GAUGE_COMBOS):
                out.append(Series(labels(name, {"route": route}), "gauge", rng.uniform(0, 1e4)))
        for name in HISTOGRAMS:
            for method, route in rng.sample([(m, r) for m in METHODS for r in ROUTES],
                                            HISTOGRAM_COMBOS):
                extra = {"method": method, "route": route}
                rate = rng.uniform(0.1, 100.0)
                for le, share in zip(LE, CDF, strict=True):
                    out.append(Series(labels(f"{name}_bucket", {**extra, "le": le}), "bucket",
                                      rate, share))
                out.append(Series(labels(f"{name}_sum", extra), "sum", rate))
                out.append(Series(labels(f"{name}_count", extra), "count", rate))
    return out


def value_at(series: Series, round_index: int) -> float:
    """The series' value in a round: counters grow, gauges wobble, histograms stay consistent."""
    seconds = (round_index + 1) * ROUND_INTERVAL_MS / 1000
    if series.kind == "gauge":
        return round(series.rate * (1 + 0.1 * ((round_index * 7919) % 13 - 6) / 6), 3)
    count = float(int(series.rate * seconds))
    if series.kind == "bucket":
        return float(int(count * series.share))
    if series.kind == "sum":
        return round(count * 0.087, 6)
    return count  # counter, count


def _time_series(label_bytes: bytes, value: float, timestamp: bytes) -> bytes:
    """One ``TimeSeries`` entry of a WriteRequest (tag and length included) with one sample;
    ``timestamp`` is the sample's encoded timestamp field (tag 2, varint)."""
    sample = b"\x09" + struct.pack("<d", value) + timestamp
    payload = label_bytes + b"\x12" + _varint(len(sample)) + sample
    return b"\x0a" + _varint(len(payload)) + payload


@dataclass(frozen=True, slots=True)
class Bomb:
    """The ``user_id`` bomb: ``per_round`` samples per round, each of a series never seen
    before in the workload."""

    per_round: int
    seed: int

    def rounds(self, base: list[Series], rounds: int) -> list[list[tuple[bytes, float]]]:
        """Per round, ``(label bytes, value)`` of each bomb sample (deterministic for the
        seed); the base series lend their job, instance, namespace and pod."""
        rng = random.Random(self.seed + 2)
        per_instance = len(base) // INSTANCES
        instances = [{k: v for k, v in base[i * per_instance].labels
                      if k in ("job", "instance", "namespace", "pod")}
                     for i in range(INSTANCES)]
        n = self.seed << 32  # the user ids of different seeds do not meet
        out: list[list[tuple[bytes, float]]] = []
        for _ in range(rounds):
            this_round: list[tuple[bytes, float]] = []
            for _ in range(self.per_round):
                labels = {"__name__": BOMB_METRIC, **rng.choice(instances),
                          "route": rng.choice(BOMB_ROUTES),
                          BOMB_LABEL: f"{(n * _USER_ID_MULTIPLIER) & _USER_ID_MASK:012x}"}
                n += 1
                this_round.append((_label_bytes(tuple(sorted(labels.items()))),
                                   float(rng.randint(1, 20))))
            out.append(this_round)
        return out


def remote_write_bodies(series: list[Series], *, seed: int, rounds: int, start_ms: int,
                        samples_per_request: int = SAMPLES_PER_REQUEST,
                        bomb: Bomb | None = None) -> list[bytes]:
    """Snappy-compressed ``WriteRequest`` bodies of ``samples_per_request`` samples (the last
    may have fewer); with ``bomb``, its samples shuffled into every round."""
    order = list(range(len(series)))
    random.Random(seed + 1).shuffle(order)
    label_bytes = [_label_bytes(s.labels) for s in series]
    bomb_rounds = bomb.rounds(series, rounds) if bomb else None
    mix = random.Random(seed + 3)
    bodies: list[bytes] = []
    chunk: list[bytes] = []
    for r in range(rounds):
        timestamp = b"\x10" + _varint(start_ms + r * ROUND_INTERVAL_MS)
        entries = [_time_series(label_bytes[i], value_at(series[i], r), timestamp)
                   for i in order]
        if bomb_rounds is not None:
            entries = _interleave(entries, [_time_series(labels, value, timestamp)
                                            for labels, value in bomb_rounds[r]], mix)
        for entry in entries:
            chunk.append(entry)
            if len(chunk) == samples_per_request:
                bodies.append(bytes(cramjam.snappy.compress_raw(b"".join(chunk))))
                chunk = []
    if chunk:
        bodies.append(bytes(cramjam.snappy.compress_raw(b"".join(chunk))))
    return bodies


def _interleave(base: list[bytes], extra: list[bytes], rng: random.Random) -> list[bytes]:
    """``base`` in its order with ``extra``, in its order, at seeded random places."""
    slots = [False] * len(base) + [True] * len(extra)
    rng.shuffle(slots)
    b, e = iter(base), iter(extra)
    return [next(e) if is_extra else next(b) for is_extra in slots]


def otlp_bodies(series: list[Series], *, rounds: int, start_ms: int) -> list[bytes]:
    """The same series as OTLP ``ExportMetricsServiceRequest`` bodies (uncompressed)."""
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
    from opentelemetry.proto.metrics.v1 import metrics_pb2

    per_instance = len(series) // INSTANCES
    bodies: list[bytes] = []
    temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    for r in range(rounds):
        time_ns = (start_ms + r * ROUND_INTERVAL_MS) * 1_000_000
        start_ns = (start_ms - ROUND_INTERVAL_MS) * 1_000_000
        request = metrics_service_pb2.ExportMetricsServiceRequest()
        for i in range(INSTANCES):
            mine = series[i * per_instance:(i + 1) * per_instance]
            first = dict(mine[0].labels)
            resource_metrics = request.resource_metrics.add()
            for key, value in (("service.name", first["job"]),
                               ("service.instance.id", first["instance"])):
                resource_metrics.resource.attributes.add(key=key).value.string_value = value
            scope = resource_metrics.scope_metrics.add()
            scope.scope.name = "phoenix-bench"
            metrics: dict[str, metrics_pb2.Metric] = {}
            for s in mine:
                labels = dict(s.labels)
                name = labels.pop("__name__")
                for key in ("job", "instance"):
                    labels.pop(key)
                if s.kind in ("sum", "count"):
                    continue  # carried by the histogram point
                if s.kind == "bucket":
                    if labels.pop("le") != "0.005":
                        continue  # one point per le set, built at the first bucket
                    name = name.removesuffix("_bucket")
                elif s.kind == "counter":
                    name = name.removesuffix("_total")
                metric = metrics.get(name)
                if metric is None:
                    metric = metrics[name] = scope.metrics.add(name=name)
                point: Any
                if s.kind == "counter":
                    metric.sum.aggregation_temporality = temporality
                    metric.sum.is_monotonic = True
                    point = metric.sum.data_points.add(as_double=value_at(s, r))
                elif s.kind == "gauge":
                    point = metric.gauge.data_points.add(as_double=value_at(s, r))
                else:
                    metric.histogram.aggregation_temporality = temporality
                    cumulative = [int(value_at(Series(s.labels, "bucket", s.rate, share), r))
                                  for share in CDF]
                    count = cumulative[-1]
                    point = metric.histogram.data_points.add(
                        count=count, sum=value_at(Series(s.labels, "sum", s.rate), r),
                        explicit_bounds=BOUNDS,
                        bucket_counts=[b - a for a, b in zip([0, *cumulative], cumulative,
                                                             strict=False)])
                point.start_time_unix_nano = start_ns
                point.time_unix_nano = time_ns
                for key, value in labels.items():
                    point.attributes.add(key=key).value.string_value = value
            if (i + 1) % INSTANCES_PER_OTLP_REQUEST == 0 or i + 1 == INSTANCES:
                bodies.append(request.SerializeToString())
                request = metrics_service_pb2.ExportMetricsServiceRequest()
    return bodies


def bomb_per_round(base_series: int, share: float, rounds: int = 1) -> int:
    """Bomb samples per round that make ``share`` of all samples, rounded so that ``rounds``
    rounds fill whole bodies of ``SAMPLES_PER_REQUEST`` samples: wrk counts the samples it
    sent as answered requests x 1,000, which a short last body would overstate."""
    if not 0 <= share < 1:
        raise ValueError(f"bomb share {share} is out of range; use 0 to below 1, e.g. 0.1")
    wanted = round(base_series * share / (1 - share))
    if not wanted:
        return 0
    step = SAMPLES_PER_REQUEST // math.gcd(rounds, SAMPLES_PER_REQUEST)
    whole = max(step, round((base_series + wanted) / step) * step)
    return max(0, whole - base_series)


def write_workload(out: Path, *, seed: int = 1, rounds: int = 3,
                   start_ms: int = DEFAULT_START_MS, otlp: bool = True,
                   bomb_share: float = 0.0) -> dict[str, object]:
    """Generate and write every body to ``out``; returns the manifest (also in manifest.json).
    ``bomb_share`` > 0 adds the ``user_id`` bomb (remote-write only: then ``otlp`` must be
    False)."""
    began = time.perf_counter()
    series = build_series(seed)
    per_round = bomb_per_round(len(series), bomb_share, rounds)
    if per_round and otlp:
        raise ValueError("the user_id bomb is remote-write only: pass otlp=False")
    bomb = Bomb(per_round=per_round, seed=seed) if per_round else None
    out.mkdir(parents=True, exist_ok=True)
    rw = remote_write_bodies(series, seed=seed, rounds=rounds, start_ms=start_ms, bomb=bomb)
    for n, body in enumerate(rw):
        (out / f"rw-{n:05d}.bin").write_bytes(body)
    ot = otlp_bodies(series, rounds=rounds, start_ms=start_ms) if otlp else []
    for n, body in enumerate(ot):
        (out / f"otlp-{n:05d}.bin").write_bytes(body)
    manifest: dict[str, object] = {
        "seed": seed, "rounds": rounds, "start_ms": start_ms, "series": len(series),
        "metric_names": len({dict(s.labels)["__name__"] for s in series}),
        "remote_write": {"requests": len(rw), "samples_per_request": SAMPLES_PER_REQUEST,
                         "samples": (len(series) + per_round) * rounds,
                         "compressed_bytes": sum(map(len, rw))},
        "otlp": {"requests": len(ot), "bytes": sum(map(len, ot))},
        "generated_in_s": round(time.perf_counter() - began, 2),
    }
    if bomb is not None:
        manifest["bomb"] = {
            "metric": BOMB_METRIC, "label": BOMB_LABEL,
            "share": per_round / (len(series) + per_round),
            "samples_per_round": per_round, "series": per_round * rounds,
            "groups_without_label": INSTANCES * len(BOMB_ROUTES),
        }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--start-ms", type=int, default=DEFAULT_START_MS)
    parser.add_argument("--no-otlp", action="store_true")
    parser.add_argument("--bomb-share", type=float, default=0.0,
                        help="share of all samples in the user_id bomb, e.g. 0.1 (remote-write "
                             "only: no OTLP bodies)")
    args = parser.parse_args()
    manifest = write_workload(args.out, seed=args.seed, rounds=args.rounds,
                              start_ms=args.start_ms,
                              otlp=not (args.no_otlp or args.bomb_share),
                              bomb_share=args.bomb_share)
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
