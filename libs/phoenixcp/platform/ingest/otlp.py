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
converted yet), histograms whose bucket counts do not match their bounds (bounds + 1, or
neither bounds nor counts) or whose bounds are not strictly increasing (NaN included), and
metrics with no data. An explicit ``+Inf`` last bound (some SDKs send one) is dropped: its
bucket and the one past it (empty by definition) are the one ``le="+Inf"`` bucket.

How it is fast: the request's bytes, as both receivers (OTLP/gRPC, OTLP/HTTP) get them, are
walked by ``_otlpconvert`` (C, ADR 0013; ``_otlpconvert_py`` is its pure-Python twin) in
place of a protobuf parse; it writes the series bytes itself and
asks this module (a :class:`_Translation`) each naming question once per request: a
resource's labels, a metric's names, one serialized attribute's label, a bounds list's ``le``
labels. Every decision of the specification above is made here, in Python.
"""

from __future__ import annotations

import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from phoenixcp.api.prometheus import remote_pb2, types_pb2
from phoenixcp.core.batch import MetricBatch
from phoenixcp.core.wire import varint as _varint
from phoenixcp.errors import InvalidArgument
from phoenixcp.platform.ingest import _otlpconvert_py
from phoenixcp.platform.ingest._otlpconvert_py import (
    EXPONENTIAL,
    GAUGE,
    HISTOGRAM,
    NONE,
    SUM,
    SUMMARY,
    Hooks,
    Label,
    not_utf8,
)
from phoenixcp.platform.ingest.otlp_naming import (
    attribute_labels,
    label_name,
    metric_name,
    unit_name,
)
from phoenixcp.platform.ingest.otlp_view import raw_strings_view
from phoenixcp.platform.ingest.remote_write import batch_from_scan, validate_write_request

__all__ = ["CONVERTER", "Rejected", "decode_otlp", "export_response"]

Converter = Callable[[bytes, Hooks], bytes]
"""``_otlpconvert.convert``'s contract (see ``_otlpconvert_py``)."""

try:
    from phoenixcp.platform.ingest import _otlpconvert  # type: ignore[attr-defined]

    _convert: Converter = _otlpconvert.convert
    CONVERTER = "c"
except ImportError:  # the extension is not built: same contract, slower
    _convert = _otlpconvert_py.convert
    CONVERTER = "python"

_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_MT = types_pb2.MetricMetadata
_INF = float("inf")
_JOB_KEYS = ("service.name", "service.namespace", "service.instance.id")
_META_TYPES = {GAUGE: _MT.GAUGE, SUM: _MT.GAUGE, HISTOGRAM: _MT.HISTOGRAM,
               SUMMARY: _MT.SUMMARY}
_M = TypeVar("_M", KeyValue, Resource)


@dataclass(frozen=True, slots=True)
class Rejected:
    """What OTLP's ``partial_success`` reports: refused data points and why (empty if none)."""

    data_points: int = 0
    message: str = ""


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


