"""HLL, bottom-k and DDSketch: accuracy and merge properties (core/sketches)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ddsketch import DDSketch
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenixcp.core.sketches import (
    MAX_HASH,
    BottomK,
    bottom_k_indices,
    hll_estimate,
    hll_of_keys,
    hll_of_strings,
    hll_union,
    merge_quantile_sketches,
    quantile_sketch,
)

pytestmark = pytest.mark.unit

# The classic HLL standard error at lg_k = 12; DataSketches' HIP estimator does better
# (1.3%), a union's composite estimator about this well.
SIGMA = 1.04 / math.sqrt(2**12)
ALPHA = 0.01


def distinct_keys(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, MAX_HASH, size=n, dtype=np.uint64, endpoint=True))
    while keys.size < n:  # a collision in 2**64: draw again
        keys = np.unique(np.concatenate([keys, rng.integers(0, MAX_HASH, size=n - keys.size,
                                                            dtype=np.uint64, endpoint=True)]))
    return rng.permutation(keys)


def within_3_sigma(estimate: float, truth: int) -> bool:
    return abs(estimate - truth) <= 3 * SIGMA * truth + 0.5


# Sketch errors are random: a fixed example set keeps a 3-sigma bound from flaking.
@settings(max_examples=40, deadline=None, derandomize=True)
@given(n=st.integers(0, 100_000), seed=st.integers(0, 2**32))
def test_hll_estimate_is_within_3_sigma_of_the_truth(n: int, seed: int) -> None:
    assert within_3_sigma(hll_estimate(hll_of_keys(distinct_keys(n, seed))), n)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(n=st.integers(1, 100_000), cut=st.floats(0, 1), overlap=st.floats(0, 0.5),
       seed=st.integers(0, 2**32))
def test_the_union_of_a_split_set_is_the_sketch_of_the_set(
        n: int, cut: float, overlap: float, seed: int) -> None:
    keys = distinct_keys(n, seed)
    left_end = int(n * cut)
    right_start = max(0, left_end - int(n * overlap))
    left, right = keys[:left_end], keys[right_start:]
    merged = hll_union([hll_of_keys(left), hll_of_keys(right)])
    whole = hll_estimate(hll_of_keys(keys))
    assert within_3_sigma(hll_estimate(merged), n)
    assert abs(hll_estimate(merged) - whole) <= 3 * SIGMA * n + 0.5
    # Merging a part again changes nothing beyond the estimator's noise.
    assert within_3_sigma(hll_estimate(hll_union([hll_of_keys(right), merged, b""])), n)


def test_keys_above_2_63_are_hashed_as_64_bit_integers() -> None:
    # Python ints >= 2**63 would take the binding's float overload and collide.
    top = np.array([2**63 + 5, 2**63 + 6, MAX_HASH], dtype=np.uint64)
    assert hll_estimate(hll_of_keys(top)) == pytest.approx(3, abs=0.01)
    assert hll_of_keys([2**63 + 5]) == hll_of_keys(np.array([2**63 + 5], dtype=np.uint64))
    assert hll_of_keys(np.array([1, 2], dtype=np.int32)) == hll_of_keys([1, 2])
    with pytest.raises(ValueError, match="unsigned"):
        hll_of_keys([-1])


def test_string_sketches_count_distinct_non_empty_values() -> None:
    values = [f"user-{i % 3000}" for i in range(10_000)] + [""]
    assert within_3_sigma(hll_estimate(hll_of_strings(values)), 3000)
    assert hll_estimate(hll_of_strings(["a", "b", "a", ""])) == pytest.approx(2, abs=0.01)
    assert hll_estimate(b"") == 0.0
    with pytest.raises(ValueError, match="HLL"):
        hll_estimate(b"not a sketch")


key_sets = st.lists(st.integers(0, MAX_HASH), max_size=600)


@settings(max_examples=200, deadline=None)
@given(a=key_sets, b=key_sets, k_a=st.integers(1, 300), k_b=st.integers(1, 300))
def test_the_bottom_k_union_is_the_bottom_k_of_the_union(
        a: list[int], b: list[int], k_a: int, k_b: int) -> None:
    union = BottomK.of(np.array(a, dtype=np.uint64), k_a).union(
        BottomK.of(np.array(b, dtype=np.uint64), k_b))
    expected = BottomK.of(np.array(a + b, dtype=np.uint64), min(k_a, k_b))
    assert union.k == expected.k
    assert union.keys.tolist() == expected.keys.tolist() == sorted(set(a + b))[: min(k_a, k_b)]
    assert union.max_hash == expected.max_hash
    assert union.complete == (len(set(a + b)) < union.k)


def test_bottom_k_estimates_the_distinct_count() -> None:
    keys = distinct_keys(100_000, seed=3)
    sample = BottomK.of(keys)
    assert sample.k == 256 and sample.keys.size == 256 and not sample.complete
    assert sample.max_hash == int(np.sort(keys)[255])
    # Relative standard error 1/sqrt(k-2), about 6%.
    assert sample.estimate() == pytest.approx(100_000, rel=4 / math.sqrt(254))
    small = BottomK.of(keys[:100])
    assert small.complete and small.max_hash == MAX_HASH and small.estimate() == 100


def test_a_truncated_sample_records_its_new_k() -> None:
    sample = BottomK.of(distinct_keys(1000, seed=4))
    cut = sample.truncated(100)
    assert cut.k == 100 and cut.keys.tolist() == sample.keys[:100].tolist()
    assert cut.max_hash == int(sample.keys[99]) and not cut.complete
    assert BottomK.of(sample.keys[:50]).truncated(100 - 1).complete
    assert sample.truncated(0).max_hash == 0


def test_bottom_k_indices_point_at_the_smallest_distinct_keys() -> None:
    keys = np.array([9, 1, 1, 5, 3, 3, 7], dtype=np.uint64)
    assert bottom_k_indices(keys, 3).tolist() == [1, 4, 3]
    assert bottom_k_indices(keys, 10).tolist() == [1, 4, 3, 6, 0]
    assert bottom_k_indices(keys, 0).tolist() == []


# A microsecond to 30 years: 1,700 buckets at 1%, under the 2,048 that are kept uncollapsed.
positive_values = st.lists(st.floats(1e-6, 1e9, allow_nan=False), min_size=1, max_size=400)


@settings(max_examples=200, deadline=None)
@given(values=positive_values, q=st.floats(0, 1))
def test_ddsketch_quantiles_are_within_the_relative_accuracy(values: list[float], q: float) -> None:
    sketch = quantile_sketch(values)
    truth = float(np.quantile(np.array(values), q, method="lower"))
    estimate = sketch.quantile(q)
    assert estimate is not None
    assert abs(estimate - truth) <= ALPHA * truth * (1 + 1e-9)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300),
       cut=st.floats(0, 1))
def test_ddsketch_merge_is_the_sketch_of_all_values(values: list[float], cut: float) -> None:
    at = int(len(values) * cut)
    merged = merge_quantile_sketches([quantile_sketch(values[:at]), quantile_sketch(values[at:])])
    whole = quantile_sketch(values)
    for store in ("positive", "negative"):
        assert getattr(merged, f"{store}_counts").tolist() == getattr(
            whole, f"{store}_counts").tolist()
        if getattr(whole, f"{store}_counts").size:
            assert getattr(merged, f"{store}_index_offset") == getattr(
                whole, f"{store}_index_offset")
    assert (merged.zero_count, merged.count, merged.min, merged.max) == (
        whole.zero_count, whole.count, whole.min, whole.max)
    assert merged.sum == pytest.approx(whole.sum, abs=1e-6 * (1 + sum(map(abs, values))))


def test_ddsketch_buckets_match_the_reference_implementation() -> None:
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.lognormal(-4, 2, 3000), -rng.lognormal(0, 1, 200), np.zeros(9)])
    sketch = quantile_sketch(values)
    reference = DDSketch(ALPHA)
    for value in values.tolist():
        reference.add(value)
    for ours, theirs in ((sketch.positive_counts, reference._store),
                         (sketch.negative_counts, reference._negative_store)):
        offset = sketch.positive_index_offset if ours is sketch.positive_counts \
            else sketch.negative_index_offset
        start = theirs.min_key - theirs.offset
        assert offset == theirs.min_key
        assert ours.tolist() == theirs.bins[start: start + ours.size]
    assert sketch.zero_count == 9 and sketch.count == values.size
    for q in (0, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 1):
        reference_value = reference.get_quantile_value(q)
        assert reference_value is not None
        clamped = min(max(reference_value, values.min()), values.max())  # ours: in [min, max]
        assert sketch.quantile(q) == pytest.approx(clamped, rel=1e-12)
    # Bucket i holds gamma**(i-1) < v <= gamma**i (common.proto).
    gamma = (1 + ALPHA) / (1 - ALPHA)
    one = quantile_sketch([gamma**10 * 0.999_999, gamma**10 * 1.000_001])
    assert one.positive_index_offset == 10 and one.positive_counts.tolist() == [1, 1]


def test_an_empty_ddsketch_has_no_quantiles_and_wide_data_collapses_low_buckets() -> None:
    empty = quantile_sketch([])
    assert empty.quantile(0.5) is None and empty.count == 0 and empty.min == 0
    assert quantile_sketch([math.nan, math.inf]).count == 0
    wide = quantile_sketch([1e-300, 1e-100, 1.0, 1e300], max_buckets=100)
    assert wide.positive_counts.size == 100 and wide.positive_counts.sum() == 4
    assert wide.quantile(1) == pytest.approx(1e300, rel=ALPHA)
    with pytest.raises(ValueError, match="accuracies"):
        merge_quantile_sketches([quantile_sketch([1.0]), quantile_sketch([1.0], 0.02)])
    with pytest.raises(ValueError, match="quantile"):
        wide.quantile(1.5)
