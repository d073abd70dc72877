"""Encode points Phoenix made itself (merged series) as a validated remote-write batch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from phoenixcp.api.prometheus import remote_pb2
from phoenixcp.core.batch import LabelSet, MetricBatch
from phoenixcp.platform.ingest.remote_write import decode_remote_write

__all__ = ["batch_of_points"]


def batch_of_points(tenant: str, points: Iterable[tuple[LabelSet, int, float]], *,
                    received_at: int | None = None) -> MetricBatch:
    """One batch holding ``points`` (``(labels, timestamp_ms, value)``), one TimeSeries per
    label set with its points in the order given; labels are written sorted by name."""
    request = remote_pb2.WriteRequest()
    by_labels: dict[LabelSet, Any] = {}
    for labels, ts, value in points:
        series = by_labels.get(labels)
        if series is None:
            series = by_labels[labels] = request.timeseries.add()
            for name, label_value in sorted(labels):
                series.labels.add(name=name, value=label_value)
        series.samples.add(value=value, timestamp=ts)
    return decode_remote_write(request.SerializeToString(), tenant=tenant,
                               content_encoding="identity", received_at=received_at)
