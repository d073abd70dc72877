"""Series cap with overflow, composed with the mergers: totals stay exact."""

from __future__ import annotations

from collections.abc import Hashable
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenixcp.core.aggregation import (
    CapConfig,
    CumulativeMerger,
    GaugeMerger,
    SeriesCap,
    overflow_labels,
)
from phoenixcp.core.batch import LabelSet

pytestmark = pytest.mark.unit

OVERFLOW = overflow_labels("requests_total", "r0")


def series(user: int) -> LabelSet:
    return (("__name__", "requests_total"), ("user_id", f"u{user}"))


def test_the_first_n_series_are_admitted_and_the_rest_overflow() -> None:
    cap = SeriesCap(config=CapConfig(max_series=2))
    assert [cap.admit("m", s, 0) for s in "abcab"] == [True, True, False, True, True]
    assert (cap.admitted_count("m"), cap.overflowed_count("m")) == (2, 1)
    assert cap.admit("other_metric", "c", 0)  # scopes are independent


def test_an_overflowed_series_stays_in_overflow_until_it_goes_idle() -> None:
    cap = SeriesCap(config=CapConfig(max_series=1, idle_timeout=timedelta(seconds=10)))
    assert cap.admit("m", "a", 0)
    assert not cap.admit("m", "b", 0)
    assert not cap.admit("m", "b", 9_000)
    assert cap.expire(15_000) == 1  # a went idle and frees its place ...
    assert not cap.admit("m", "b", 15_000)  # ... but b stays where its total lives
    assert cap.expire(30_000) == 1
    assert cap.admit("m", "b", 30_000)  # forgotten, routed afresh


def test_lower_classes_go_to_overflow_first() -> None:
    """A full scope makes room for a better class by pushing out the latest series of the
    worst class below it; never one of the newcomer's class or better."""
    high, medium, low = 2, 3, 4
    cap = SeriesCap(config=CapConfig(max_series=3))
    assert [cap.admit("m", s, 0, p) for s, p in
            (("l1", low), ("m1", medium), ("l2", low))] == [True, True, True]
    assert cap.admit("m", "h1", 1, high)  # pushes out l2, the latest LOW
    assert cap.take_evicted() == [("m", "l2")]
    assert cap.admit("m", "m2", 2, medium)  # pushes out l1: LOW goes before MEDIUM
    assert cap.take_evicted() == [("m", "l1")]
    assert not cap.admit("m", "m3", 3, medium)  # only its own class or better is left
    assert not cap.admit("m", "l3", 3, low)
    assert cap.admit("m", "h2", 4, high)  # MEDIUM goes before HIGH: the latest, m2
    assert cap.take_evicted() == [("m", "m2")]
    assert not cap.admit("m", "l1", 5, low)  # an evicted series stays in overflow
    assert (cap.admitted_count("m"), cap.overflowed_count("m")) == (3, 5)
    assert cap.take_evicted() == []


def test_without_classes_the_cap_is_first_come_first_served() -> None:
    cap = SeriesCap(config=CapConfig(max_series=1))
    assert cap.admit("m", "a", 0)
    assert not cap.admit("m", "b", 0)
    assert cap.take_evicted() == []


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="max_series must be at least 1"):
        CapConfig(max_series=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        CapConfig(max_series=1, idle_timeout=timedelta(0))


def test_overflow_labels_follow_the_otel_convention() -> None:
    assert OVERFLOW == (("__name__", "requests_total"), ("otel_metric_overflow", "true"),
                        ("phoenix_replica", "r0"))


# (user, increase or reset, flush?)
STEP = st.tuples(st.integers(0, 15), st.integers(0, 500), st.booleans(), st.booleans())


@settings(max_examples=300, deadline=None)
@given(cap_size=st.integers(1, 6), steps=st.lists(STEP, max_size=120))
def test_capped_counters_keep_the_metric_total_exact(
    cap_size: int, steps: list[tuple[int, int, bool, bool]],
) -> None:
    cap = SeriesCap(config=CapConfig(max_series=cap_size))
    merger = CumulativeMerger()
    current: dict[int, int] = {}
    counted: dict[int, int] = {}
    exported: dict[Hashable, float] = {}
    now = 0
    for user, amount, reset, flush in steps:
        now += 1_000
        if flush:
            for g, _, value in merger.flush(now):
                assert value >= exported.get(g, 0.0)
                exported[g] = value
            assert len(exported.keys() - {OVERFLOW}) <= cap_size
            assert sum(exported.values()) == sum(counted.values())
            continue
        if reset and current.get(user, 0) > 0:
            current[user] = amount % current[user]
            counted[user] += current[user]
        else:
            current[user] = current.get(user, 0) + amount
            counted[user] = counted.get(user, 0) + amount
        s = series(user)
        group = s if cap.admit("requests_total", s, now) else OVERFLOW
        assert merger.observe(group, s, now, float(current[user]))


@settings(max_examples=200, deadline=None)
@given(cap_size=st.integers(1, 6),
       steps=st.lists(st.tuples(st.integers(0, 15), st.integers(-100, 100), st.booleans()),
                      max_size=100))
def test_capped_summed_gauges_keep_the_metric_total_exact(
    cap_size: int, steps: list[tuple[int, int, bool]],
) -> None:
    cap = SeriesCap(config=CapConfig(max_series=cap_size))
    merger = GaugeMerger()
    latest: dict[int, int] = {}
    exported: dict[Hashable, float] = {}
    now = 0
    for user, value, flush in steps:
        now += 1_000
        if flush:
            exported.update((g, v) for g, _, v in merger.flush(now))
            assert len(exported.keys() - {OVERFLOW}) <= cap_size
            assert sum(exported.values()) == sum(latest.values())
            continue
        s = series(user)
        group = s if cap.admit("requests_total", s, now) else OVERFLOW
        assert merger.observe(group, s, now, float(value))
        latest[user] = value
