"""decode_otlp as it was before the rewrite (commit 51f80bc), kept as a test oracle: the
differential test feeds random requests to both and compares the bytes. Do not change."""
from __future__ import annotations

import struct
import time
from collections import Counter
from itertools import pairwise

import numpy as np
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from phoenixcp.api.prometheus import remote_pb2, types_pb2
from phoenixcp.core.batch import MetricBatch
from phoenixcp.core.series import STALE_NAN
from phoenixcp.platform.ingest.otlp import Rejected
from phoenixcp.platform.ingest.otlp_naming import attribute_labels, metric_name, unit_name
from phoenixcp.platform.ingest.remote_write import batch_from_scan, validate_write_request

__all__ = ["decode_otlp"]

_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_NO_RECORDED_VALUE = 1
_MT = types_pb2.MetricMetadata


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 as protobuf writes it: two's complement, 10 bytes if < 0
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


_PACK_DOUBLE = struct.Struct("<d").pack


class _Writer:
    """Accumulates series (merged by label set) and metadata into one WriteRequest, written
    as protobuf bytes directly (one TimeSeries message per series, each label pair encoded
    once per request): building upb messages field by field cost more than the rest of the
    decode. The encoding is canonical proto3 (fields at their default left out), as
    ``SerializeToString`` writes it."""

    def __init__(self) -> None:
        self.metadata = remote_pb2.WriteRequest()
        self.series: dict[tuple[tuple[str, str], ...], list[bytes]] = {}
        self.families: set[str] = set()
        self._pairs: dict[tuple[str, str], bytes] = {}
        self._stamps: dict[int, bytes] = {}

    def add(self, labels: dict[str, str], value: float, ts_ms: int) -> None:
        key = tuple(sorted(labels.items()))
        parts = self.series.get(key)
        if parts is None:
            parts = self.series[key] = [b"".join(map(self._pair, key))]
        stamp = self._stamps.get(ts_ms)
        if stamp is None:  # the points of a request share a few timestamps
            stamp = self._stamps[ts_ms] = b"\x10" + _varint(ts_ms) if ts_ms else b""
        sample = (b"\x09" + _PACK_DOUBLE(value) if value or str(value)[0] == "-" else b"")
        parts.append(_field(0x12, sample + stamp))  # TimeSeries.samples

    def _pair(self, pair: tuple[str, str]) -> bytes:
        found = self._pairs.get(pair)
        if found is None:
            name, value = pair[0].encode(), pair[1].encode()
            label = (_field(0x0A, name) if name else b"") + (
                _field(0x12, value) if value else b"")
            found = self._pairs[pair] = _field(0x0A, label)  # TimeSeries.labels
        return found

    def family(self, name: str, kind: int, help_text: str, unit: str) -> None:
        if name not in self.families:
            self.families.add(name)
            main, per = unit_name(unit)
            self.metadata.metadata.add(
                type=kind, metric_family_name=name, help=help_text,
                unit=f"{main}_per_{per}" if per else main,
            )

    def serialize(self) -> bytes:
        """The WriteRequest: every series (field 1), then the metadata (field 3)."""
        series = [_field(0x0A, b"".join(parts)) for parts in self.series.values()]
        return b"".join(series) + self.metadata.SerializeToString()


def _value(point: object) -> float:
    if point.flags & _NO_RECORDED_VALUE:  # type: ignore[attr-defined]
        return STALE_NAN
    if point.WhichOneof("value") == "as_int":  # type: ignore[attr-defined]
        return float(point.as_int)  # type: ignore[attr-defined]
    return float(point.as_double)  # type: ignore[attr-defined]


def _le(bound: float) -> str:
    return str(np.format_float_positional(bound, trim="-"))


