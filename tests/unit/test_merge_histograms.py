"""Histogram series merge as counters: every bucket, `_sum` and `_count` stays exact."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenixcp.core.aggregation import CumulativeMerger, LabelReduction
from phoenixcp.core.batch import LabelSet

pytestmark = pytest.mark.unit

BOUNDS = ("0.1", "1", "10", "+Inf")
REDUCE = LabelReduction(by=("job",))


def series_of(pod: int) -> list[LabelSet]:
    """The bucket, `_sum` and `_count` series of one pod's histogram."""
    base = (("job", f"j{pod % 2}"), ("pod", f"p{pod}"))
    out: list[LabelSet] = [(("__name__", "lat_bucket"), *base, ("le", le)) for le in BOUNDS]
    out.append((("__name__", "lat_sum"), *base))
    out.append((("__name__", "lat_count"), *base))
    return out


def values_of(observations: list[int]) -> list[int]:
    """Cumulative bucket counts, then sum and count, for observations given as bucket
    indexes (an observation in bucket b adds b to `_sum`, keeping everything integral)."""
    buckets = [sum(1 for o in observations if o <= b) for b in range(len(BOUNDS))]
    return [*buckets, sum(observations), len(observations)]


# (pod, kind, observations); kind 0 = observe, 1 = the pod restarts, 2 = flush.
STEP = st.tuples(st.integers(0, 5), st.integers(0, 2),
                 st.lists(st.integers(0, len(BOUNDS) - 1), max_size=6))


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(STEP, max_size=80))
def test_every_merged_bucket_equals_the_sum_of_the_inputs(
    steps: list[tuple[int, int, list[int]]],
) -> None:
    merger = CumulativeMerger()
    alive: dict[int, list[int]] = {}  # a pod's observations since its last restart
    counted: dict[LabelSet, int] = defaultdict(int)  # per input series, true events
    exported: dict[Hashable, float] = {}
    now = 0
    for pod, kind, obs in steps:
        now += 1_000
        if kind == 2:
            for g, _, value in merger.flush(now):
                assert value >= exported.get(g, 0.0)
                exported[g] = value
            want: dict[Hashable, int] = defaultdict(int)
            for s, c in counted.items():
                want[REDUCE.apply(s)] += c
            assert exported == {g: v for g, v in want.items() if g in exported}
            assert set(exported) == set(want)
            for job in ("j0", "j1"):  # merged buckets stay cumulative in `le`
                row = [exported.get((("__name__", "lat_bucket"), ("job", job), ("le", le)))
                       for le in BOUNDS]
                present = [v for v in row if v is not None]
                assert present == sorted(present)
            continue
        before = values_of(alive.get(pod, []))
        if kind == 1 and pod in alive:
            after = values_of(obs)
            # Prometheus sees a reset only where a value went down; keep restarts visible.
            if not all(a < b or a == b == 0 for a, b in zip(after, before, strict=True)):
                continue
            alive[pod] = list(obs)
            gained = after
        else:
            alive[pod] = alive.get(pod, []) + obs
            after = values_of(alive[pod])
            gained = [a - b for a, b in zip(after, before, strict=True)]
        for s, v, g in zip(series_of(pod), after, gained, strict=True):
            counted[s] += g
            assert merger.observe(REDUCE.apply(s), s, now, float(v))
