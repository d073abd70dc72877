"""DDSketch quantile sketches (latencies), with the bucket layout of ``DDSketch`` in
common.proto.

With relative accuracy ``alpha`` and ``gamma = (1 + alpha) / (1 - alpha)``, bucket ``i`` of
the positive store counts values ``v`` with ``gamma**(i - 1) < v <= gamma**i``, i.e.
``i = ceil(log(v) / log(gamma))``; the negative store does the same for ``-v``; values with
``|v|`` at most the smallest indexable value count as zeros. This is the logarithmic mapping
of the DDSketch reference implementation (``ddsketch.LogarithmicMapping``, offset 0), whose
``gamma``, smallest indexable value and bucket representative we use; keys are computed for
a whole array at once with numpy. A quantile read back is within ``alpha`` (relative) of the
true sample quantile at rank ``floor(q * (count - 1))`` (numpy's ``method="lower"``).

Each store keeps at most ``max_buckets`` consecutive buckets (2,048 by default: values from
a microsecond to a day need about 1,260 at 1%); wider data collapses its lowest buckets into
one, losing accuracy only on the lowest quantiles, as ddsketch's ``CollapsingLowestDenseStore``.

Pure and thread-safe: values are immutable.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
from ddsketch.mapping import LogarithmicMapping

__all__ = [
    "DEFAULT_MAX_BUCKETS",
    "DEFAULT_RELATIVE_ACCURACY",
    "QuantileSketch",
    "merge_quantile_sketches",
    "quantile_sketch",
]

DEFAULT_RELATIVE_ACCURACY: Final = 0.01
DEFAULT_MAX_BUCKETS: Final = 2048

Counts = npt.NDArray[np.float64]


def _empty() -> Counts:
    return np.zeros(0, dtype=np.float64)


@dataclass(frozen=True, slots=True, eq=False)
class QuantileSketch:
    """The fields of ``phoenix.v1.DDSketch``: bucket counts from an index offset per store,
    the zero count, and the exact count, sum, min and max (0 when empty)."""

    relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY
    positive_index_offset: int = 0
    positive_counts: Counts = field(default_factory=_empty)
    negative_index_offset: int = 0
    negative_counts: Counts = field(default_factory=_empty)
    zero_count: float = 0.0
    count: float = 0.0
    sum: float = 0.0
    min: float = 0.0
    max: float = 0.0

    def quantile(self, q: float) -> float | None:
        """The value at quantile ``q`` (0..1), ``None`` when the sketch is empty.

        Raises ``ValueError`` for ``q`` outside [0, 1].
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"a quantile is between 0 and 1, got {q}")
        if self.count <= 0:
            return None
        mapping = _mapping(self.relative_accuracy)
        rank = q * (self.count - 1)
        negatives = float(self.negative_counts.sum())
        if rank < negatives:
            # Ranks count from the most negative value: walk the negative store downwards.
            key = _key_at(self.negative_counts, negatives - rank - 1, lower=False)
            value = -mapping.value(key + self.negative_index_offset)
        elif rank < negatives + self.zero_count:
            value = 0.0
        else:
            key = _key_at(self.positive_counts, rank - negatives - self.zero_count, lower=True)
            value = mapping.value(key + self.positive_index_offset)
        # The true quantile lies in [min, max]; clamping can only bring the answer closer.
        return min(max(value, self.min), self.max)


def _key_at(counts: Counts, rank: float, *, lower: bool) -> int:
    """Index of the bucket holding the value of ``rank`` (ddsketch's ``key_at_rank``)."""
    running = np.cumsum(counts)
    if lower:
        index = int(np.searchsorted(running, rank, side="right"))
    else:
        index = int(np.searchsorted(running, rank + 1, side="left"))
    return min(index, counts.size - 1)


@functools.lru_cache(maxsize=8)
def _mapping(relative_accuracy: float) -> LogarithmicMapping:
    if not 0.0 < relative_accuracy < 1.0:
        raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy}")
    return LogarithmicMapping(relative_accuracy)


