"""OTLP ``ExportMetricsServiceRequest`` → :class:`~phoenixcp.core.batch.MetricBatch`.

Follows OpenTelemetry's "Prometheus and OpenMetrics Compatibility" specification, as the
Collector's Prometheus exporters do, so a user sees the same series either way:

* names per :mod:`.otlp_naming` (unit suffixes, ``_total`` for monotonic cumulative sums);
* Gauge and non-monotonic cumulative Sum → gauge; monotonic cumulative Sum → counter;
* cumulative Histogram → ``_bucket{le=...}`` (cumulative counts, ending with ``le="+Inf"``),
  ``_sum`` (when set), ``_count``; Summary → ``{quantile=...}``, ``_sum``, ``_count``;
* resource ``service.namespace``/``service.name`` → ``job`` (``ns/name``), ``service.instance.id``
  → ``instance``; other resource attributes and the scope are dropped (no ``target_info``);
* data point attributes → labels; timestamps ns → ms; the ``no_recorded_value`` flag → the
  Prometheus staleness marker.

Refused per data point, counted in the returned :class:`Rejected` (OTLP partial success) while
the rest is accepted: metrics whose name is empty after sanitising, delta (or unspecified)
temporality Sums and Histograms (Prometheus stores cumulative values only: use cumulative
temporality or the Collector's ``deltatocumulative`` processor), ExponentialHistograms (not
converted yet), histograms whose bucket counts do not match their bounds or whose bounds are
not increasing, and metrics with no data.

How it is fast: the request is serialized once more and parsed with :mod:`.otlp_view`, where
a data point's attributes are their serialized ``KeyValue`` bytes; each distinct attribute is
turned into its encoded label once per request, and a series is identified by its encoded,
sorted labels (equal label sets have equal bytes), so per data point there is no upb message
walk, no label string work and no tuple of pairs to hash.
"""

from __future__ import annotations

import struct
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from phoenixcp.api.prometheus import remote_pb2, types_pb2
from phoenixcp.core.batch import MetricBatch
from phoenixcp.core.series import STALE_NAN
from phoenixcp.platform.ingest.otlp_naming import (
    attribute_labels,
    label_name,
    metric_name,
    unit_name,
)
from phoenixcp.platform.ingest.otlp_view import metrics_view
from phoenixcp.platform.ingest.remote_write import batch_from_scan, validate_write_request

__all__ = ["Rejected", "decode_otlp"]

_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_NO_RECORDED_VALUE = 1
_MT = types_pb2.MetricMetadata


@dataclass(frozen=True, slots=True)
class Rejected:
    """What OTLP's ``partial_success`` reports: refused data points and why (empty if none)."""

    data_points: int = 0
    message: str = ""


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
_INF = float("inf")

Labels = dict[str, bytes]
"""Label name → that label encoded as a ``TimeSeries.labels`` entry (tag included)."""


class _Writer:
    """Accumulates series (merged by label set) and metadata into one WriteRequest, written
    as protobuf bytes directly (one TimeSeries message per series, each label pair encoded
    once per request): building upb messages field by field cost more than the rest of the
    decode. The encoding is canonical proto3 (fields at their default left out), as
    ``SerializeToString`` writes it. A series is keyed by its labels' bytes, sorted by name.
    One per request; not thread-safe."""

    def __init__(self) -> None:
        self.metadata = remote_pb2.WriteRequest()
        self.series: dict[bytes, list[bytes]] = {}
        self.families: set[str] = set()
        self._pairs: dict[tuple[str, str], bytes] = {}
        self._stamps: dict[int, tuple[bytes, bytes]] = {}
        self._attributes: dict[bytes, tuple[str, bytes] | tuple[()]] = {}
        self._bounds: dict[bytes, list[bytes]] = {}

    def add(self, labels: bytes, value: float, ts_ms: int) -> None:
        """One sample of the series whose encoded, sorted labels are ``labels``."""
        parts = self.series.get(labels)
        if parts is None:
            parts = self.series[labels] = [labels]
        stamp = self._stamps.get(ts_ms)
        if stamp is None:  # the points of a request share a few timestamps
            tail = b"\x10" + _varint(ts_ms) if ts_ms else b""
            # TimeSeries.samples with a value (tag, length, 0x09) and without one
            stamp = self._stamps[ts_ms] = (bytes((0x12, 9 + len(tail), 0x09)),
                                           bytes((0x12, len(tail))) + tail)
        if value or str(value)[0] == "-":
            parts.append(stamp[0] + _PACK_DOUBLE(value) + stamp[1][2:])
        else:
            parts.append(stamp[1])

    def pair(self, name: str, value: str) -> bytes:
        """``name=value`` as a ``TimeSeries.labels`` entry."""
        found = self._pairs.get((name, value))
        if found is None:
            name_b, value_b = name.encode(), value.encode()
            label = (_field(0x0A, name_b) if name_b else b"") + (
                _field(0x12, value_b) if value_b else b"")
            found = self._pairs[(name, value)] = _field(0x0A, label)
        return found

    def attribute_labels(self, attributes: Any) -> Labels:
        """The labels of a data point's serialized attributes, as ``attribute_labels``."""
        labels: Labels = {}
        known = self._attributes
        for kv in attributes:
            found = known.get(kv)
            if found is None:
                found = known[kv] = self._attribute(kv)
            if found:
                if found[0] in labels:  # names collide after sanitising: the slow way
                    return self._colliding(attributes)
                labels[found[0]] = found[1]
        return labels

    def _attribute(self, kv_bytes: bytes) -> tuple[str, bytes] | tuple[()]:
        """(label name, encoded label) of one serialized attribute; () if it has no name."""
        kv = KeyValue.FromString(kv_bytes)
        name = label_name(kv.key)
        if not name:
            return ()
        (value,) = attribute_labels([kv]).values()
        return name, self.pair(name, value)

    def _colliding(self, attributes: Any) -> Labels:
        pairs = attribute_labels(KeyValue.FromString(kv) for kv in attributes)
        return {name: self.pair(name, value) for name, value in pairs.items()}

    def le_labels(self, bounds: Any) -> list[bytes]:
        """The ``le`` labels of explicit bounds and ``+Inf``; [] if not increasing."""
        key = array("d", bounds).tobytes()  # not the floats: 0.0 == -0.0 but "0" != "-0"
        found = self._bounds.get(key)
        if found is None:
            increasing = not any(b >= c for b, c in pairwise(bounds))
            found = self._bounds[key] = [
                self.pair("le", "+Inf" if b == _INF else _le(b)) for b in [*bounds, _INF]
            ] if increasing else []
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


