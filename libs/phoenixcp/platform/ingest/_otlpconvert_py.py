"""Pure-Python twin of ``_otlpconvert`` (ADR 0013): the same contract, slower.

``convert(data, hooks)`` walks a serialized ``ExportMetricsServiceRequest`` and returns the
``TimeSeries`` entries of the Prometheus ``WriteRequest`` it becomes (field 1, tag and length
included, series in order of first sample), merging samples of equal label sets. Every
naming and refusal decision is the caller's, through ``hooks`` (see :class:`Hooks`); this
module only walks data points, merges labels (data point attributes, then the resource's
labels, then the slot labels ``__name__``, ``le``, ``quantile`` override by name), sorts them
by name and writes bytes. A label is ``(name as UTF-8, its encoded TimeSeries.labels entry)``.
A histogram point has bounds and one more bucket count, or neither (then its ``le="+Inf"``
bucket is its count); other shapes, and bounds ``Hooks.bounds`` refuses, are refused
(``Hooks.refused``, once per reason and metric). A metric name, description or unit that is
not UTF-8 raises ``ValueError`` worded by :func:`not_utf8`, as the C converter words it;
broken framing raises upb's ``DecodeError`` here, the C converter's own ``ValueError`` there.
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

from phoenixcp.core.series import STALE_NAN
from phoenixcp.core.wire import varint as _varint
from phoenixcp.platform.ingest.otlp_view import metrics_view

__all__ = ["EXPONENTIAL", "GAUGE", "HISTOGRAM", "NONE", "SUM", "SUMMARY", "Hooks", "convert",
           "not_utf8"]

NONE, GAUGE, SUM, HISTOGRAM, EXPONENTIAL, SUMMARY = range(6)
_KINDS = {None: NONE, "gauge": GAUGE, "sum": SUM, "histogram": HISTOGRAM,
          "exponential_histogram": EXPONENTIAL, "summary": SUMMARY}
Label = tuple[bytes, bytes]
_NO_RECORDED_VALUE = 1
_STALE_NAN = STALE_NAN
_PACK_DOUBLE = struct.Struct("<d").pack
_LE, _QUANTILE, _NAME = b"le", b"quantile", b"__name__"
#: At most this many bytes of valid text before a bad byte are quoted (as the C converter).
_BEFORE_BYTES = 32


def not_utf8(what: str, data: bytes, at: int) -> ValueError:
    """The refusal of ``data``, a string field that is not UTF-8 from offset ``at`` (the
    ``start`` of its ``UnicodeDecodeError``): ``what`` it is, the bad byte and the text
    before it, and what OTLP allows. The C converter words it the same."""
    if not at:
        return ValueError(f"{what} is not valid UTF-8 (byte 0x{data[0]:02x} at offset 0); "
                          "OTLP strings must be UTF-8")
    start = max(0, at - _BEFORE_BYTES)
    # "ignore": the cut may fall inside a character; all before ``at`` is valid
    before = ("..." if start else "") + data[start:at].decode("utf-8", "ignore")
    return ValueError(f"{what} is not valid UTF-8 (byte 0x{data[at]:02x} at offset {at}, "
                      f"after {before!r}); OTLP strings must be UTF-8")


def _text(data: bytes, what: str, metric: str | None = None) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise not_utf8(what if metric is None else f"{what} {metric!r}", data,
                       exc.start) from None


class Hooks(Protocol):
    """What ``convert`` asks its caller, once per distinct question within one call."""

    def resource(self, data: bytes) -> list[Label]:
        """The labels a serialized ``Resource`` gives every point under it."""

    def metric(self, name: str, description: str, unit: str, kind: int, monotonic: bool,
               temporality: int, points: int) -> tuple[bytes, ...] | None:
        """The ``__name__`` labels of a metric's series, or None to skip its points:
        (name,) for gauge and sum, (bucket, sum, count) for histogram, (name, sum, count)
        for summary."""

    def attribute(self, data: bytes) -> Label | None:
        """The label of one serialized attribute ``KeyValue``; None if it gives none."""

    def colliding(self, attributes: list[bytes]) -> list[Label]:
        """The labels of a point whose attributes' label names collide."""

    def bounds(self, packed: bytes) -> tuple[bytes, ...]:
        """The ``le`` labels of a histogram's bounds (native doubles) and ``+Inf``, or () to
        refuse its points. When the last bound is +Inf itself, one label fewer: the ``+Inf``
        bucket then also takes the count past that bound."""

    def quantile(self, quantile: float) -> bytes:
        """The ``quantile`` label of a summary quantile."""

    def refused(self, points: int, counts: int, bounds: bytes) -> None:
        """The metric just walked refused ``points`` histogram points for one reason; the last
        of them had ``counts`` bucket counts and ``bounds`` (native doubles). Called after
        the metric's points, at most twice: first for the points whose ``bounds()`` answer
        was (), then for those whose bucket counts do not fit their bounds."""


