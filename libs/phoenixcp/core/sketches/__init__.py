"""Mergeable sketches of a window's traffic: what every pipeline replica reports and what the
control plane merges into the global view.

* :mod:`.hll`: HyperLogLog (Apache DataSketches ``hll_sketch``) of distinct series keys and
  label values, as serialised bytes; unions are lossless.
* :mod:`.bottom_k`: :class:`BottomK`, the k series with the smallest keys, a uniform sample
  of distinct series that merges exactly.
* :mod:`.quantiles`: :class:`QuantileSketch`, a DDSketch with the bucket layout of
  ``phoenix.v1.DDSketch``, for latencies.

Pure: numpy, datasketches and ddsketch only; no protobuf (the adapters in
:mod:`phoenixcp.platform.telemetry` convert).
"""

from __future__ import annotations

from phoenixcp.core.sketches.bottom_k import DEFAULT_K, MAX_HASH, BottomK, bottom_k_indices
from phoenixcp.core.sketches.hll import (
    HLL_LG_K,
    hll_estimate,
    hll_of_keys,
    hll_of_strings,
    hll_union,
)
from phoenixcp.core.sketches.quantiles import (
    DEFAULT_RELATIVE_ACCURACY,
    QuantileSketch,
    merge_quantile_sketches,
    quantile_sketch,
)

__all__ = [
    "DEFAULT_K",
    "DEFAULT_RELATIVE_ACCURACY",
    "HLL_LG_K",
    "MAX_HASH",
    "BottomK",
    "QuantileSketch",
    "bottom_k_indices",
    "hll_estimate",
    "hll_of_keys",
    "hll_of_strings",
    "hll_union",
    "merge_quantile_sketches",
    "quantile_sketch",
]