def _joined(labels: Labels) -> bytes:
    return b"".join([labels[name] for name in sorted(labels)])


def _slots(labels: Labels, *slots: str) -> list[bytes]:
    """The sorted encoding of ``labels`` plus ``slots`` (given in sorted order), cut at each
    slot: ``chunks[0] + a + chunks[1] + b + chunks[2]`` is the labels with ``a`` and ``b``
    in the slots (a slot replaces a label of that name)."""
    chunks: list[bytes] = []
    run: list[bytes] = []
    for name in sorted({*labels, *slots}):
        if name in slots:
            chunks.append(b"".join(run))
            run = []
        else:
            run.append(labels[name])
    chunks.append(b"".join(run))
    return chunks


def _value(point: Any) -> float:
    if point.flags & _NO_RECORDED_VALUE:
        return STALE_NAN
    if point.WhichOneof("value") == "as_int":
        return float(point.as_int)
    return float(point.as_double)


def _le(bound: float) -> str:
    return str(np.format_float_positional(bound, trim="-"))


def _metric(w: _Writer, metric: Any, base: Labels) -> tuple[int, str]:
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
    own = w.pair("__name__", name)
    if kind in ("gauge", "sum"):
        for p in points:
            labels = w.attribute_labels(p.attributes)
            labels.update(base)
            labels["__name__"] = own
            w.add(_joined(labels), _value(p), p.time_unix_nano // 1_000_000)
        return 0, ""
    if kind == "histogram":
        return _histogram(w, metric.name, name, points, base)
    for p in points:  # summary
        labels = {**w.attribute_labels(p.attributes), **base, "__name__": own}
        ts = p.time_unix_nano // 1_000_000
        stale = bool(p.flags & _NO_RECORDED_VALUE)
        quantile = _slots(labels, "quantile")
        for q in p.quantile_values:
            w.add(w.pair("quantile", _le(q.quantile)).join(quantile),
                  STALE_NAN if stale else q.value, ts)
        totals = _slots(labels, "__name__")
        w.add(w.pair("__name__", name + "_sum").join(totals), STALE_NAN if stale else p.sum, ts)
        w.add(w.pair("__name__", name + "_count").join(totals),
              STALE_NAN if stale else p.count, ts)
    return 0, ""


def _histogram(w: _Writer, original: str, name: str, points: Any, base: Labels
               ) -> tuple[int, str]:
    refused, reason = 0, ""
    bucket, total, count = (w.pair("__name__", name + suffix)
                            for suffix in ("_bucket", "_sum", "_count"))
    for p in points:
        bounds, counts = p.explicit_bounds, p.bucket_counts
        les = w.le_labels(bounds)
        if (counts and len(counts) != len(bounds) + 1) or not les:
            refused += 1
            reason = (f"metric {original!r}: histogram has {len(counts)} bucket counts "
                      f"for {len(bounds)} bounds (needs bounds + 1, bounds increasing)")
            continue
        labels = {**w.attribute_labels(p.attributes), **base}
        ts = p.time_unix_nano // 1_000_000
        stale = bool(p.flags & _NO_RECORDED_VALUE)
        before, between, after = _slots(labels, "__name__", "le")
        head = before + bucket + between
        running = 0
        for le, n in zip(les, counts or [p.count], strict=True):
            running += n
            w.add(head + le + after, STALE_NAN if stale else float(running), ts)
        totals = _slots(labels, "__name__")
        if p.HasField("sum"):
            w.add(total.join(totals), STALE_NAN if stale else p.sum, ts)
        w.add(count.join(totals), STALE_NAN if stale else p.count, ts)
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
    view = metrics_view().FromString(request.SerializeToString())
    for rm in view.resource_metrics:
        res = {kv.key: kv.value.string_value for kv in rm.resource.attributes
               if kv.key in ("service.name", "service.namespace", "service.instance.id")}
        base: Labels = {}
        if res.get("service.name"):
            ns = res.get("service.namespace")
            base["job"] = w.pair("job", f"{ns}/{res['service.name']}" if ns
                                 else res["service.name"])
        if res.get("service.instance.id"):
            base["instance"] = w.pair("instance", res["service.instance.id"])
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