class _Translation:
    """The naming side of one request's conversion (the converter's :class:`Hooks`): answers
    each question per the specification, encodes labels (each pair once), and collects the
    metadata (one entry per family) and the refused points with their reasons. One per
    request; not thread-safe."""

    def __init__(self) -> None:
        self.metadata = remote_pb2.WriteRequest()
        self.families: set[str] = set()
        self.refused_points = 0
        self.reasons: Counter[str] = Counter()
        self._pairs: dict[tuple[str, str], bytes] = {}
        self._metric = ""

    def pair(self, name: str, value: str) -> bytes:
        """``name=value`` as a ``TimeSeries.labels`` entry."""
        found = self._pairs.get((name, value))
        if found is None:
            name_b, value_b = name.encode(), value.encode()
            label = (_field(0x0A, name_b) if name_b else b"") + (
                _field(0x12, value_b) if value_b else b"")
            found = self._pairs[(name, value)] = _field(0x0A, label)
        return found

    def _label(self, name: str, value: str) -> Label:
        return name.encode(), self.pair(name, value)

    def resource(self, data: bytes) -> list[Label]:
        res = {kv.key: kv.value.string_value
               for kv in _parsed(Resource, data, metric=None).attributes
               if kv.key in _JOB_KEYS}
        base: list[Label] = []
        if res.get("service.name"):
            ns = res.get("service.namespace")
            base.append(self._label("job", f"{ns}/{res['service.name']}" if ns
                                    else res["service.name"]))
        if res.get("service.instance.id"):
            base.append(self._label("instance", res["service.instance.id"]))
        return base

    def _refuse(self, points: int, reason: str) -> None:
        if points:
            self.refused_points += points
            self.reasons[reason] += points

    def metric(self, name: str, description: str, unit: str, kind: int, monotonic: bool,
               temporality: int, points: int) -> tuple[bytes, ...] | None:
        if kind == NONE:
            return None
        counter = kind == SUM and monotonic
        family = metric_name(name, unit, counter=counter,
                             gauge=kind in (GAUGE, SUM) and not counter)
        if not family:
            self._refuse(points, f"metric {name!r}: the name is empty after sanitising")
            return None
        if kind == EXPONENTIAL:
            self._refuse(points, f"metric {name!r}: exponential histograms are not "
                                 "supported; send explicit-bucket histograms")
            return None
        if kind in (SUM, HISTOGRAM) and temporality != _CUMULATIVE:
            self._refuse(points, f"metric {name!r}: only cumulative temporality is "
                                 "supported (Prometheus stores cumulative values); configure "
                                 "the SDK for cumulative or use the deltatocumulative processor")
            return None
        self._family(family, _MT.COUNTER if counter else _META_TYPES[kind], description, unit)
        self._metric = name
        if kind == HISTOGRAM:
            return tuple(self.pair("__name__", family + s) for s in ("_bucket", "_sum", "_count"))
        if kind == SUMMARY:
            return tuple(self.pair("__name__", family + s) for s in ("", "_sum", "_count"))
        return (self.pair("__name__", family),)

    def refused(self, points: int, counts: int, bounds: bytes) -> None:
        metric = f"metric {self._metric!r}: histogram"
        problem = _bounds_problem(array("d", bounds))
        n = len(bounds) // 8
        if problem:
            self._refuse(points, f"{metric} explicit_bounds must be strictly increasing and "
                                 f"not NaN; got {problem}")
        elif counts:
            self._refuse(points, f"{metric} has {counts} bucket counts for {n} bounds (send "
                                 "bounds + 1 bucket counts, or neither bounds nor bucket "
                                 "counts for count and sum only)")
        else:
            self._refuse(points, f"{metric} has {n} bounds but no bucket counts (send "
                                 "bounds + 1 bucket counts, or neither bounds nor bucket "
                                 "counts for count and sum only)")

    def attribute(self, data: bytes) -> Label | None:
        kv = _parsed(KeyValue, data, metric=self._metric)
        if not label_name(kv.key):
            return None
        ((name, value),) = attribute_labels([kv]).items()
        return self._label(name, value)

    def colliding(self, attributes: list[bytes]) -> list[Label]:
        labels = attribute_labels(KeyValue.FromString(kv) for kv in attributes)
        return [self._label(name, value) for name, value in labels.items()]

    def bounds(self, packed: bytes) -> tuple[bytes, ...]:
        bounds = array("d", packed)
        if _bounds_problem(bounds):
            return ()
        if bounds and bounds[-1] == _INF:
            # The bucket past an explicit +Inf bound is empty by definition (SDKs that take
            # +Inf as a boundary send it): one le="+Inf" bucket, taking every count.
            bounds.pop()
        return (*(self.pair("le", _le(b)) for b in bounds), self.pair("le", "+Inf"))

    def quantile(self, quantile: float) -> bytes:
        return self.pair("quantile", _le(quantile))

    def _family(self, name: str, kind: int, help_text: str, unit: str) -> None:
        if name not in self.families:
            self.families.add(name)
            main, per = unit_name(unit)
            self.metadata.metadata.add(
                type=kind, metric_family_name=name, help=help_text,
                unit=f"{main}_per_{per}" if per else main,
            )


def _parsed(message: type[_M], data: bytes, *, metric: str | None) -> _M:
    """``message`` (a ``KeyValue`` of a point of ``metric``, or a ``Resource``) parsed from
    ``data``; when upb refuses it for a string that is not UTF-8, ValueError naming the
    attribute key or value, as the converter names a metric's strings."""
    try:
        return message.FromString(data)
    except DecodeError:
        where = "of the resource" if metric is None else f"of metric {metric!r}"
        refusal = _utf8_refusal(message, data, where)
        if refusal is None:
            raise  # broken framing: upb's words
        raise refusal from None


