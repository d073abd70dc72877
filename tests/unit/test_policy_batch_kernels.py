"""The policy engine's per-batch loops over slots (``_keytable.count_points`` and
``split_codes``) and their numpy twins: the same results for random batches, against a plain
Python reading of the rules, and the same refusals of out-of-range input."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenixcp.core.policy import _keytable_py
from phoenixcp.core.policy.plan import Code

pytestmark = pytest.mark.unit

try:
    from phoenixcp.core.policy import _keytable as _keytable_c
except ImportError:  # pragma: no cover - built by `pip install -e .`
    _keytable_c = None  # type: ignore[assignment]

KERNELS: list[ModuleType] = [_keytable_py]  # type: ignore[list-item]
if _keytable_c is not None:
    KERNELS.append(_keytable_c)  # type: ignore[arg-type]


def test_c_kernels_are_built() -> None:
    assert _keytable_c is not None, "the _keytable C extension is missing: pip install -e ."


series = st.lists(st.tuples(st.integers(0, 19),   # slot (repeats: one series sent twice)
                            st.integers(0, 7),    # points
                            st.integers(0, 2)),   # native histograms among them
                  max_size=60)


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
@settings(max_examples=80, deadline=None)
@given(batch=series, route=st.lists(st.integers(-1, 5), min_size=20, max_size=20),
       codes=st.lists(st.sampled_from([int(c) for c in Code]), min_size=6, max_size=6))
def test_kernels_follow_the_rules(kernel: ModuleType, batch: list[tuple[int, int, int]],
                                  route: list[int], codes: list[int]) -> None:
    slots = np.asarray([s for s, _, _ in batch], dtype=np.int64)
    spans = np.zeros((len(batch), 4), dtype=np.uint32)
    spans[:, 2] = [p for _, p, _ in batch]
    spans[:, 3] = [min(h, p) for _, p, h in batch]
    points = np.arange(20, dtype=np.int64) * 100
    routes = np.asarray(route, dtype=np.int32)
    ids = np.empty(len(batch), dtype=np.int32)

    unrouted = kernel.count_points(slots, spans, points, routes, ids)

    want_points = np.arange(20, dtype=np.int64) * 100
    for s, p, _ in batch:
        want_points[s] += p
    assert points.tolist() == want_points.tolist()
    assert ids.tolist() == [route[s] for s, _, _ in batch]
    assert unrouted == sum(1 for s, _, _ in batch if route[s] < 0)

    ids[ids < 0] = 0  # the engine routes those before it splits
    table = np.asarray(codes, dtype=np.int8)
    passing = np.full(len(batch), -7, dtype=np.int64)
    merging = np.full(len(batch), -7, dtype=np.int64)
    n_pass, n_merge, dropped, changed = kernel.split_codes(ids, spans, table, passing, merging)

    want_pass, want_merge, want_dropped, want_changed = [], [], 0, 0
    for i, series_id in enumerate(ids.tolist()):
        code = codes[series_id]
        if code >= Code.MERGE and spans[i, 3] > 0:  # native histograms pass (ADR 0007)
            code = Code.OBSERVE
        want_changed += code != Code.PASS
        if code in (Code.PASS, Code.OBSERVE, Code.WATCH):
            want_pass.append(i)
        if code in (Code.MERGE, Code.WATCH):
            want_merge.append(i)
        if code == Code.DROP:
            want_dropped += int(spans[i, 2])
    assert passing[:n_pass].tolist() == want_pass
    assert merging[:n_merge].tolist() == want_merge
    assert (dropped, changed) == (want_dropped, want_changed)


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_kernels_refuse_out_of_range_input(kernel: ModuleType) -> None:
    spans = np.zeros((2, 4), dtype=np.uint32)
    points = np.zeros(3, dtype=np.int64)
    route = np.zeros(3, dtype=np.int32)
    ids = np.empty(2, dtype=np.int32)
    with pytest.raises(IndexError):
        kernel.count_points(np.asarray([0, 3], dtype=np.int64), spans, points, route, ids)
    with pytest.raises(ValueError):
        kernel.count_points(np.asarray([0], dtype=np.int64), spans, points, route, ids)
    out = np.empty(2, dtype=np.int64)
    with pytest.raises(IndexError):
        kernel.split_codes(np.asarray([0, 4], dtype=np.int32), spans,
                           np.zeros(4, dtype=np.int8), out, out.copy())
    with pytest.raises(ValueError):
        kernel.split_codes(np.asarray([0, 1], dtype=np.int32), spans,
                           np.zeros(4, dtype=np.int8), out[:1], out)
