"""Gauge merging (phoenixcp.core.aggregation.GaugeMerger)."""

from __future__ import annotations

from collections.abc import Hashable
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenixcp.core.aggregation import GaugeFunction, GaugeMerger, LabelReduction, MergeConfig
from phoenixcp.core.series import STALE_NAN, is_stale_marker

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("function", "want"), [
    (GaugeFunction.SUM, 9.0), (GaugeFunction.AVG, 3.0), (GaugeFunction.MIN, 1.0),
    (GaugeFunction.MAX, 6.0), (GaugeFunction.LAST, 2.0),
])
def test_each_function_over_the_latest_values(function: GaugeFunction, want: float) -> None:
    m = GaugeMerger(function=function)
    m.observe("g", "a", 1_000, 6.0)
    m.observe("g", "b", 1_500, 2.0)
    m.observe("g", "c", 1_200, 4.0)
    m.observe("g", "c", 1_300, 1.0)  # c's latest value replaces its earlier one
    assert m.flush(2_000) == [("g", 2_000, want)]


def test_inputs_that_skip_a_window_still_count() -> None:
    m = GaugeMerger()
    m.observe("g", "a", 0, 5.0)
    m.observe("g", "b", 0, 7.0)
    m.flush(15_000)
    m.observe("g", "a", 16_000, 6.0)  # b reports every 30 s
    assert m.flush(30_000) == [("g", 30_000, 13.0)]


def test_a_stale_input_leaves_and_the_last_one_ends_the_group() -> None:
    m = GaugeMerger()
    m.observe("g", "a", 0, 5.0)
    m.observe("g", "b", 0, 7.0)
    m.flush(1_000)
    assert m.observe("g", "a", 2_000, STALE_NAN)
    assert m.flush(3_000) == [("g", 3_000, 7.0)]
    assert m.observe("g", "b", 4_000, STALE_NAN)
    [(_, _, value)] = m.flush(5_000)
    assert is_stale_marker(value)
    assert not m.observe("g", "b", 6_000, float("nan"))


def test_idle_inputs_are_forgotten() -> None:
    m = GaugeMerger(config=MergeConfig(idle_timeout=timedelta(seconds=10)))
    m.observe("g", "a", 0, 5.0)
    m.observe("g", "b", 8_000, 7.0)
    assert m.flush(12_000) == [("g", 12_000, 7.0)]
    assert not m.observe("g", "b", 7_000, 1.0)  # older than b's latest


REDUCE = LabelReduction(without=("pod",))
# (pod, value or None for a staleness marker, flush?)
STEP = st.tuples(st.integers(0, 9), st.none() | st.integers(-1_000, 1_000), st.booleans())


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(STEP, max_size=100))
def test_summed_gauges_equal_the_sum_of_the_live_inputs(
    steps: list[tuple[int, int | None, bool]],
) -> None:
    merger = GaugeMerger(function=GaugeFunction.SUM)
    latest: dict[int, int] = {}
    exported: dict[Hashable, float] = {}
    now = 0

    def group(pod: int) -> Hashable:
        return REDUCE.apply((("__name__", "mem"), ("node", f"n{pod % 3}"), ("pod", f"p{pod}")))

    for pod, value, flush in steps:
        now += 1_000
        if flush:
            for g, _, v in merger.flush(now):
                if is_stale_marker(v):
                    exported.pop(g)
                else:
                    exported[g] = v
            want: dict[Hashable, float] = {}
            for p, v in latest.items():
                want[group(p)] = want.get(group(p), 0) + v
            assert exported == want
            continue
        if value is None:
            merger.observe(group(pod), pod, now, STALE_NAN)
            latest.pop(pod, None)
        else:
            assert merger.observe(group(pod), pod, now, float(value))
            latest[pod] = value
