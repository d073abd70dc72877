"""Property tests: after aggregate, cap or top-K, the totals people alert on stay exact.

For random series (counters, histogram buckets, gauges), values, resets and churn, at every
flush: the merged output groups hold exactly the reset-adjusted totals of the inputs merged
into them (counters and every bucket), or the sum of their latest values (gauges); merged
counters never decrease; every input series is exported either as itself or inside exactly
one group. For top-K, whose kept set moves between windows, the *increases* of the output
equal the increases of the input (what ``sum(rate())`` reads).
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phoenixcp.api.prometheus import remote_pb2
from phoenixcp.core.batch import LabelSet, MetricBatch
from phoenixcp.core.policy.engine import PolicyEngine
from phoenixcp.core.policy.model import (
    Aggregate,
    Cap,
    Classify,
    LabelMatcher,
    MatchOp,
    PolicySpec,
    PriorityClass,
    PriorityRule,
    TopK,
)
from phoenixcp.core.series import is_stale_marker
from phoenixcp.platform.ingest import decode_remote_write
from tests.unit.test_policy_engine import Clock, Source

pytestmark = pytest.mark.unit

METRICS = ("req_total", "lat_bucket", "inflight")


def labels_of(metric: str, user: int, route: int, le: int) -> LabelSet:
    d = {"__name__": metric, "route": f"r{route}", "user_id": f"u{user}"}
    if metric == "lat_bucket":
        d["le"] = ("0.1", "1", "+Inf")[le]
    return tuple(sorted(d.items()))


series_ids = st.tuples(st.sampled_from(METRICS), st.integers(0, 7), st.integers(0, 1),
                       st.integers(0, 2))


def _series_of(point: tuple[tuple[str, int, int, int], int, bool]) -> LabelSet:
    return labels_of(*point[0])


step = st.lists(st.tuples(series_ids, st.integers(0, 5), st.booleans()), min_size=1,
                max_size=12, unique_by=_series_of)
policies = st.sampled_from([
    PolicySpec(id="agg", action=Aggregate(without=("user_id",))),
    PolicySpec(id="agg-by", action=Aggregate(by=("route",))),
    PolicySpec(id="cap", action=Cap(max_series=3)),
    PolicySpec(id="agg-then-cap", action=Aggregate(without=("user_id",)), order=0),
])


def to_batch(points: dict[LabelSet, float], ts: int) -> MetricBatch:
    request = remote_pb2.WriteRequest()
    for labels, value in points.items():
        s = request.timeseries.add()
        for n, v in labels:
            s.labels.add(name=n, value=v)
        s.samples.add(value=value, timestamp=ts)
    return decode_remote_write(request.SerializeToString(), tenant="t",
                               content_encoding="identity")


def passed(b: MetricBatch | None) -> set[LabelSet]:
    if b is None:
        return set()
    req = remote_pb2.WriteRequest.FromString(b.write_request)
    return {tuple((lb.name, lb.value) for lb in s.labels) for s in req.timeseries}


class Model:
    """The inputs' truth: raw values and reset-adjusted totals."""

    def __init__(self) -> None:
        self.raw: dict[LabelSet, float] = {}
        self.total: dict[LabelSet, float] = defaultdict(float)

    def point(self, labels: LabelSet, grow: int, reset: bool) -> float:
        if dict(labels)["__name__"] == "inflight":
            self.raw[labels] = float(grow)
            return float(grow)
        previous = self.raw.get(labels)
        value = float(grow) if previous is None or reset else previous + grow
        increase = value if previous is None or value < previous else value - previous
        self.total[labels] += increase
        self.raw[labels] = value
        return value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, steps=st.lists(step, min_size=1, max_size=8),
       extra_cap=st.booleans())
