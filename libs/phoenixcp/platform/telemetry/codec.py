"""Sketch values ↔ their protobuf messages, for the producer and for the control plane.

:func:`quantile_sketch_to_proto` / :func:`quantile_sketch_from_proto` convert a
:class:`~phoenixcp.core.sketches.QuantileSketch` and ``phoenix.v1.DDSketch`` (field for
field); :func:`bottom_k_from_proto` reads the keys of a ``SeriesSample`` as a
:class:`~phoenixcp.core.sketches.BottomK` to merge or estimate with. Pure functions.
"""

from __future__ import annotations

import numpy as np

from phoenixcp.api.phoenix.v1 import common_pb2, telemetry_pb2
from phoenixcp.core.sketches import BottomK, QuantileSketch

__all__ = ["bottom_k_from_proto", "quantile_sketch_from_proto", "quantile_sketch_to_proto"]


def quantile_sketch_to_proto(sketch: QuantileSketch) -> common_pb2.DDSketch:
    """The ``DDSketch`` message of ``sketch``."""
    return common_pb2.DDSketch(
        relative_accuracy=sketch.relative_accuracy,
        positive_index_offset=sketch.positive_index_offset,
        positive_counts=sketch.positive_counts.tolist(),
        negative_index_offset=sketch.negative_index_offset,
        negative_counts=sketch.negative_counts.tolist(),
        zero_count=sketch.zero_count,
        count=sketch.count,
        sum=sketch.sum,
        min=sketch.min,
        max=sketch.max,
    )


def quantile_sketch_from_proto(message: common_pb2.DDSketch) -> QuantileSketch:
    """The sketch a ``DDSketch`` message holds; an unset message is an empty 1% sketch.

    Raises ``ValueError`` for a relative accuracy outside (0, 1) on a non-empty sketch.
    """
    if message.count == 0 and message.relative_accuracy == 0:
        return QuantileSketch()
    if not 0.0 < message.relative_accuracy < 1.0:
        raise ValueError(f"DDSketch.relative_accuracy {message.relative_accuracy} is not in (0, 1)")
    return QuantileSketch(
        relative_accuracy=message.relative_accuracy,
        positive_index_offset=message.positive_index_offset,
        positive_counts=np.asarray(message.positive_counts, dtype=np.float64),
        negative_index_offset=message.negative_index_offset,
        negative_counts=np.asarray(message.negative_counts, dtype=np.float64),
        zero_count=message.zero_count,
        count=message.count,
        sum=message.sum,
        min=message.min,
        max=message.max,
    )


def bottom_k_from_proto(sample: telemetry_pb2.SeriesSample) -> BottomK:
    """The keys of a ``SeriesSample`` as a :class:`BottomK` (its ``k`` as recorded).

    Raises ``ValueError`` when the sample holds more series than its ``k``.
    """
    keys = np.fromiter((s.series_hash for s in sample.series), dtype=np.uint64,
                       count=len(sample.series))
    return BottomK(sample.k, np.unique(keys))
