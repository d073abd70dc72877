"""The mergers' state in C (_mergecore, ADR 0009) behaves exactly as the Python reference."""

from __future__ import annotations

import gc
import math
import struct
import weakref
from collections.abc import Hashable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenixcp.core.aggregation import CumulativeMerger, GaugeFunction, GaugeMerger, MergeConfig
from phoenixcp.core.aggregation._counters import (
    MERGE_STATE,
    MergedPoint,
    _PyCumulativeMerger,
)
from phoenixcp.core.aggregation._gauges import _exact_sum, _PyGaugeMerger
from phoenixcp.core.series import STALE_NAN, is_stale_marker

pytestmark = pytest.mark.unit

IDLE = MergeConfig(idle_timeout=timedelta(seconds=2))
GROUPS: list[Hashable] = ["g0", "g1", ("g", 2), (("__name__", "m"), ("job", "j"))]
SERIES: list[Hashable] = [0, 1, 2, 3, 2**63 + 5, "a", "b", ("s", 1)]
INT_SERIES = [0, 1, 2, 3, 2**63 + 5]  # what observe_many can carry (keys < 2**64)
SPECIAL = [0.0, -0.0, 1.0, 2.5, -1.0, math.nan, STALE_NAN, math.inf, -math.inf, 1e308, -1e308,
           5e-324, 2.0**53, 2.0**53 + 2]
VALUES = st.one_of(st.sampled_from(SPECIAL), st.integers(-50, 50).map(float), st.floats())
TS = st.one_of(st.sampled_from([0, 1_000, 2_000]), st.integers(0, 6_000))  # ties are common
NOW = st.integers(0, 10_000)
POINT = st.tuples(st.integers(0, len(GROUPS) - 1), st.integers(0, len(INT_SERIES) - 1), TS,
                  VALUES)
OP = st.one_of(
    st.tuples(st.just("observe"), st.integers(0, len(GROUPS) - 1),
              st.integers(0, len(SERIES) - 1), TS, VALUES),
    st.tuples(st.just("many"), st.lists(POINT, max_size=24)),
    st.tuples(st.just("flush"), NOW),
    st.tuples(st.just("seed"), st.integers(0, len(GROUPS) - 1),
              st.integers(0, len(SERIES) - 1), TS, VALUES),
    st.tuples(st.just("close"), NOW),
)


def bits(value: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", value))[0])


def same_value(a: float, b: float, *, signed_zero: bool = True) -> bool:
    """Equal bit for bit (NaNs included); ``signed_zero=False`` lets 0.0 match -0.0."""
    if math.isnan(a) or math.isnan(b) or signed_zero:
        return bits(a) == bits(b)
    return a == b


def same_points(got: list[MergedPoint], want: list[MergedPoint], *,
                signed_zero: bool = True) -> bool:
    return len(got) == len(want) and all(
        type(g) is MergedPoint and g[:2] == w[:2]
        and same_value(g.value, w.value, signed_zero=signed_zero)
        for g, w in zip(got, want, strict=True))


def batch(merger: Any, points: list[tuple[int, int, int, float]]) -> Any:
    """observe_many over points given as (group index, series index, ts, value)."""
    gids = np.array([merger.group_id(GROUPS[g]) for g, _, _, _ in points], dtype=np.int32)
    series = np.array([INT_SERIES[s] for _, s, _, _ in points], dtype=np.uint64)
    ts = np.array([t for _, _, t, _ in points], dtype=np.int64)
    values = np.array([v for _, _, _, v in points], dtype=np.float64)
    return merger.observe_many(gids, series, ts, values)


def run_both(c: Any, py: Any, ops: list[tuple[Any, ...]], *, signed_zero: bool = True) -> None:
    for op in ops:
        match op:
            case ("observe", g, s, ts, value):
                assert c.observe(GROUPS[g], SERIES[s], ts, value) == py.observe(
                    GROUPS[g], SERIES[s], ts, value), op
            case ("many", points):
                got, want = batch(c, points), batch(py, points)
                assert got.dtype == np.bool_ and got.tolist() == want.tolist(), op
            case ("seed", g, s, ts, value):
                if hasattr(py, "seed"):
                    c.seed(GROUPS[g], SERIES[s], ts, value)
                    py.seed(GROUPS[g], SERIES[s], ts, value)
            case ("flush", now):
                assert same_points(c.flush(now), py.flush(now), signed_zero=signed_zero), op
            case ("close", now):
                assert same_points(c.close(now), py.close(now), signed_zero=signed_zero), op
        assert len(c) == len(py)
        if hasattr(py, "total"):
            for group in GROUPS:
                got, want = c.total(group), py.total(group)
                assert (got is None) == (want is None)
                if got is not None and want is not None:
                    assert same_value(got, want)


def test_the_c_extension_is_built() -> None:
    """A CI that silently fell back to the reference would not measure what it ships."""
    assert MERGE_STATE == "c"
    assert CumulativeMerger is not _PyCumulativeMerger
    assert GaugeMerger is not _PyGaugeMerger


def test_the_c_backed_mergers_have_the_reference_api() -> None:
    for c, py in ((CumulativeMerger, _PyCumulativeMerger), (GaugeMerger, _PyGaugeMerger)):
        public = {n for n in dir(py) if not n.startswith("_")} | {"__len__"}
        assert public <= set(dir(c))


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(OP, max_size=40))
def test_cumulative_c_state_matches_the_reference(ops: list[tuple[Any, ...]]) -> None:
    run_both(CumulativeMerger(config=IDLE), _PyCumulativeMerger(config=IDLE), ops)