def test_merged_groups_hold_exactly_the_totals_of_their_inputs(
        policy: PolicySpec, steps: list[list[tuple[tuple[str, int, int, int], int, bool]]],
        extra_cap: bool) -> None:
    clock = Clock()
    own = (policy,) + ((PolicySpec(id="cap2", action=Cap(max_series=2), order=1),)
                       if extra_cap else ())
    engine = PolicyEngine(replica_id="r", clock_ms=clock)
    engine.apply(Source(own=own))
    model = Model()
    route_of: dict[LabelSet, str] = {}
    exported: dict[LabelSet, float] = {}
    for t, points in enumerate(steps):
        clock.ms += 1000
        values = {labels_of(*sid): model.point(labels_of(*sid), grow, reset)
                  for sid, grow, reset in points}
        outcome = engine.process(to_batch(values, clock.ms))
        through = passed(outcome.passthrough)
        for labels in values:
            route = "pass" if labels in through else "merged"
            assert route_of.setdefault(labels, route) == route  # decisions are sticky
        for output in engine.flush(force=True):
            for labels, _, value in output.points:
                assert not is_stale_marker(value)
                if dict(labels)["__name__"] != "inflight":
                    assert value >= exported.get(labels, 0.0), "a merged counter decreased"
                exported[labels] = value
        merged_inputs = [lb for lb, r in route_of.items() if r == "merged"]
        for metric in METRICS:
            want = sum(model.total[lb] if metric != "inflight" else model.raw[lb]
                       for lb in merged_inputs if dict(lb)["__name__"] == metric)
            got = sum(v for lb, v in exported.items() if dict(lb)["__name__"] == metric)
            assert math.isclose(got, want, abs_tol=1e-9), (metric, t, got, want)
        for le in ("0.1", "1", "+Inf"):  # every histogram bucket on its own
            want = sum(model.total[lb] for lb in merged_inputs if dict(lb).get("le") == le)
            got = sum(v for lb, v in exported.items() if dict(lb).get("le") == le)
            assert math.isclose(got, want, abs_tol=1e-9)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rates=st.lists(st.lists(st.integers(0, 20), min_size=6, max_size=6), min_size=2,
                      max_size=12))
def test_top_k_output_increases_equal_input_increases(rates: list[list[int]]) -> None:
    clock = Clock()
    engine = PolicyEngine(replica_id="r", clock_ms=clock)
    engine.apply(Source(own=(PolicySpec(id="top2", action=TopK(
        k=2, ranking_window=timedelta(seconds=2), hysteresis=0.0)),)))
    raw = [float(i) for i in range(6)]  # every input starts above 0: its history matters
    names = [tuple(sorted({"__name__": "req_total", "user_id": f"u{i}"}.items()))
             for i in range(6)]
    exported: dict[LabelSet, float] = {}
    increase_in = increase_out = 0.0
    for t, step_rates in enumerate(rates):
        clock.ms += 1000
        if t:
            for i, r in enumerate(step_rates):
                raw[i] += r
                increase_in += r
        outcome = engine.process(to_batch(dict(zip(names, raw, strict=True)), clock.ms))
        now: dict[LabelSet, float] = {}
        for labels in passed(outcome.passthrough):
            now[labels] = raw[names.index(labels)]
        assert len(now) <= 2, "top-K keeps at most K series"
        for output in engine.flush(force=True):
            for labels, _, value in output.points:
                if not is_stale_marker(value):
                    now[labels] = value
        for labels, value in now.items():
            if labels in exported:  # as rate() reads: a series' first point adds nothing
                assert value >= exported[labels]
                increase_out += value - exported[labels]
            exported[labels] = value
        if t:
            assert math.isclose(increase_out, increase_in), (t, increase_out, increase_in)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.dictionaries(st.tuples(st.integers(0, 9), st.integers(0, 2)),
                                      st.integers(0, 5), min_size=1, max_size=10),
                      min_size=1, max_size=8))
def test_series_that_lower_classes_give_up_to_overflow_keep_the_sum_exact(
        steps: list[dict[tuple[int, int], int]]) -> None:
    """Counters under a cap of 3 with routes r0 LOW, r1 MEDIUM, r2 HIGH: better classes push
    worse ones into overflow; what the backend holds (each own series' last value plus the
    overflow total) always equals what was sent."""
    clock = Clock()
    tiers = PolicySpec(id="tiers", action=Classify(rules=(
        PriorityRule(PriorityClass.LOW, (LabelMatcher("route", MatchOp.EQUAL, "r0"),)),
        PriorityRule(PriorityClass.HIGH, (LabelMatcher("route", MatchOp.EQUAL, "r2"),)))))
    engine = PolicyEngine(replica_id="r", clock_ms=clock)
    engine.apply(Source(own=(tiers, PolicySpec(id="cap3", action=Cap(max_series=3)))))
    raw: dict[LabelSet, float] = {}
    own: dict[LabelSet, float] = {}
    overflow: dict[LabelSet, float] = {}
    for points in steps:
        clock.ms += 1000
        values = {}
        for (user, route), grow in points.items():
            labels = labels_of("req_total", user, 0, 0)
            labels = tuple(sorted({**dict(labels), "route": f"r{route}"}.items()))
            values[labels] = raw[labels] = raw.get(labels, 0.0) + grow
        outcome = engine.process(to_batch(values, clock.ms))
        own.update({lb: values[lb] for lb in passed(outcome.passthrough)})
        for output in engine.flush(force=True):
            overflow.update({lb: v for lb, v, in ((p[0], p[2]) for p in output.points)})
        assert math.isclose(sum(own.values()) + sum(overflow.values()), sum(raw.values()),
                            abs_tol=1e-9)
