"""SeriesIndex and its key table (the C one and its Python twin): slots, windows, forgetting."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenixcp.core.policy import _keytable_py
from phoenixcp.core.policy.index import SeriesIndex

pytestmark = pytest.mark.unit

try:
    from phoenixcp.core.policy._keytable import KeyTable as CKeyTable
except ImportError:  # pragma: no cover - the C table is built by `pip install -e .`
    CKeyTable = None  # type: ignore[assignment, misc]

TABLES: list[Callable[[], object]] = [_keytable_py.KeyTable]
if CKeyTable is not None:
    TABLES.append(CKeyTable)


def _index(make: Callable[[], object]) -> SeriesIndex:
    return SeriesIndex(table=make())  # type: ignore[arg-type]


def feed(index: SeriesIndex, keys: list[int], points: list[int]) -> np.ndarray:
    arr = np.asarray(keys, dtype=np.uint64)
    slots = index.find(arr)
    new = np.flatnonzero(slots < 0)
    if len(new):
        slots[new] = index.add(arr[new])
    spans = np.zeros((len(keys), 4), dtype=np.uint32)
    spans[:, 2] = points
    index.count(slots, spans, np.empty(len(keys), dtype=np.int32))
    return slots


def test_c_extension_is_built() -> None:
    assert CKeyTable is not None, "the _keytable C extension is missing: pip install -e ."


@pytest.mark.parametrize("make", TABLES)
@settings(max_examples=60, deadline=None)
@given(batches=st.lists(st.lists(st.tuples(st.integers(0, 60).map(lambda i: i * 7919 + 2**63),
                                           st.integers(1, 5)), max_size=40),
                        min_size=1, max_size=30))
def test_window_points_equal_what_was_fed_per_key(make: Callable[[], object],
                                                  batches: list[list[tuple[int, int]]]) -> None:
    index = _index(make)
    want: dict[int, int] = {}
    for batch in batches:
        feed(index, [k for k, _ in batch], [n for _, n in batch])
        for k, n in batch:
            want[k] = want.get(k, 0) + n
    slots = index.window()
    keys, points = index.keys[slots], index.points[slots]
    assert dict(zip(keys.tolist(), points.tolist(), strict=True)) == want
    assert len(index) == len(want)
    assert len(index.end_window(0, keep_windows=2)) == 0
    assert not index.window().size  # a new window starts empty


@pytest.mark.parametrize("make", TABLES)
@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, 300), max_size=50)),
                    max_size=40))
def test_table_agrees_with_a_dict_through_inserts_and_removals(
        make: Callable[[], object], ops: list[tuple[bool, list[int]]]) -> None:
    """Removal (backward shift in C) never loses another key; slots stay unique and dense."""
    table = make()
    model: dict[int, int] = {}
    for insert, raw in ops:
        keys = np.asarray([k * 0x9E3779B97F4A7C15 % 2**64 for k in raw], dtype=np.uint64)
        out = np.empty(len(keys), dtype=np.int64)
        if insert:
            added = table.insert(keys, out)  # type: ignore[attr-defined]
            assert added == len(set(keys.tolist()) - set(model))
            for k, s in zip(keys.tolist(), out.tolist(), strict=True):
                assert model.setdefault(k, s) == s
        else:
            removed = table.remove(keys)  # type: ignore[attr-defined]
            assert removed == len(set(keys.tolist()) & set(model))
            for k in keys.tolist():
                model.pop(k, None)
        probe = np.asarray(sorted(set(model) | set(keys.tolist())), dtype=np.uint64)
        found = np.empty(len(probe), dtype=np.int64)
        missing = table.find(probe, found)  # type: ignore[attr-defined]
        assert found.tolist() == [model.get(k, -1) for k in probe.tolist()]
        assert missing == sum(1 for k in probe.tolist() if k not in model)
        assert len(table) == len(model)  # type: ignore[arg-type]
        assert len(set(model.values())) == len(model)
        assert all(0 <= s < table.high for s in model.values())  # type: ignore[attr-defined]


@pytest.mark.parametrize("make", TABLES)
def test_a_large_table_grows_and_keeps_every_key(make: Callable[[], object]) -> None:
    index = _index(make)
    keys = np.random.default_rng(3).integers(0, 2**63, 50_000, dtype=np.uint64)
    slots = feed(index, keys.tolist(), [1] * len(keys))
    assert sorted(set(slots.tolist())) == list(range(len(set(keys.tolist()))))
    assert (index.find(keys) == slots).all()
    assert (index.keys[slots] == keys).all()


@pytest.mark.parametrize("make", TABLES)
def test_routes_are_kept_per_slot_and_cleared_on_demand(make: Callable[[], object]) -> None:
    index = _index(make)
    keys = np.arange(5000, dtype=np.uint64) * 3
    slots = feed(index, keys.tolist(), [1] * len(keys))
    index.route[slots] = np.arange(len(keys), dtype=np.int32) % 7
    assert index.route[index.find(keys)].tolist() == [i % 7 for i in range(len(keys))]
    index.clear_routes(np.asarray([3], dtype=np.int32))
    routes = index.route[index.find(keys)].tolist()
    assert routes == [-1 if i % 7 == 3 else i % 7 for i in range(len(keys))]


@pytest.mark.parametrize("make", TABLES)
def test_silent_series_are_forgotten_and_their_slots_reused(make: Callable[[], object]) -> None:
    index = _index(make)
    index.column("shadow")
    first = feed(index, [1, 2], [1, 1])
    index.column("shadow")[first] = 7
    index.end_window(0, keep_windows=2)
    feed(index, [1], [1])
    assert index.end_window(1, keep_windows=2).tolist() == []
    assert index.end_window(2, keep_windows=2).tolist() == [2]
    assert index.find(np.asarray([1, 2], dtype=np.uint64)).tolist() == [first[0], -1]
    again = feed(index, [5], [1])
    assert again.tolist() == [first[1]]  # key 2's slot, with fresh state
    assert index.route[again[0]] == -1 and index.points[again[0]] == 1
    assert index.column("shadow")[again[0]] == np.uint64(2**64 - 1)
    assert len(index) == 2