@pytest.mark.parametrize("function", list(GaugeFunction))
@settings(max_examples=150, deadline=None)
@given(ops=st.lists(OP, max_size=40))
def test_gauge_c_state_matches_the_reference(function: GaugeFunction,
                                             ops: list[tuple[Any, ...]]) -> None:
    run_both(GaugeMerger(function=function, config=IDLE),
             _PyGaugeMerger(function=function, config=IDLE), ops,
             signed_zero=function not in (GaugeFunction.MIN, GaugeFunction.MAX))


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(OP, max_size=40), before_wrap=st.integers(0, 12))
def test_last_survives_the_arrival_numbers_wrapping(ops: list[tuple[Any, ...]],
                                                    before_wrap: int) -> None:
    """Arrival numbers (LAST's tie-break) are 32 bits in C and renumbered before they wrap."""
    c: Any = GaugeMerger(function=GaugeFunction.LAST, config=IDLE)
    c._arrivals = 2**32 - 1 - before_wrap
    run_both(c, _PyGaugeMerger(function=GaugeFunction.LAST, config=IDLE), ops)


@pytest.mark.skipif(MERGE_STATE != "c", reason="the C state's 32-bit arrival numbers")
def test_last_ties_go_to_the_point_received_last_across_a_renumbering() -> None:
    m: Any = GaugeMerger(function=GaugeFunction.LAST)
    m._arrivals = 2**32 - 3
    for series, value in ((1, 1.0), (2, 2.0), (3, 3.0)):
        assert m.observe("g", series, 1_000, value)
    assert m._arrivals == 3  # renumbered before the third point
    assert m.flush(2_000) == [("g", 2_000, 3.0)]
    assert m.observe("g", 3, 3_000, STALE_NAN)  # the latest goes: the one before it wins
    assert m.flush(4_000) == [("g", 4_000, 2.0)]


@pytest.mark.parametrize("kind", ["cumulative", *GaugeFunction])
@settings(max_examples=100, deadline=None)
@given(chunks=st.lists(st.tuples(st.lists(POINT, max_size=30), NOW), max_size=6))
def test_observe_many_equals_observe_in_turn(
    kind: str | GaugeFunction, chunks: list[tuple[list[tuple[int, int, int, float]], int]],
) -> None:
    def make() -> Any:
        if isinstance(kind, GaugeFunction):
            return GaugeMerger(function=kind, config=IDLE)
        return CumulativeMerger(config=IDLE)

    many, each = make(), make()
    for points, now in chunks:
        got = batch(many, points).tolist()
        assert got == [each.observe(GROUPS[g], INT_SERIES[s], t, v) for g, s, t, v in points]
        assert same_points(many.flush(now), each.flush(now))


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.one_of(st.floats(), st.sampled_from(SPECIAL[1:])), min_size=1,
                       max_size=30))
def test_gauge_sums_are_math_fsum_bit_for_bit(values: list[float]) -> None:
    c = GaugeMerger(function=GaugeFunction.SUM)
    finite = [v for v in values if not math.isnan(v)]
    for i, v in enumerate(finite):
        assert c.observe("g", i, 0, v)
    if finite:
        [(_, _, got)] = c.flush(1)
        assert same_value(got, _exact_sum(finite))
        if all(math.isfinite(v) for v in finite) and max(map(abs, finite)) < 1e290:
            assert same_value(got, math.fsum(finite))


# --- examples -------------------------------------------------------------------------------


def test_a_batch_of_one_series_applies_its_points_in_order() -> None:
    m = CumulativeMerger()
    g = m.group_id("g")
    accepted = m.observe_many(np.array([g, g, g, g], dtype=np.int32),
                              np.array([7, 7, 7, 7], dtype=np.uint64),
                              np.array([1_000, 2_000, 1_500, 3_000], dtype=np.int64),
                              np.array([5.0, 8.0, 9.0, 2.0]))
    assert accepted.tolist() == [True, True, False, True]  # 1_500 is older than 2_000
    assert m.total("g") == 5.0 + 3.0 + 2.0  # 8 -> 2 is a reset: 2 counted since


def test_a_series_that_moves_to_another_group_counts_whole_there() -> None:
    m = CumulativeMerger()
    a, b = m.group_id("a"), m.group_id("b")
    m.observe_many(np.array([a, b], dtype=np.int32), np.array([1, 1], dtype=np.uint64),
                   np.array([0, 1_000], dtype=np.int64), np.array([10.0, 12.0]))
    assert (m.total("a"), m.total("b"), len(m)) == (10.0, 12.0, 2)


