"""SeriesIndex: batch lookups by searchsorted, new keys through the side table, windows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenixcp.core.policy.index import SeriesIndex

pytestmark = pytest.mark.unit

U64 = st.integers(0, 2**64 - 1)


def feed(index: SeriesIndex, keys: list[int], points: list[int]) -> None:
    arr = np.asarray(keys, dtype=np.uint64)
    look = index.find(arr)
    new = np.flatnonzero((look.pos < 0) & (look.side < 0))
    if len(new):
        look.side[new] = index.add(arr[new].tolist())
        if index.settle():
            look = index.find(arr)
    index.count(look, np.asarray(points, dtype=np.int64))


@settings(max_examples=80, deadline=None)
@given(batches=st.lists(st.lists(st.tuples(st.integers(0, 60).map(lambda i: i * 7919 + 2**63),
                                           st.integers(1, 5)), max_size=40),
                        min_size=1, max_size=30))
def test_window_points_equal_what_was_fed_per_key(batches: list[list[tuple[int, int]]]) -> None:
    index = SeriesIndex()
    want: dict[int, int] = {}
    for batch in batches:
        feed(index, [k for k, _ in batch], [n for _, n in batch])
        for k, n in batch:
            want[k] = want.get(k, 0) + n
    pos = index.window()
    keys, points = index.keys[pos], index.points[pos]
    assert dict(zip(keys.tolist(), points.tolist(), strict=True)) == want
    assert list(keys) == sorted(keys)
    assert len(index.end_window(0, keep_windows=2)) == 0
    assert not index.window().size  # a new window starts empty


def test_routes_survive_settling_and_are_cleared_on_demand() -> None:
    index = SeriesIndex()
    keys = np.arange(5000, dtype=np.uint64) * 3
    feed(index, keys.tolist(), [1] * len(keys))
    look = index.find(keys)
    for i in range(len(keys)):
        index.set_route(look, i, i % 7)
    index.settle(force=True)
    assert index.routes_of(index.find(keys)).tolist() == [i % 7 for i in range(len(keys))]
    index.clear_routes(np.asarray([3], dtype=np.int32))
    routes = index.routes_of(index.find(keys)).tolist()
    assert routes == [-1 if i % 7 == 3 else i % 7 for i in range(len(keys))]


def test_silent_series_are_forgotten_after_the_kept_windows() -> None:
    index = SeriesIndex()
    feed(index, [1, 2], [1, 1])
    index.end_window(0, keep_windows=2)
    feed(index, [1], [1])
    assert index.end_window(1, keep_windows=2).tolist() == []
    assert index.end_window(2, keep_windows=2).tolist() == [2]
    assert index.find(np.asarray([1, 2], dtype=np.uint64)).pos.tolist()[1] == -1