def _utf8_refusal(message: type[_M], data: bytes, where: str) -> ValueError | None:
    """The refusal of the first attribute in ``data`` (a ``KeyValue`` or ``Resource``) whose
    key, or a string in whose value, is not UTF-8; None if there is none."""
    try:
        raw = getattr(raw_strings_view(), message.DESCRIPTOR.name).FromString(data)
    except DecodeError:
        return None
    for kv in [raw] if message is KeyValue else raw.attributes:
        try:
            key = kv.key.decode()
        except UnicodeDecodeError as exc:
            return not_utf8(f"an attribute key {where}", kv.key, exc.start)
        bad = _bad_string(kv.value)
        if bad is not None:
            return not_utf8(f"the value of attribute {key!r} {where}", *bad)
    return None


def _bad_string(value: Any) -> tuple[bytes, int] | None:
    """The first string of a raw ``AnyValue`` (arrays and key-value lists walked) that is not
    UTF-8, with the offset of its first bad byte."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        strings = [value.string_value]
        nested: list[Any] = []
    elif kind == "array_value":
        strings, nested = [], list(value.array_value.values)
    elif kind == "kvlist_value":
        strings = [kv.key for kv in value.kvlist_value.values]
        nested = [kv.value for kv in value.kvlist_value.values]
    else:
        return None
    for text in strings:
        try:
            text.decode()
        except UnicodeDecodeError as exc:
            return text, exc.start
    for inner in nested:
        if (bad := _bad_string(inner)) is not None:
            return bad
    return None


def _bounds_problem(bounds: array[float]) -> str:
    """What makes ``bounds`` unusable (the first NaN, or the first bound not above the one
    before it), or "" when they are strictly increasing."""
    for i, bound in enumerate(bounds):
        if bound != bound:
            return f"NaN at index {i}"
        if i and not bounds[i - 1] < bound:
            return f"{_le(bound)} after {_le(bounds[i - 1])} at index {i}"
    return ""


def _le(bound: float) -> str:
    """A bound (or quantile) as a label value: infinities and NaN as Prometheus writes them
    (``+Inf``, ``-Inf``, ``NaN``), finite values positional and as short as round-trips."""
    if bound != bound:
        return "NaN"
    if bound in (_INF, -_INF):
        return "+Inf" if bound > 0 else "-Inf"
    return str(np.format_float_positional(bound, trim="-"))


def decode_otlp(
    request: ExportMetricsServiceRequest | bytes, *, tenant: str,
    received_at: int | None = None, converter: Converter | None = None,
) -> tuple[MetricBatch, Rejected]:
    """Translate an OTLP export, as its serialized bytes (what both receivers hand over:
    gRPC's request, the HTTP body once inflated) or parsed, into a batch, and what was
    refused (partial success).

    Never raises for bad points: they are counted in :class:`Rejected`. Bytes that are not an
    ``ExportMetricsServiceRequest`` raise :class:`InvalidArgument`: the converter walks them
    in place of a parse, and refuses broken framing and bad UTF-8 in what it reads (names,
    units, descriptions, attributes, the resource), the whole request, saying which string
    (e.g. "the unit of metric 'm' is not valid UTF-8 (byte 0xff at offset 1, after 'k');
    OTLP strings must be UTF-8"); the parts it skips (scopes, exemplars, unknown fields) are
    not checked. Pure CPU work. ``converter`` picks an implementation
    (tests run both); default: the C one if built.
    """
    start = time.monotonic_ns() if received_at is None else received_at
    t = _Translation()
    data = request if isinstance(request, bytes) else request.SerializeToString()
    try:
        series = (converter or _convert)(data, t)
    except (ValueError, DecodeError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidArgument(
            f"the request is not a valid OTLP ExportMetricsServiceRequest: {exc}") from exc
    data = series + t.metadata.SerializeToString()
    batch = batch_from_scan(data, validate_write_request(data), tenant=tenant,
                            received_at=start)
    if not t.refused_points:
        return batch, Rejected()
    reasons = t.reasons
    detail = "; ".join(f"{r} ({n} points)" for r, n in reasons.most_common(3))
    more = f"; and {len(reasons) - 3} more reasons" if len(reasons) > 3 else ""
    return batch, Rejected(t.refused_points,
                           f"{t.refused_points} data points rejected: {detail}{more}")


def export_response(rejected: Rejected) -> ExportMetricsServiceResponse:
    """OTLP's answer to an export of which ``rejected`` was refused (empty when nothing was):
    the reply of both receivers, gRPC's message and the OTLP/HTTP body serialized."""
    reply = ExportMetricsServiceResponse()
    if rejected.data_points:
        reply.partial_success.rejected_data_points = rejected.data_points
        reply.partial_success.error_message = rejected.message
    return reply