def _metric(w: _Writer, metric: Metric, base: dict[str, str]) -> tuple[int, str]:
    """Write one metric's points; return (points refused, reason)."""
    kind = metric.WhichOneof("data")
    if kind is None:
        return 0, ""
    points = getattr(metric, kind).data_points
    counter = kind == "sum" and metric.sum.is_monotonic
    name = metric_name(metric.name, metric.unit, counter=counter,
                       gauge=kind in ("gauge", "sum") and not counter)
    if not name:
        return len(points), f"metric {metric.name!r}: the name is empty after sanitising"
    if kind == "exponential_histogram":
        return len(points), (f"metric {metric.name!r}: exponential histograms are not "
                             "supported; send explicit-bucket histograms")
    if kind in ("sum", "histogram") and getattr(metric, kind).aggregation_temporality != (
            _CUMULATIVE):
        return len(points), (f"metric {metric.name!r}: only cumulative temporality is "
                             "supported (Prometheus stores cumulative values); configure the "
                             "SDK for cumulative or use the deltatocumulative processor")
    meta_type = {"gauge": _MT.GAUGE, "sum": _MT.COUNTER if counter else _MT.GAUGE,
                 "histogram": _MT.HISTOGRAM, "summary": _MT.SUMMARY}[kind]
    w.family(name, meta_type, metric.description, metric.unit)
    refused, reason = 0, ""
    for p in points:
        labels = {**attribute_labels(p.attributes), **base, "__name__": name}
        ts = p.time_unix_nano // 1_000_000
        stale = bool(p.flags & _NO_RECORDED_VALUE)
        if kind in ("gauge", "sum"):
            w.add(labels, _value(p), ts)
        elif kind == "histogram":
            bounds, counts = list(p.explicit_bounds), list(p.bucket_counts)
            if (counts and len(counts) != len(bounds) + 1) or any(
                    b >= c for b, c in pairwise(bounds)):
                refused += 1
                reason = (f"metric {metric.name!r}: histogram has {len(counts)} bucket counts "
                          f"for {len(bounds)} bounds (needs bounds + 1, bounds increasing)")
                continue
            running = 0
            for bound, count in zip([*bounds, float("inf")], counts or [p.count], strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else _le(bound)
                w.add({**labels, "__name__": name + "_bucket", "le": le},
                      STALE_NAN if stale else float(running), ts)
            if p.HasField("sum"):
                w.add({**labels, "__name__": name + "_sum"}, STALE_NAN if stale else p.sum, ts)
            w.add({**labels, "__name__": name + "_count"}, STALE_NAN if stale else p.count, ts)
        else:  # summary
            for q in p.quantile_values:
                w.add({**labels, "quantile": _le(q.quantile)},
                      STALE_NAN if stale else q.value, ts)
            w.add({**labels, "__name__": name + "_sum"}, STALE_NAN if stale else p.sum, ts)
            w.add({**labels, "__name__": name + "_count"}, STALE_NAN if stale else p.count, ts)
    return refused, reason


def decode_otlp(
    request: ExportMetricsServiceRequest, *, tenant: str, received_at: int | None = None
) -> tuple[MetricBatch, Rejected]:
    """Translate an OTLP export into a batch, and what was refused (partial success).

    Never raises for bad points: they are counted in :class:`Rejected`. Pure CPU work.
    """
    start = time.monotonic_ns() if received_at is None else received_at
    w = _Writer()
    refused = 0
    reasons: Counter[str] = Counter()
    for rm in request.resource_metrics:
        res = {kv.key: kv.value.string_value for kv in rm.resource.attributes
               if kv.key in ("service.name", "service.namespace", "service.instance.id")}
        base: dict[str, str] = {}
        if res.get("service.name"):
            ns = res.get("service.namespace")
            base["job"] = f"{ns}/{res['service.name']}" if ns else res["service.name"]
        if res.get("service.instance.id"):
            base["instance"] = res["service.instance.id"]
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                n, reason = _metric(w, metric, base)
                if n:
                    refused += n
                    reasons[reason] += n
    data = w.serialize()
    batch = batch_from_scan(data, validate_write_request(data), tenant=tenant,
                            received_at=start)
    if not refused:
        return batch, Rejected()
    detail = "; ".join(f"{r} ({n} points)" for r, n in reasons.most_common(3))
    more = f"; and {len(reasons) - 3} more reasons" if len(reasons) > 3 else ""
    return batch, Rejected(refused, f"{refused} data points rejected: {detail}{more}")
