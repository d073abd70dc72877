"""A varied corpus of OTLP export requests for the decode_otlp golden and differential tests.

``bench_requests()`` is the pipeline benchmark's first round (bench/pipeline/workload.py, seed
1: 67 requests, 62,000 data points); ``edge_requests()`` are hand-written cases: every data
kind, staleness, refused temporality and shapes, names and attributes that need sanitising,
label names that collide after sanitising, resource job/instance, repeated series.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
T_NS = 1_700_000_000_123_456_789
WORKLOAD = Path(__file__).resolve().parents[2] / "bench" / "pipeline" / "workload.py"


def any_value(value: Any) -> AnyValue:
    if isinstance(value, AnyValue):
        return value
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        out = AnyValue()
        out.array_value.values.extend(any_value(v) for v in value)
        return out
    if isinstance(value, dict):
        out = AnyValue()
        out.kvlist_value.values.extend(KeyValue(key=k, value=any_value(v))
                                       for k, v in value.items())
        return out
    if value is None:
        return AnyValue()
    return AnyValue(string_value=value)


def kvs(pairs: list[tuple[str, Any]]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in pairs]


def request(*metrics: Metric, resource: list[tuple[str, Any]] | None = None
            ) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.extend(kvs(resource if resource is not None else [
        ("service.name", "checkout"), ("service.namespace", "shop"),
        ("service.instance.id", "pod-1"), ("host.name", "dropped")]))
    rm.scope_metrics.add(metrics=list(metrics))
    return req


def gauge(name: str, *points: tuple[Any, list[tuple[str, Any]]], unit: str = "",
          description: str = "", ts: int = T_NS, flags: int = 0) -> Metric:
    m = Metric(name=name, unit=unit, description=description)
    for value, attrs in points:
        p = m.gauge.data_points.add(time_unix_nano=ts, flags=flags, attributes=kvs(attrs))
        if isinstance(value, int):
            p.as_int = value
        else:
            p.as_double = value
    return m


def total(name: str, *points: tuple[Any, list[tuple[str, Any]]], unit: str = "",
          monotonic: bool = True, temporality: int = CUMULATIVE, flags: int = 0) -> Metric:
    m = Metric(name=name, unit=unit)
    m.sum.is_monotonic = monotonic
    m.sum.aggregation_temporality = temporality  # type: ignore[assignment]
    for value, attrs in points:
        p = m.sum.data_points.add(time_unix_nano=T_NS, flags=flags, attributes=kvs(attrs))
        if isinstance(value, int):
            p.as_int = value
        else:
            p.as_double = value
    return m


def histogram(name: str, bounds: list[float], counts: list[int], *, unit: str = "s",
              count: int | None = None, sum_: float | None = 1.5, flags: int = 0,
              attrs: list[tuple[str, Any]] | None = None,
              temporality: int = CUMULATIVE) -> Metric:
    m = Metric(name=name, unit=unit, description=f"{name} histogram")
    m.histogram.aggregation_temporality = temporality  # type: ignore[assignment]
    p = m.histogram.data_points.add(
        time_unix_nano=T_NS, flags=flags, explicit_bounds=bounds, bucket_counts=counts,
        count=sum(counts) if count is None else count, attributes=kvs(attrs or [("a", "1")]))
    if sum_ is not None:
        p.sum = sum_
    return m


def summary(name: str, quantiles: list[tuple[float, float]], *, flags: int = 0,
            attrs: list[tuple[str, Any]] | None = None) -> Metric:
    m = Metric(name=name, unit="ms")
    p = m.summary.data_points.add(time_unix_nano=T_NS, count=7, sum=12.5, flags=flags,
                                  attributes=kvs(attrs or []))
    for q, v in quantiles:
        p.quantile_values.add(quantile=q, value=v)
    return m


def edge_requests() -> dict[str, ExportMetricsServiceRequest]:
    """Hand-written requests by case name (deterministic)."""
    nan, inf = float("nan"), float("inf")
    out: dict[str, ExportMetricsServiceRequest] = {}
    out["empty"] = ExportMetricsServiceRequest()
    out["resource_without_metrics"] = request()
    out["kinds"] = request(
        gauge("temperature", (21.5, [("room", "a")]), (-3, [("room", "b")]), unit="Cel",
              description="Room temperature"),
        total("http.requests", (7, [("http.method", "GET")]), (8.25, [("http.method", "PUT")]),
              unit="{request}"),
        total("queue.size", (-2.5, []), monotonic=False),
        histogram("rpc.duration", [0.5, 1, 2.5], [1, 2, 3, 4], unit="ms"),
        summary("latency", [(0.5, 1.0), (0.99, 1.5), (1.0, 2.0)]),
    )
    out["values"] = request(gauge(
        "v", (0.0, [("i", 0)]), (-0.0, [("i", 1)]), (nan, [("i", 2)]), (inf, [("i", 3)]),
        (-inf, [("i", 4)]), (0, [("i", 5)]), (2**63 - 1, [("i", 6)]), (-(2**63), [("i", 7)]),
        (1e-300, [("i", 8)]), (5e-324, [("i", 9)])))
    out["timestamps"] = request(
        gauge("t0", (1.0, []), ts=0), gauge("t1", (1.0, []), ts=999_999),
        gauge("t2", (1.0, []), ts=1_000_000), gauge("t3", (1.0, []), ts=2**64 - 1),
        gauge("t4", (1.0, []), ts=127_000_000), gauge("t5", (1.0, []), ts=128_000_000))
    out["stale"] = request(
        gauge("g", (1.0, [("x", "1")]), flags=1), gauge("g2", (1.0, []), flags=3),
        total("c", (5, []), flags=1),
        histogram("h", [1, 2], [1, 1, 1], flags=1), histogram("h_nosum", [1], [1, 1],
                                                              flags=1, sum_=None),
        summary("s", [(0.5, 1.0)], flags=1))
    out["histograms"] = request(
        histogram("h.empty_buckets", [], [], count=9),
        histogram("h.no_sum", [1, 2], [0, 0, 0], sum_=None),
        histogram("h.odd_bounds", [1e-7, 0.1 + 0.2, 123456789.125, 1e21], [1, 2, 3, 4, 5]),
        histogram("h.negative", [-5, -0.0, 0.0001], [1, 1, 1, 1]),
        histogram("h.neg_zero_first", [-0.0, 1.0], [1, 1, 1]),
        histogram("h.zero_first", [0.0, 1.0], [1, 1, 1]),
        histogram("h.inf_bound", [1, inf], [1, 1, 1]),
        histogram("h.nan_bound", [nan, 1], [1, 1, 1]),
        histogram("h.count_mismatch", [1, 2], [1], attrs=[("b", "2")]),
        histogram("h.not_increasing", [2, 1], [1, 1, 1]),
        histogram("h.equal_bounds", [1, 1], [1, 1, 1]),
        histogram("h.le_attr", [1], [1, 2], attrs=[("le", "x"), ("z", "y")]),
        histogram("h.big_counts", [1], [2**63, 2**63 - 1], count=5),
        histogram("h.delta", [1], [1, 1], temporality=DELTA),
        histogram("h.unspecified", [1], [1, 1], temporality=0),
    )
    out["histogram_bounds"] = request(  # refused or normalised since the oracle (ADR 0013)
        histogram("h.bounds_without_counts", [1, 2], [], count=3),
        histogram("h.inf_last", [1, 2, inf], [5, 2, 3, 0]),
        histogram("h.inf_only", [inf], [4, 0]),
        histogram("h.nan_after_inf", [1, inf, nan], [1, 1, 1, 1]),
        gauge("ok", (1.0, [])))
    out["summaries"] = request(
        summary("s.q", [(0.0, 0.0), (0.25, -1.0), (0.999, nan), (1e-9, 2.0)],
                attrs=[("quantile", "x"), ("k", "v")]),
        summary("s.none", []))
    out["refused"] = request(
        total("d", (1, []), (2, []), temporality=DELTA),
        total("u", (1, []), temporality=0),
        gauge("", (1, [])), gauge("...", (1, [])), gauge("ok", (1, [])),
        histogram("h", [1, 2], [1]), Metric(name="nodata"))
    expo = Metric(name="e")
    expo.exponential_histogram.aggregation_temporality = CUMULATIVE
    expo.exponential_histogram.data_points.add(count=1)
    expo.exponential_histogram.data_points.add(count=2)
    out["refused_many_reasons"] = request(
        expo, total("d1", (1, []), temporality=DELTA), total("d2", (1, []), (1, []),
                                                             temporality=DELTA),
        gauge("...", (1, [])), histogram("h1", [2, 1], [1, 1, 1]),
        histogram("h2", [1], [1]), gauge("fine", (1, [])))
    out["names"] = request(
        gauge("9lives", (1, [])), gauge("a..b--c", (1, [])), gauge("cpu.utilization", (1, []),
                                                                  unit="1"),
        total("requests.total", (1, []), unit="1"), gauge("throughput", (1, []), unit="By/s"),
        gauge("ratio", (1, []), unit="1"), gauge("x:y:z", (1, []), unit="{a}/s"),
        gauge("données.été", (1, []), unit="MiBy"), total("thing_total", (1, [])),
        gauge("latency_seconds", (1, []), unit="s"), gauge("w", (1, []), unit="weird unit/x"),
        gauge("same", (1, []), unit="s", description="first"),
        gauge("same", (2, []), unit="s", description="second wins? no: first"),
        gauge("same_seconds", (3, [])))
    out["attributes"] = request(gauge(
        "attrs",
        (1, [("http.method", "GET"), ("1st", "a"), ("__secret", "b"), ("__name__", "n"),
             ("", "empty key"), ("ключ", "значение"), ("ok", True), ("no", False),
             ("n", 3), ("neg", -4), ("d", 0.1), ("d2", 1e20), ("d3", nan), ("d4", -inf),
             ("b", b"\x00\xff"), ("arr", [1, "x", [True], {"k": 2.5}]),
             ("kv", {"a": "b", "n": None}), ("none", None), ("emptystr", ""),
             ("tab\tkey", "line\nbreak"), ("emoji", "🙂")]),
        (2, [("a.b", "1"), ("a-b", "2"), ("a_b", "0")]),
        (3, [("a-b", "2"), ("a.b", "1")]),
        (4, [("x", "1"), ("x", "1")]),
        (5, [("x", "2"), ("x", "1")]),
        (6, [("job", "attr-job"), ("instance", "attr-instance"), ("z", "")]),
        (7, [("Zeta", "u"), ("alpha", "l"), ("_under", "x"), ("A", "1")])))
    out["attributes_no_resource"] = request(
        gauge("g", (1, [("job", "attr-job"), ("instance", "i")])), resource=[])
    out["repeated_series"] = request(
        gauge("g", (1, [("a", "1"), ("b", "2")]), (2, [("b", "2"), ("a", "1")])),
        gauge("g", (3, [("a.", "x")]), ts=T_NS + 15_000_000_000),
        gauge("g", (4, [("a_", "x")]), ts=T_NS + 15_000_000_000),
        total("g", (5, [("a", "1"), ("b", "2")]), monotonic=False))
    multi = ExportMetricsServiceRequest()
    for resource in ([("service.name", "api")],
                     [("service.namespace", "ns"), ("service.name", "api")],
                     [("service.namespace", "ns")],
                     [("service.instance.id", "i-1")],
                     [("service.name", 5), ("service.instance.id", True)],
                     [("service.name", ""), ("service.namespace", "ns")],
                     [("service.name", "a"), ("service.name", "b")],
                     [("service.name", "api")]):
        rm = multi.resource_metrics.add()
        rm.resource.attributes.extend(kvs(resource))
        rm.scope_metrics.add(metrics=[gauge("up", (1, [("k", "v")]))])
        rm.scope_metrics.add(metrics=[total("calls", (2, []))])
    out["resources"] = multi
    return out


@functools.cache
def bench_requests() -> tuple[tuple[str, bytes], ...]:
    """The benchmark's first round as (name, serialized request)."""
    spec = importlib.util.spec_from_file_location("_phoenix_bench_workload", WORKLOAD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    bodies = module.otlp_bodies(module.build_series(1), rounds=1,
                                start_ms=module.DEFAULT_START_MS)
    return tuple((f"bench_{i:03d}", body) for i, body in enumerate(bodies))


def outcome(decode: Any, req: ExportMetricsServiceRequest) -> dict[str, Any]:
    """What a decode of ``req`` gave, as the golden file records it."""
    try:
        batch, rejected = decode(req, tenant="t", received_at=1)
    except Exception as exc:  # recorded: the new code must raise the same
        return {"raises": type(exc).__name__, "message": str(exc)}
    data = batch.write_request
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "hex": data.hex() if len(data) <= 4096 else None,
            "samples": batch.sample_count, "series": batch.series_count,
            "rejected": rejected.data_points, "message": rejected.message}