def _store(magnitudes: npt.NDArray[np.float64], log_gamma: float,
           max_buckets: int) -> tuple[int, Counts]:
    if magnitudes.size == 0:
        return 0, _empty()
    keys = np.ceil(np.log(magnitudes) / log_gamma).astype(np.int64)
    offset = int(keys.min())
    counts = np.bincount(keys - offset).astype(np.float64)
    return _collapse(offset, counts, max_buckets)


def _collapse(offset: int, counts: Counts, max_buckets: int) -> tuple[int, Counts]:
    """Fold the lowest buckets into one so at most ``max_buckets`` remain."""
    extra = counts.size - max_buckets
    if extra <= 0:
        return offset, counts
    kept = counts[extra:].copy()
    kept[0] += counts[:extra].sum()
    return offset + extra, kept


def quantile_sketch(
    values: npt.ArrayLike,
    relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
    *,
    max_buckets: int = DEFAULT_MAX_BUCKETS,
) -> QuantileSketch:
    """The sketch of ``values`` (NaN and infinities are left out)."""
    mapping = _mapping(relative_accuracy)
    array = np.asarray(values, dtype=np.float64).ravel()
    array = array[np.isfinite(array)]
    if array.size == 0:
        return QuantileSketch(relative_accuracy=relative_accuracy)
    log_gamma = math.log(mapping.gamma)
    smallest = mapping.min_possible
    positive_offset, positive = _store(array[array > smallest], log_gamma, max_buckets)
    negative_offset, negative = _store(-array[array < -smallest], log_gamma, max_buckets)
    return QuantileSketch(
        relative_accuracy=relative_accuracy,
        positive_index_offset=positive_offset,
        positive_counts=positive,
        negative_index_offset=negative_offset,
        negative_counts=negative,
        zero_count=float(np.count_nonzero(np.abs(array) <= smallest)),
        count=float(array.size),
        sum=float(array.sum()),
        min=float(array.min()),
        max=float(array.max()),
    )


def _add(stores: list[tuple[int, Counts]], max_buckets: int) -> tuple[int, Counts]:
    stores = [(offset, counts) for offset, counts in stores if counts.size]
    if not stores:
        return 0, _empty()
    low = min(offset for offset, _ in stores)
    high = max(offset + counts.size for offset, counts in stores)
    total = np.zeros(high - low, dtype=np.float64)
    for offset, counts in stores:
        total[offset - low: offset - low + counts.size] += counts
    return _collapse(low, total, max_buckets)


def merge_quantile_sketches(
    sketches: Iterable[QuantileSketch],
    *,
    max_buckets: int = DEFAULT_MAX_BUCKETS,
) -> QuantileSketch:
    """The sketch of all values of ``sketches`` (bucket counts add up).

    Raises ``ValueError`` when their relative accuracies differ; no sketches give an empty
    sketch at the default accuracy.
    """
    parts = list(sketches)
    accuracies = {s.relative_accuracy for s in parts}
    if len(accuracies) > 1:
        raise ValueError(f"cannot merge DDSketches of different accuracies {sorted(accuracies)}")
    accuracy = accuracies.pop() if accuracies else DEFAULT_RELATIVE_ACCURACY
    filled = [s for s in parts if s.count > 0]
    if not filled:
        return QuantileSketch(relative_accuracy=accuracy)
    positive_offset, positive = _add(
        [(s.positive_index_offset, s.positive_counts) for s in filled], max_buckets)
    negative_offset, negative = _add(
        [(s.negative_index_offset, s.negative_counts) for s in filled], max_buckets)
    return QuantileSketch(
        relative_accuracy=accuracy,
        positive_index_offset=positive_offset,
        positive_counts=positive,
        negative_index_offset=negative_offset,
        negative_counts=negative,
        zero_count=sum(s.zero_count for s in filled),
        count=sum(s.count for s in filled),
        sum=sum(s.sum for s in filled),
        min=min(s.min for s in filled),
        max=max(s.max for s in filled),
    )
