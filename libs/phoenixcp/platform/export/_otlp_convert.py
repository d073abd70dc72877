"""A Prometheus ``WriteRequest`` as an OTLP ``ExportMetricsServiceRequest``.

Typing comes from the request's metadata (``MetricMetadata``), looked up by the series name
and, for ``_total`` / ``_bucket`` / ``_sum`` / ``_count`` names, by the family name without
the suffix:

* COUNTER → cumulative monotonic Sum (name as sent, ``_total`` kept);
* GAUGE, UNKNOWN, INFO, STATESET, no metadata → Gauge;
* HISTOGRAM / GAUGEHISTOGRAM → Histogram named after the family: for each label set (without
  ``le``) and timestamp, the ``_bucket`` series become explicit bounds and per-bucket counts
  (de-accumulated), with ``_sum`` and ``_count``. A group that is not complete in this request
  (no ``+Inf`` bucket, no ``_count``, non-monotonic buckets) is sent as its original series,
  typed as Gauges, so no value is dropped;
* SUMMARY → ``_sum``/``_count`` as cumulative monotonic Sums, quantile series as Gauges.

Every label except ``__name__`` becomes a data-point attribute, under one Resource without
attributes. ``start_time_unix_nano`` is 0 (unknown: remote-write does not carry it).
Prometheus stale markers become points with the ``NO_RECORDED_VALUE`` flag.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections import defaultdict
from typing import Final

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from phoenixcp.api.prometheus import remote_pb2, types_pb2

__all__ = ["write_request_to_otlp"]

_T = types_pb2.MetricMetadata
_HISTOGRAMS: Final = frozenset({_T.HISTOGRAM, _T.GAUGEHISTOGRAM})
_STALE_BITS: Final = 0x7FF0000000000002
_CUMULATIVE: Final = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
_NO_VALUE: Final = metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK

_Attrs = tuple[tuple[str, str], ...]


def _is_stale(value: float) -> bool:
    return math.isnan(value) and struct.unpack("<Q", struct.pack("<d", value))[0] == _STALE_BITS


def _attributes(attrs: _Attrs) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(string_value=v))
            for k, v in attrs]


class _Builder:
    def __init__(self, metadata: dict[str, types_pb2.MetricMetadata]) -> None:
        self._meta = metadata
        self.metrics: dict[str, metrics_pb2.Metric] = {}

    def metric(self, name: str, kind: str, family: str) -> metrics_pb2.Metric:
        key = f"{kind}:{name}"
        metric = self.metrics.get(key)
        if metric is None:
            meta = self._meta.get(family)
            metric = self.metrics[key] = metrics_pb2.Metric(
                name=name, description=meta.help if meta else "", unit=meta.unit if meta else "")
            if kind == "sum":
                metric.sum.aggregation_temporality = _CUMULATIVE
                metric.sum.is_monotonic = True
            elif kind == "histogram":
                metric.histogram.aggregation_temporality = _CUMULATIVE
            else:
                metric.gauge.SetInParent()
        return metric

    def number(self, name: str, kind: str, family: str, attrs: _Attrs,
               samples: list[tuple[int, float]]) -> None:
        metric = self.metric(name, kind, family)
        points = metric.sum.data_points if kind == "sum" else metric.gauge.data_points
        proto_attrs = _attributes(attrs)
        for ts_ms, value in samples:
            stale = _is_stale(value)
            points.add(attributes=proto_attrs, time_unix_nano=ts_ms * 1_000_000,
                       as_double=0.0 if stale else value, flags=_NO_VALUE if stale else 0)


def _classify(name: str, meta: dict[str, types_pb2.MetricMetadata]) -> tuple[str, str, str]:
    """(kind, family, part): kind is sum, gauge or histogram; part the histogram suffix."""
    own = meta.get(name)
    if own is not None and own.type == _T.COUNTER:
        return "sum", name, ""
    for suffix in ("_bucket", "_sum", "_count", "_total"):
        if name.endswith(suffix):
            family = meta.get(name[: -len(suffix)])
            if family is None:
                continue
            if family.type in _HISTOGRAMS and suffix != "_total":
                return "histogram", family.metric_family_name, suffix
            if family.type == _T.COUNTER and suffix == "_total":
                return "sum", family.metric_family_name, ""
            if family.type == _T.SUMMARY and suffix in ("_sum", "_count"):
                return "sum", family.metric_family_name, ""
    return "gauge", own.metric_family_name if own else name, ""


def write_request_to_otlp(body: bytes) -> metrics_service_pb2.ExportMetricsServiceRequest:
    """Convert an uncompressed ``WriteRequest``; raises ``google.protobuf`` DecodeError."""
    request = remote_pb2.WriteRequest.FromString(body)
    meta = {m.metric_family_name: m for m in request.metadata}
    builder = _Builder(meta)
    # (family, attrs without le) -> timestamp -> part -> value ; bucket part keyed by le
    groups: dict[tuple[str, _Attrs], dict[int, dict[str, float]]] = defaultdict(
        lambda: defaultdict(dict))
    originals: dict[tuple[str, _Attrs], list[tuple[str, _Attrs, list[tuple[int, float]]]]] = \
        defaultdict(list)
    for series in request.timeseries:
        labels = [(label.name, label.value) for label in series.labels]
        name = next((v for k, v in labels if k == "__name__"), "")
        attrs = tuple(sorted((k, v) for k, v in labels if k != "__name__"))
        samples = [(s.timestamp, s.value) for s in series.samples]
        kind, family, part = _classify(name, meta)
        if kind != "histogram":
            builder.number(name, kind, family, attrs, samples)
            continue
        le = next((v for k, v in attrs if k == "le"), None)
        key = (family, tuple(kv for kv in attrs if kv[0] != "le"))
        originals[key].append((name, attrs, samples))
        slot = f"le={le}" if part == "_bucket" and le is not None else part
        for ts_ms, value in samples:
            groups[key][ts_ms][slot] = value
    for key, by_time in groups.items():
        if not _add_histogram(builder, key, by_time):
            for name, attrs, samples in originals[key]:
                builder.number(name, "gauge", key[0], attrs, samples)
    scope = metrics_pb2.ScopeMetrics(scope=common_pb2.InstrumentationScope(name="phoenix"),
                                     metrics=list(builder.metrics.values()))
    return metrics_service_pb2.ExportMetricsServiceRequest(
        resource_metrics=[metrics_pb2.ResourceMetrics(scope_metrics=[scope])])


def _add_histogram(builder: _Builder, key: tuple[str, _Attrs],
                   by_time: dict[int, dict[str, float]]) -> bool:
    """Add the group's points; False (adding nothing) when any timestamp is incomplete."""
    points = []
    for ts_ms, parts in sorted(by_time.items()):
        try:
            bounds = sorted((float(k[3:]), v) for k, v in parts.items() if k.startswith("le="))
        except ValueError:
            return False
        if "_count" not in parts or not bounds or bounds[-1][0] != math.inf:
            return False
        cumulative = [v for _, v in bounds]
        if any(b < a for a, b in itertools.pairwise(cumulative)):
            return False
        counts = [int(c - p) for p, c in itertools.pairwise([0.0, *cumulative])]
        points.append(metrics_pb2.HistogramDataPoint(
            attributes=_attributes(key[1]), time_unix_nano=ts_ms * 1_000_000,
            count=int(parts["_count"]), sum=parts.get("_sum", 0.0),
            explicit_bounds=[b for b, _ in bounds[:-1]], bucket_counts=counts))
    builder.metric(key[0], "histogram", key[0]).histogram.data_points.extend(points)
    return True
