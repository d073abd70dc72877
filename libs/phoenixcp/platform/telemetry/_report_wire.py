"""The protobuf wire format, written by hand for the hot part of a window report.

A report's sampled series (256 per metric, most of its bytes) are written straight from the
sample's columns instead of being built as messages and serialised: :func:`_series_prefix`
(hash and labels; the caller keeps them from window to window) and :func:`_series_tails`
(points, last value and priority, on arrays). Also here: the field tags (read from the
generated descriptors, so a renumbered field cannot go stale) and the varint and
length-delimited field encoders with which :mod:`.window_report` joins encoded metrics into
parts. The tests check the output byte for byte against the generated code.

Kept apart from :mod:`.window_report` so that one reads as what a report holds and how it is
split, this one as how the bytes are laid out. Private to the telemetry package.
"""

from __future__ import annotations

import math
import struct
from typing import Final

import numpy as np
from google.protobuf.message import Message

from phoenixcp.api.phoenix.v1 import common_pb2, telemetry_pb2
from phoenixcp.core.batch import LabelSet
from phoenixcp.core.policy.window import SeriesColumns
from phoenixcp.core.series import METRIC_NAME_LABEL
from phoenixcp.core.wire import varint as _varint


def _tag(message: type[Message], name: str, wire_type: int) -> bytes:
    return _varint(message.DESCRIPTOR.fields_by_name[name].number << 3 | wire_type)


_LEN, _FIXED64, _VARINT = 2, 1, 0
_METRICS_TAG: Final = _tag(telemetry_pb2.WindowReport, "metrics", _LEN)
_PART_TAG: Final = _tag(telemetry_pb2.WindowReport, "part", _VARINT)
_PART_COUNT_TAG: Final = _tag(telemetry_pb2.WindowReport, "part_count", _VARINT)
_LABELS_TAG: Final = _tag(telemetry_pb2.MetricWindow, "labels", _LEN)
_SAMPLE_TAG: Final = _tag(telemetry_pb2.MetricWindow, "sample", _LEN)
_SERIES_TAG: Final = _tag(telemetry_pb2.SeriesSample, "series", _LEN)
_HASH_TAG: Final = _tag(telemetry_pb2.SampledSeries, "series_hash", _FIXED64)
_LABEL_TAG: Final = _tag(telemetry_pb2.SampledSeries, "labels", _LEN)
_POINTS_TAG: Final = _tag(telemetry_pb2.SampledSeries, "points", _VARINT)
_VALUE_TAG: Final = _tag(telemetry_pb2.SampledSeries, "last_value", _FIXED64)
_PRIORITY_TAG: Final = _tag(telemetry_pb2.SampledSeries, "priority_class", _VARINT)
_LABEL_NAME_TAG: Final = _tag(common_pb2.Label, "name", _LEN)
_LABEL_VALUE_TAG: Final = _tag(common_pb2.Label, "value", _LEN)
_U64 = struct.Struct("<Q").pack
_F64 = struct.Struct("<d").pack
# The tail of a SampledSeries (points, last_value, priority_class), every field present and
# both varints one byte: tag, points, tag, 8 value bytes, tag, priority.
_TAIL_LAYOUT: Final = (slice(0, 2), slice(2, 11), slice(11, 13))


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    return b"".join((tag, _varint(len(payload)), payload))


def _string(tag: bytes, text: str) -> bytes:
    return _field(tag, text.encode()) if text else b""  # proto3 leaves out ""


def _series_prefix(key: int, labels: LabelSet) -> bytes:
    """The ``series_hash`` and ``labels`` fields of a ``SampledSeries``: all labels but
    ``__name__``, sorted by name."""
    return (_HASH_TAG + _U64(key) if key else b"") + b"".join(
        _field(_LABEL_TAG, _string(_LABEL_NAME_TAG, name) + _string(_LABEL_VALUE_TAG, value))
        for name, value in sorted(labels) if name != METRIC_NAME_LABEL)


def _series_tail(points: int, value: float, priority: int) -> bytes:
    """The ``points``, ``last_value`` and ``priority_class`` fields of a ``SampledSeries``,
    as the generated code writes them: zeros left out, but -0.0 kept."""
    return b"".join((
        _POINTS_TAG + _varint(points) if points else b"",
        _VALUE_TAG + _F64(value) if value or math.copysign(1.0, value) < 0 else b"",
        _PRIORITY_TAG + _varint(priority) if priority else b"",
    ))


def _series_tails(columns: SeriesColumns) -> list[bytes]:
    """:func:`_series_tail` of every series, on arrays when each varint is one byte."""
    points, values, priorities = columns.points, columns.last_values, columns.priorities
    n = len(points)
    if not n or int(points.min()) < 0 or int(points.max()) >= 0x80 or int(
            priorities.min()) < 0 or int(priorities.max()) >= 0x80:
        return [_series_tail(p, v, c) for p, v, c in zip(
            points.tolist(), values.tolist(), priorities.tolist(), strict=True)]
    tails = np.empty((n, 13), dtype=np.uint8)
    tails[:, 0], tails[:, 1] = _POINTS_TAG[0], points
    tails[:, 2] = _VALUE_TAG[0]
    tails[:, 3:11] = np.ascontiguousarray(values, dtype="<f8").view(np.uint8).reshape(n, 8)
    tails[:, 11], tails[:, 12] = _PRIORITY_TAG[0], priorities
    present = np.empty((n, 13), dtype=bool)
    for part, kept in zip(_TAIL_LAYOUT, (points != 0, (values != 0) | np.signbit(values),
                                         priorities != 0), strict=True):
        present[:, part] = kept[:, None]
    flat = tails[present].tobytes()
    ends = np.cumsum(present.sum(axis=1)).tolist()
    return [flat[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
