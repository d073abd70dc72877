"""Bottom-k samples of distinct series: the k series with the smallest series keys.

Series keys are xxHash64 values, so they are uniform over ``[0, 2**64)`` and the k smallest
form a uniform random sample of the distinct series, the same on every replica. Samples
merge exactly: the union of two samples, cut to the smaller k, is the sample of the union
of the two sets. The k-th smallest key ``max_hash`` estimates the number of distinct series
as ``(k - 1) / (max_hash / 2**64)`` (relative standard error about ``1 / sqrt(k - 2)``, 6%
at k = 256). A sample of a set with fewer than k series holds all of them (``complete``;
``max_hash`` is then ``2**64 - 1``, as in ``SeriesSample`` of telemetry.proto).

Pure and thread-safe: values are immutable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_K", "MAX_HASH", "BottomK", "bottom_k_indices"]

DEFAULT_K: Final = 256
MAX_HASH: Final = 2**64 - 1
_TWO_64: Final = float(2**64)


def bottom_k_indices(keys: npt.NDArray[np.uint64], k: int) -> npt.NDArray[np.intp]:
    """Positions in ``keys`` of its ``k`` smallest distinct values, ascending by key.

    For picking the items (series) that go with a :meth:`BottomK.of` sample; O(n) plus
    O(k log k). A key present more than once is taken at its first position.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    keys = np.asarray(keys, dtype=np.uint64)
    if keys.size == 0 or k == 0:
        return np.empty(0, dtype=np.intp)
    candidates = np.arange(keys.size)
    if keys.size > k:
        smallest = np.argpartition(keys, k - 1)[:k]
        below = np.flatnonzero(keys <= keys[smallest].max())
        # Repeated keys among the k smallest leave fewer than k distinct ones: take them all.
        if np.unique(keys[below]).size >= k:
            candidates = below
    _, first = np.unique(keys[candidates], return_index=True)  # ascending by key
    return candidates[first[:k]]


@dataclass(frozen=True, slots=True, eq=False)
class BottomK:
    """A bottom-k sample: ``keys`` ascending and distinct, at most ``k`` of them.

    Build with :meth:`of`; combine with :meth:`union`. ``k`` may be below 256 for a sample
    that was trimmed to fit a message (:meth:`truncated`); it is always the number of keys
    the sample was cut to, so the estimate stays unbiased.
    """

    k: int
    keys: npt.NDArray[np.uint64]

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"k must be >= 0, got {self.k}")
        if self.keys.size > self.k:
            raise ValueError(f"a bottom-{self.k} sample holds {self.keys.size} keys")

    @classmethod
    def of(cls, keys: npt.ArrayLike, k: int = DEFAULT_K) -> BottomK:
        """The sample of the distinct values of ``keys`` (uint64)."""
        array = np.asarray(keys, dtype=np.uint64)
        return cls(k, array[bottom_k_indices(array, k)])

    @property
    def complete(self) -> bool:
        """Whether the sample holds every key of its set (the set has fewer than k keys)."""
        return self.keys.size < self.k

    @property
    def max_hash(self) -> int:
        """The largest sampled key; ``2**64 - 1`` for a complete sample, 0 for k = 0."""
        if self.complete:
            return MAX_HASH
        return int(self.keys[-1]) if self.keys.size else 0

    def estimate(self) -> float:
        """The estimated number of distinct keys in the sampled set (exact when complete)."""
        if self.complete:
            return float(self.keys.size)
        if self.k < 2:
            return float(self.k)  # (k - 1) / x says nothing with one key
        return (self.k - 1) / (self.max_hash / _TWO_64)

    def union(self, *others: BottomK) -> BottomK:
        """The sample of the union of the sampled sets, with the smallest k of the inputs.

        Exact: every key among the k smallest of the union is among the k smallest of its
        own set, hence in that set's sample.
        """
        samples = (self, *others)
        k = min(s.k for s in samples)
        merged = np.unique(np.concatenate([s.keys for s in samples]))
        return BottomK(k, merged[:k])

    def truncated(self, n: int) -> BottomK:
        """The bottom-n sample of the same set, for n <= k: the n smallest keys.

        A complete sample stays complete only if it holds fewer than n keys.
        """
        if not 0 <= n <= self.k:
            raise ValueError(f"cannot truncate a bottom-{self.k} sample to {n}")
        return BottomK(n, self.keys[:n])
