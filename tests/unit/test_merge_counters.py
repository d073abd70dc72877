"""Cumulative and delta counter merging (phoenixcp.core.aggregation)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenixcp.core.aggregation import CumulativeMerger, DeltaMerger, LabelReduction, MergeConfig
from phoenixcp.core.batch import LabelSet
from phoenixcp.core.series import is_stale_marker

pytestmark = pytest.mark.unit

REDUCE = LabelReduction(without=("user_id",))


def labels(job: int, user: int) -> LabelSet:
    return (("__name__", "requests_total"), ("job", f"j{job}"), ("user_id", f"u{user}"))


def test_total_is_the_sum_of_current_values_without_resets() -> None:
    m = CumulativeMerger()
    m.observe("g", "a", 1_000, 5.0)
    m.observe("g", "b", 1_000, 7.0)
    assert m.flush(2_000) == [("g", 2_000, 12.0)]
    m.observe("g", "a", 3_000, 6.0)
    assert m.flush(4_000) == [("g", 4_000, 13.0)]
    assert m.flush(5_000) == []  # nothing new, nothing emitted


def test_a_reset_adds_the_new_value_and_the_total_stays_monotonic() -> None:
    m = CumulativeMerger()
    m.observe("g", "a", 1_000, 10.0)
    m.observe("g", "a", 2_000, 3.0)  # reset: 3 counted since
    assert m.flush(3_000) == [("g", 3_000, 13.0)]


def test_a_late_joining_input_counts_from_zero_and_a_leaving_one_keeps_its_share() -> None:
    m = CumulativeMerger(config=MergeConfig(idle_timeout=timedelta(seconds=60)))
    m.observe("g", "a", 0, 4.0)
    m.flush(1_000)
    m.observe("g", "b", 1_000, 9.0)
    assert m.flush(2_000) == [("g", 2_000, 13.0)]
    m.observe("g", "b", 70_000, 10.0)  # a went silent; its 4 stays in the total
    assert m.flush(70_000) == [("g", 70_000, 14.0)]
    assert len(m) == 2
    m.flush(70_500)
    assert len(m) == 1  # a forgotten after 60 s silent
    m.flush(200_000)  # b forgotten too: the group ends with a staleness marker
    assert m.total("g") is None


def test_the_group_ends_with_a_staleness_marker() -> None:
    m = CumulativeMerger(config=MergeConfig(idle_timeout=timedelta(seconds=1)))
    m.observe("g", "a", 0, 1.0)
    m.flush(0)
    [(group, ts, value)] = m.flush(5_000)
    assert (group, ts) == ("g", 5_000) and is_stale_marker(value)


def test_refused_points() -> None:
    m = CumulativeMerger()
    assert m.observe("g", "a", 2_000, 5.0)
    assert not m.observe("g", "a", 1_000, 9.0)  # older than the last point
    assert not m.observe("g", "a", 3_000, float("nan"))
    assert not m.observe("g", "a", 3_000, -1.0)
    assert m.total("g") == 5.0


def test_a_float_counter_sums_within_rounding() -> None:
    m = CumulativeMerger()
    for i in range(1, 100):
        m.observe("g", "a", i, 0.1 * i)
        m.observe("g", "b", i, 0.2 * i)
    assert m.total("g") == pytest.approx(0.3 * 99)


def test_deltas_are_summed_per_window() -> None:
    d = DeltaMerger()
    d.observe("g", "a", 1, 2.0)
    d.observe("g", "b", 2, 3.0)
    d.observe("g", "a", 3, 1.0)
    assert not d.observe("g", "a", 4, float("nan"))
    assert d.flush(10) == [("g", 10, 6.0)]
    assert d.flush(20) == []
    d.observe("g", "a", 21, 4.0)
    assert d.flush(30) == [("g", 30, 4.0)]


# --- properties -----------------------------------------------------------------------------

# One step: (input index, kind, amount); kind 0 = count up by amount, 1 = reset to a value
# below the current one and count `amount` since, 2 = flush.
STEP = st.tuples(st.integers(0, 11), st.integers(0, 2), st.integers(0, 1_000))


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(STEP, max_size=120))
def test_merged_counters_equal_the_sum_of_the_inputs_increases_and_stay_monotonic(
    steps: list[tuple[int, int, int]],
) -> None:
    """Random inputs join at random times (churn), count, reset and go silent."""
    merger = CumulativeMerger()
    current: dict[int, int] = {}  # each input's raw counter value
    counted: dict[int, int] = {}  # each input's true number of events since it appeared
    exported: dict[Hashable, float] = {}
    reset_seen = False
    now = 0
    for i, kind, amount in steps:
        now += 1_000
        group = REDUCE.apply(labels(i % 3, i))
        if kind == 2:
            for g, ts, value in merger.flush(now):
                assert ts == now
                assert value >= exported.get(g, 0.0), "a merged counter went down"
                exported[g] = value
            want: dict[Hashable, int] = defaultdict(int)
            for j, c in counted.items():
                want[REDUCE.apply(labels(j % 3, j))] += c
            assert exported == want
            assert sum(exported.values()) == sum(counted.values())
            if not reset_seen:
                assert sum(exported.values()) == sum(current.values())
            continue
        if kind == 1 and current.get(i, 0) > 0:
            current[i] = amount % current[i]  # strictly lower: a visible reset
            counted[i] += current[i]
            reset_seen = True
        else:
            current[i] = current.get(i, 0) + amount
            counted[i] = counted.get(i, 0) + amount
        assert merger.observe(group, labels(i % 3, i), now, float(current[i]))