def test_a_staleness_marker_in_a_batch_ends_a_gauge_input() -> None:
    m = GaugeMerger()
    m.observe("g", 1, 0, 5.0)
    m.observe("g", 2, 0, 7.0)
    assert m.flush(1_000) == [("g", 1_000, 12.0)]
    g = m.group_id("g")
    accepted = m.observe_many(np.array([g, g], dtype=np.int32),
                              np.array([1, 3], dtype=np.uint64),
                              np.array([2_000, 2_000], dtype=np.int64),
                              np.array([STALE_NAN, STALE_NAN]))
    assert accepted.tolist() == [True, False]  # series 3 was never live
    assert m.flush(3_000) == [("g", 3_000, 7.0)]


def test_group_ids_are_small_reused_and_not_valid_across_a_flush() -> None:
    m = CumulativeMerger(config=IDLE)
    a = m.group_id("a")
    assert (a, m.group_id("a"), m.group_id("b")) == (0, 0, 1)
    m.observe("a", "s", 0, 1.0)
    assert m.flush(100) == [("a", 100, 1.0)]  # "b" never held state: its id is freed
    assert m.group_id("a") == a  # stable while "a" holds state
    [(_, _, value)] = m.flush(10_000)  # "a" goes idle and is forgotten
    assert is_stale_marker(value)
    with pytest.raises(ValueError, match="unknown group id"):
        m.observe_many(np.array([a], dtype=np.int32), np.array([1], dtype=np.uint64),
                       np.array([0], dtype=np.int64), np.array([1.0]))
    assert m.group_id("c") in (0, 1)


def test_a_bad_batch_is_refused_before_any_point_is_applied() -> None:
    for m in (CumulativeMerger(), GaugeMerger()):
        g = m.group_id("g")
        with pytest.raises(ValueError, match="unknown group id 99"):
            m.observe_many(np.array([g, 99], dtype=np.int32), np.array([1, 2], dtype=np.uint64),
                           np.array([0, 0], dtype=np.int64), np.array([1.0, 1.0]))
        with pytest.raises(ValueError, match="different lengths"):
            m.observe_many(np.array([g], dtype=np.int32), np.array([1, 2], dtype=np.uint64),
                           np.array([0], dtype=np.int64), np.array([1.0]))
        assert len(m) == 0


def test_other_dtypes_and_layouts_are_converted() -> None:
    m = CumulativeMerger()
    g = m.group_id("g")
    values = np.array([[1.0, 0.0], [2.0, 0.0]])[:, 0]  # not contiguous
    accepted = m.observe_many([g, g], np.array([1, 2], dtype=np.int64),
                              np.array([0, 0], dtype=np.int32), values)
    assert accepted.tolist() == [True, True]
    assert m.total("g") == 3.0


def test_observe_takes_any_hashable_series_and_ints_are_their_own_keys() -> None:
    m = GaugeMerger(function=GaugeFunction.LAST)
    assert m.observe("g", ("pod", "a"), 1_000, 1.0)
    assert m.observe("g", np.uint64(5), 1_000, 2.0)
    assert m.observe("g", 5, 1_000, 3.0)  # the same input as np.uint64(5)
    assert len(m) == 2
    assert m.flush(2_000) == [("g", 2_000, 3.0)]


def test_the_gauge_function_can_change() -> None:
    m = GaugeMerger(function=GaugeFunction.SUM)
    m.observe("g", 1, 0, 2.0)
    m.observe("g", 2, 0, 4.0)
    m.function = GaugeFunction.AVG
    assert m.function is GaugeFunction.AVG
    assert m.flush(1) == [("g", 1, 3.0)]


def test_infinite_and_huge_gauge_sums_do_not_raise() -> None:
    for values, want in (([math.inf, 1.0], math.inf), ([math.inf, -math.inf], math.nan),
                         ([1.7e308, 1.7e308, -1.7e308], 1.7e308)):
        for merger in (GaugeMerger(), _PyGaugeMerger()):
            for i, v in enumerate(values):
                merger.observe("g", i, 0, v)
            [(_, _, got)] = merger.flush(1)
            assert got == want or (math.isnan(got) and math.isnan(want))


def test_a_merger_in_a_reference_cycle_is_collected() -> None:
    m = CumulativeMerger()
    m.observe((m,), 1, 0, 1.0)  # the merger holds a group that holds the merger
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None


def test_many_inputs_grow_shrink_and_stay_exact() -> None:
    """Enough inputs to grow the table many times, then idle ones forgotten in one flush."""
    c, py = CumulativeMerger(config=IDLE), _PyCumulativeMerger(config=IDLE)
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 2**63, size=20_000, dtype=np.uint64)
    for m in (c, py):
        gids = np.array([m.group_id(f"g{i % 50}") for i in range(len(keys))], dtype=np.int32)
        m.observe_many(gids, keys, np.arange(len(keys), dtype=np.int64),
                       np.ones(len(keys)))
    assert same_points(c.flush(10_000), py.flush(10_000))
    assert len(c) == len(py) == 20_000
    assert same_points(c.flush(30_000), py.flush(30_000))  # all idle: 50 markers
    assert len(c) == len(py) == 0
