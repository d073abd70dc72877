"""OTLP → Prometheus translation per the OpenTelemetry compatibility specification."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from phoenixcp.api.prometheus import remote_pb2
from phoenixcp.core.batch import MetricType
from phoenixcp.core.series import series_key
from phoenixcp.platform.ingest import _otlpconvert_py, otlp
from phoenixcp.platform.ingest.otlp import Rejected, decode_otlp
from phoenixcp.platform.ingest.otlp_naming import attribute_labels, label_name, metric_name

pytestmark = pytest.mark.unit

CONVERTERS: dict[str, otlp.Converter] = {"python": _otlpconvert_py.convert}
if otlp.CONVERTER == "c":
    CONVERTERS["c"] = otlp._convert

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
T_NS = 1_700_000_000_123_456_789
T_MS = 1_700_000_000_123


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def export(*metrics: Metric, resource: dict[str, str] | None = None) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    res = resource if resource is not None else {
        "service.name": "checkout", "service.namespace": "shop",
        "service.instance.id": "pod-1", "host.name": "dropped"}
    rm.resource.attributes.extend(kv(k, v) for k, v in res.items())
    rm.scope_metrics.add(metrics=list(metrics))
    return req


def samples(req: ExportMetricsServiceRequest) -> dict[tuple[tuple[str, str], ...], list[float]]:
    batch, _ = decode_otlp(req, tenant="t")
    cols = batch.columns()
    out: dict[tuple[tuple[str, str], ...], list[float]] = {}
    for i, v in zip(cols.series_index, cols.values, strict=True):
        out.setdefault(tuple(sorted(cols.label_sets[i])), []).append(float(v))
    return out


@pytest.mark.parametrize(
    ("name", "unit", "counter", "gauge", "expected"),
    [
        ("http.server.duration", "s", False, False, "http_server_duration_seconds"),
        ("requests", "{requests}", True, False, "requests_total"),
        ("requests.total", "1", True, False, "requests_total"),
        ("memory.usage", "By", False, True, "memory_usage_bytes"),
        ("throughput", "By/s", False, True, "throughput_bytes_per_second"),
        ("cpu.utilization", "1", False, True, "cpu_utilization_ratio"),
        ("latency_seconds", "s", False, False, "latency_seconds"),
        ("9lives", "", False, True, "_9lives"),
        ("a..b--c", "", False, True, "a_b_c"),
        ("...", "", False, True, ""),
    ],
)
def test_metric_names(name: str, unit: str, counter: bool, gauge: bool, expected: str) -> None:
    assert metric_name(name, unit, counter=counter, gauge=gauge) == expected


def test_label_names_and_collisions() -> None:
    assert label_name("http.method") == "http_method"
    assert label_name("1st") == "key_1st"
    assert label_name("__secret") == "key__secret"
    assert attribute_labels([kv("a.b", "1"), kv("a-b", "2"), kv("ok", True), kv("n", 3)]) == {
        "a_b": "2;1", "ok": "true", "n": "3"}


def test_counter_gauge_and_resource_labels() -> None:
    counter = Metric(name="http.requests", unit="{request}", description="Requests served")
    counter.sum.is_monotonic = True
    counter.sum.aggregation_temporality = CUMULATIVE
    counter.sum.data_points.add(as_int=7, time_unix_nano=T_NS,
                                attributes=[kv("http.method", "GET")])
    updown = Metric(name="queue.size")
    updown.sum.aggregation_temporality = CUMULATIVE
    updown.sum.data_points.add(as_double=-2.5, time_unix_nano=T_NS)
    gauge = Metric(name="temperature", unit="Cel")
    gauge.gauge.data_points.add(as_double=21.5, time_unix_nano=T_NS, flags=1)
    req = export(counter, updown, gauge)
    batch, rejected = decode_otlp(req, tenant="acme")
    assert rejected.data_points == 0 and rejected.message == ""
    assert batch.tenant == "acme" and batch.sample_count == 3 and batch.series_count == 3
    base = {"job": "shop/checkout", "instance": "pod-1"}
    want = {**base, "__name__": "http_requests_total", "http_method": "GET"}
    assert int(batch.series_keys[0]) == series_key(want.items())
    got = samples(req)
    assert got[tuple(sorted(want.items()))] == [7.0]
    assert got[tuple(sorted({**base, "__name__": "queue_size"}.items()))] == [-2.5]
    stale = got[tuple(sorted({**base, "__name__": "temperature_celsius"}.items()))][0]
    assert struct.pack("<d", stale) == struct.pack("<Q", 0x7FF0000000000002)
    cols = batch.columns()
    assert cols.metric_types == {"http_requests_total": MetricType.COUNTER,
                                 "queue_size": MetricType.GAUGE,
                                 "temperature_celsius": MetricType.GAUGE}
    assert set(cols.timestamps) == {T_MS}


def test_histogram_buckets_are_cumulative_with_le() -> None:
    hist = Metric(name="rpc.duration", unit="ms")
    hist.histogram.aggregation_temporality = CUMULATIVE
    hist.histogram.data_points.add(time_unix_nano=T_NS, count=10, sum=123.0,
                                   explicit_bounds=[0.5, 1, 2.5], bucket_counts=[1, 2, 3, 4])
    got = samples(export(hist, resource={"service.name": "api"}))
    name = "rpc_duration_milliseconds"
    buckets = {dict(k)["le"]: v for k, v in got.items() if dict(k)["__name__"] == name + "_bucket"}
    assert buckets == {"0.5": [1.0], "1": [3.0], "2.5": [6.0], "+Inf": [10.0]}
    assert got[(("__name__", name + "_count"), ("job", "api"))] == [10.0]
    assert got[(("__name__", name + "_sum"), ("job", "api"))] == [123.0]


def test_an_explicit_inf_bound_gives_one_inf_bucket() -> None:
    """SDKs that take +Inf as a boundary send it as the last bound, and a last bucket that is
    empty by definition: one le="+Inf" bucket, not two samples in one series."""
    hist = Metric(name="rpc.duration", unit="ms")
    hist.histogram.aggregation_temporality = CUMULATIVE
    hist.histogram.data_points.add(time_unix_nano=T_NS, count=10, sum=12.0,
                                   explicit_bounds=[1, 2, float("inf")],
                                   bucket_counts=[5, 2, 3, 0])
    got = samples(export(hist, resource={}))
    buckets = {dict(k)["le"]: v for k, v in got.items()
               if dict(k)["__name__"] == "rpc_duration_milliseconds_bucket"}
    assert buckets == {"1": [5.0], "2": [7.0], "+Inf": [10.0]}


@pytest.mark.parametrize("converter", sorted(CONVERTERS))
def test_a_minus_inf_bound_is_spelled_as_prometheus_does(converter: str) -> None:
    """``le="-Inf"``, as Prometheus writes it (and ``+Inf``); numpy would write ``-inf``."""
    hist = Metric(name="temperature.delta", unit="Cel")
    hist.histogram.aggregation_temporality = CUMULATIVE
    hist.histogram.data_points.add(time_unix_nano=T_NS, count=6,
                                   explicit_bounds=[float("-inf"), -0.5, 0, 1e-7],
                                   bucket_counts=[1, 1, 1, 1, 2])
    batch, rejected = decode_otlp(export(hist, resource={}), tenant="t",
                                  converter=CONVERTERS[converter])
    assert rejected == Rejected()
    les = [label.value for series in remote_pb2.WriteRequest.FromString(
        batch.write_request).timeseries for label in series.labels if label.name == "le"]
    assert les == ["-Inf", "-0.5", "0", "0.0000001", "+Inf"]


def test_histogram_bounds_without_counts_are_refused() -> None:
    """OTLP allows bounds with one more bucket count, or neither (count and sum only)."""
    bad = Metric(name="h")
    bad.histogram.aggregation_temporality = CUMULATIVE
    bad.histogram.data_points.add(time_unix_nano=T_NS, count=3, explicit_bounds=[1, 2])
    only_count = Metric(name="c")
    only_count.histogram.aggregation_temporality = CUMULATIVE
    only_count.histogram.data_points.add(time_unix_nano=T_NS, count=3, sum=1.5)
    batch, rejected = decode_otlp(export(bad, only_count, resource={}), tenant="t")
    assert rejected == Rejected(1, "1 data points rejected: metric 'h': histogram has 2 "
                                   "bounds but no bucket counts (send bounds + 1 bucket counts, "
                                   "or neither bounds nor bucket counts for count and sum only) "
                                   "(1 points)")
    assert samples(export(only_count, resource={})) == {
        (("__name__", "c_bucket"), ("le", "+Inf")): [3.0], (("__name__", "c_count"),): [3.0],
        (("__name__", "c_sum"),): [1.5]}
    assert batch.sample_count == 3


@pytest.mark.parametrize(("bounds", "got"), [
    ([2.0, 1.0], "got 1 after 2 at index 1"),
    ([0.5, 1.0, 1.0], "got 1 after 1 at index 2"),
    ([float("nan"), 1.0], "got NaN at index 0"),
    ([1.0, float("inf"), float("nan")], "got NaN at index 2"),
])
@pytest.mark.parametrize("converter", sorted(CONVERTERS))
def test_histogram_bounds_not_increasing_are_refused_saying_so(
        bounds: list[float], got: str, converter: str) -> None:
    """The message names the bounds, not the bucket counts, which fit; a point of the same
    metric whose counts do not fit gets its own reason."""
    hist = Metric(name="h")
    hist.histogram.aggregation_temporality = CUMULATIVE
    hist.histogram.data_points.add(time_unix_nano=T_NS, count=3, explicit_bounds=bounds,
                                   bucket_counts=[1] * (len(bounds) + 1))
    hist.histogram.data_points.add(time_unix_nano=T_NS, count=3, explicit_bounds=[1, 2],
                                   bucket_counts=[3])
    _, rejected = decode_otlp(export(hist, resource={}), tenant="t",
                              converter=CONVERTERS[converter])
    assert rejected == Rejected(2, (
        "2 data points rejected: metric 'h': histogram explicit_bounds must be strictly "
        f"increasing and not NaN; {got} (1 points); metric 'h': histogram has 1 bucket "
        "counts for 2 bounds (send bounds + 1 bucket counts, or neither bounds nor bucket "
        "counts for count and sum only) (1 points)"))


def test_summary_quantiles() -> None:
    summary = Metric(name="latency", unit="s")
    dp = summary.summary.data_points.add(time_unix_nano=T_NS, count=4, sum=2.0)
    dp.quantile_values.add(quantile=0.99, value=1.5)
    got = samples(export(summary, resource={}))
    assert got[(("__name__", "latency_seconds"), ("quantile", "0.99"))] == [1.5]
    assert got[(("__name__", "latency_seconds_count"),)] == [4.0]


def test_partial_success_counts_refused_points() -> None:
    delta = Metric(name="d")
    delta.sum.aggregation_temporality = DELTA
    delta.sum.is_monotonic = True
    delta.sum.data_points.add(as_int=1, time_unix_nano=T_NS)
    delta.sum.data_points.add(as_int=2, time_unix_nano=T_NS)
    bad_hist = Metric(name="h")
    bad_hist.histogram.aggregation_temporality = CUMULATIVE
    bad_hist.histogram.data_points.add(count=1, explicit_bounds=[1, 2], bucket_counts=[1])
    expo = Metric(name="e")
    expo.exponential_histogram.aggregation_temporality = CUMULATIVE
    expo.exponential_histogram.data_points.add(count=1)
    empty = Metric(name="")
    empty.gauge.data_points.add(as_int=1)
    good = Metric(name="ok")
    good.gauge.data_points.add(as_int=1, time_unix_nano=T_NS)
    batch, rejected = decode_otlp(export(delta, bad_hist, expo, empty, good), tenant="t")
    assert batch.sample_count == 1
    assert rejected.data_points == 5
    assert rejected.message.startswith("5 data points rejected: ")
    assert "only cumulative temporality is supported" in rejected.message
    assert "(2 points)" in rejected.message
    assert "and 1 more reasons" in rejected.message


def test_the_write_request_is_canonical_protobuf() -> None:
    """decode_otlp writes the WriteRequest bytes itself: they parse to the points sent and
    re-serialise to the same bytes (zero, -0.0 and NaN values, zero timestamps, empty
    label values)."""
    request = ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add()
    metric.name = "temperature"
    points = [(0.0, 0), (-0.0, 5_000_000), (21.5, 0), (float("nan"), 7_000_000)]
    for i, (value, ts_ns) in enumerate(points):
        p = metric.gauge.data_points.add()
        p.as_double, p.time_unix_nano = value, ts_ns
        p.attributes.add(key="room", value={"string_value": f"r{i}" if i else ""})
    batch, rejected = decode_otlp(request, tenant="t")
    assert rejected.data_points == 0
    parsed = remote_pb2.WriteRequest.FromString(batch.write_request)
    assert parsed.SerializeToString() == batch.write_request
    got = sorted((s.labels[-1].value if len(s.labels) > 1 else "", s.samples[0].timestamp)
                 for s in parsed.timeseries)
    assert got == [("", 0), ("r1", 5), ("r2", 0), ("r3", 7)]
