"""Decode a validated ``WriteRequest`` into :class:`~phoenixcp.core.batch.BatchColumns`.

Only policies that rewrite points need this, so it runs lazily (``MetricBatch.columns()``).
It parses with upb and builds one tuple per *distinct* label set: label sets are interned in
a bounded per-process table, so a steady-state workload reuses the same tuple objects.
"""

from __future__ import annotations

import numpy as np

from phoenixcp.api.prometheus import remote_pb2
from phoenixcp.core.batch import BatchColumns, LabelSet, MetricType

__all__ = ["decode_columns"]

_INTERN_MAX = 262_144
_interned: dict[LabelSet, LabelSet] = {}


def _intern(labels: LabelSet) -> LabelSet:
    found = _interned.get(labels)
    if found is not None:
        return found
    if len(_interned) >= _INTERN_MAX:
        _interned.clear()
    _interned[labels] = labels
    return labels


def decode_columns(write_request: bytes) -> BatchColumns:
    """Columns of a ``WriteRequest`` already validated by the receiver."""
    request = remote_pb2.WriteRequest.FromString(write_request)
    label_sets: list[LabelSet] = []
    counts: list[int] = []
    timestamps: list[int] = []
    values: list[float] = []
    for series in request.timeseries:
        label_sets.append(_intern(tuple((lb.name, lb.value) for lb in series.labels)))
        counts.append(len(series.samples))
        for sample in series.samples:
            timestamps.append(sample.timestamp)
            values.append(sample.value)
    types: dict[str, MetricType] = {}
    for meta in request.metadata:
        try:
            types[meta.metric_family_name] = MetricType(meta.type)
        except ValueError:
            types[meta.metric_family_name] = MetricType.UNKNOWN
    return BatchColumns(
        series_index=np.repeat(np.arange(len(counts), dtype=np.int32), counts),
        timestamps=np.array(timestamps, dtype=np.int64),
        values=np.array(values, dtype=np.float64),
        label_sets=tuple(label_sets),
        metric_types=types,
    )
