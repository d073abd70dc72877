"""HyperLogLog sketches of distinct series keys and label values, as serialised bytes.

The sketches are Apache DataSketches ``hll_sketch`` objects (C++), serialised compact as
``HLL_4`` (``serialize_compact()``), so any DataSketches implementation (C++, Java, Python,
Rust) reads and merges them. A sketch at ``lg_k`` has a relative standard error of about
``1.04 / sqrt(2**lg_k)`` (1.6% at the default 12), about 2 KiB once it leaves its exact
warm-up mode, and unions are lossless: the union of the sketches of parts of a set is the
sketch of the set (the estimate of a union uses the composite estimator, not HIP, so it may
differ from a single sketch's estimate in the last digits).

**How values are hashed.** DataSketches hashes every update with MurmurHash3_x64_128 (seed
9001) over the value's bytes:

* a series key (an unsigned 64-bit integer) is passed as the signed 64-bit integer with the
  same bits (two's complement), i.e. DataSketches hashes the key's 8 little-endian bytes,
  exactly as Java's ``HllSketch.update(long)`` or C++'s ``update(uint64_t)`` of the key does.
  (Python ints of 2**63 and above would silently take the ``float`` overload; never pass
  them unconverted.)
* a string is hashed over its UTF-8 bytes (Java's ``update(String)``); the empty string is
  ignored, as Prometheus treats an empty label value as an absent label.

Everything here is pure and thread-safe (each call builds its own sketch objects).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from datasketches import HLL_4, hll_sketch  # type: ignore[import-untyped]
from datasketches import hll_union as _Union

__all__ = ["HLL_LG_K", "hll_estimate", "hll_of_keys", "hll_of_strings", "hll_union"]

HLL_LG_K: Final = 12
"""The default log2 of the number of HLL buckets: 4,096 buckets, ~1.6% standard error."""

_MIN_LG_K: Final = 7
_MAX_LG_K: Final = 21


def _check(lg_k: int) -> int:
    if not _MIN_LG_K <= lg_k <= _MAX_LG_K:
        raise ValueError(f"lg_k must be between {_MIN_LG_K} and {_MAX_LG_K}, got {lg_k}")
    return lg_k


def _new(lg_k: int) -> Any:
    return hll_sketch(_check(lg_k), HLL_4)


def hll_of_keys(keys: npt.ArrayLike, lg_k: int = HLL_LG_K) -> bytes:
    """The compact HLL_4 sketch of the distinct 64-bit ``keys`` (a uint64 array or ints).

    Raises ``ValueError`` for ``lg_k`` outside 7..21 or keys outside 0..2**64-1.
    """
    array = np.asarray(keys)
    if array.size and (array.dtype.kind not in "iu"
                       or (array.dtype.kind == "i" and array.min() < 0)):
        raise ValueError(f"series keys must be unsigned 64-bit integers, got {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.uint64)
    sketch = _new(lg_k)
    update = sketch.update
    # The int64 view keeps the bits; tolist() makes Python ints the binding takes as int64.
    for key in array.view(np.int64).tolist():
        update(key)
    return bytes(sketch.serialize_compact())


def hll_of_strings(values: Iterable[str], lg_k: int = HLL_LG_K) -> bytes:
    """The compact HLL_4 sketch of the distinct non-empty strings in ``values`` (UTF-8)."""
    sketch = _new(lg_k)
    update = sketch.update
    for value in values:
        update(value)
    return bytes(sketch.serialize_compact())


def _load(blob: bytes) -> Any:
    try:
        return hll_sketch.deserialize(blob)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"not a serialised DataSketches HLL sketch: {exc}") from None


def hll_estimate(blob: bytes) -> float:
    """The distinct-count estimate of a serialised sketch; ``b""`` is the empty sketch (0).

    Raises ``ValueError`` for bytes that are not a DataSketches HLL sketch.
    """
    if not blob:
        return 0.0
    return float(_load(blob).get_estimate())


def hll_union(blobs: Iterable[bytes], lg_k: int = HLL_LG_K) -> bytes:
    """The union of serialised sketches, serialised compact as HLL_4; empty blobs are skipped.

    The result has the smallest ``lg_k`` among the inputs and ``lg_k`` (DataSketches lowers a
    union to its coarsest input). Raises ``ValueError`` for bytes that are not a sketch.
    """
    union = _Union(_check(lg_k))
    for blob in blobs:
        if blob:
            union.update(_load(blob))
    return bytes(union.get_result(HLL_4).serialize_compact())