class _Series:
    def __init__(self) -> None:
        self.samples: dict[bytes, list[bytes]] = {}

    def add(self, labels: dict[bytes, bytes], value: float, time_ns: int) -> None:
        key = b"".join([labels[name] for name in sorted(labels)])
        ts = time_ns // 1_000_000
        sample = (b"\x09" + _PACK_DOUBLE(value) if value or str(value)[0] == "-" else b"") + (
            b"\x10" + _varint(ts) if ts else b"")
        self.samples.setdefault(key, [key]).append(b"\x12" + _varint(len(sample)) + sample)

    def entries(self) -> bytes:
        out = []
        for parts in self.samples.values():
            body = b"".join(parts)
            out.append(b"\x0a" + _varint(len(body)) + body)
        return b"".join(out)


def _attributes(hooks: Hooks, known: dict[bytes, Label | None], raw: Any) -> dict[bytes, bytes]:
    labels: dict[bytes, bytes] = {}
    for kv in raw:
        if kv not in known:
            known[kv] = hooks.attribute(kv)
        found = known[kv]
        if found is not None:
            if found[0] in labels:
                return dict(hooks.colliding(list(raw)))
            labels[found[0]] = found[1]
    return labels


def convert(data: bytes, hooks: Hooks) -> bytes:
    """The WriteRequest's TimeSeries entries for the serialized request ``data``."""
    out = _Series()
    known: dict[bytes, Label | None] = {}
    les: dict[bytes, tuple[bytes, ...]] = {}
    for rm in metrics_view().FromString(data).resource_metrics:
        base = dict(hooks.resource(rm.resource))
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                field = metric.WhichOneof("data")
                kind = _KINDS[field]
                body = getattr(metric, field) if field else None
                name = _text(metric.name, "metric name")
                names = hooks.metric(
                    name, _text(metric.description, "the description of metric", name),
                    _text(metric.unit, "the unit of metric", name), kind,
                    kind == SUM and metric.sum.is_monotonic,
                    getattr(body, "aggregation_temporality", 0),
                    len(body.data_points) if body is not None else 0)
                if names is None or body is None:
                    continue
                # refused points per reason, with the last one's counts and bounds
                bad_bounds = bad_counts = (0, 0, b"")
                for p in body.data_points:
                    labels = {**_attributes(hooks, known, p.attributes), **base}
                    stale = p.flags & _NO_RECORDED_VALUE
                    t = p.time_unix_nano
                    if kind in (GAUGE, SUM):
                        labels[_NAME] = names[0]
                        if stale:
                            value = _STALE_NAN
                        elif p.WhichOneof("value") == "as_int":
                            value = float(p.as_int)
                        else:
                            value = p.as_double
                        out.add(labels, value, t)
                    elif kind == HISTOGRAM:
                        bounds, counts = list(p.explicit_bounds), list(p.bucket_counts)
                        key = struct.pack(f"={len(bounds)}d", *bounds)
                        if key not in les:
                            les[key] = hooks.bounds(key)
                        if not les[key]:
                            bad_bounds = (bad_bounds[0] + 1, len(counts), key)
                            continue
                        # bounds and counts (one more), or neither; anything else refused
                        if (counts or bounds) and len(counts) != len(bounds) + 1:
                            bad_counts = (bad_counts[0] + 1, len(counts), key)
                            continue
                        *finite, inf = les[key]
                        running = 0
                        for i, n in enumerate(counts):
                            running += n
                            if i < len(finite):
                                out.add({**labels, _NAME: names[0], _LE: finite[i]},
                                        _STALE_NAN if stale else float(running), t)
                        out.add({**labels, _NAME: names[0], _LE: inf},
                                _STALE_NAN if stale else float(running if counts else p.count),
                                t)
                        if p.HasField("sum"):
                            out.add({**labels, _NAME: names[1]}, _STALE_NAN if stale else p.sum,
                                    t)
                        out.add({**labels, _NAME: names[2]},
                                _STALE_NAN if stale else float(p.count), t)
                    else:  # summary
                        labels[_NAME] = names[0]
                        for q in p.quantile_values:
                            out.add({**labels, _QUANTILE: hooks.quantile(q.quantile)},
                                    _STALE_NAN if stale else q.value, t)
                        out.add({**labels, _NAME: names[1]}, _STALE_NAN if stale else p.sum, t)
                        out.add({**labels, _NAME: names[2]},
                                _STALE_NAN if stale else float(p.count), t)
                for points, last_counts, last_bounds in (bad_bounds, bad_counts):
                    if points:
                        hooks.refused(points, last_counts, last_bounds)
    return out.entries()
