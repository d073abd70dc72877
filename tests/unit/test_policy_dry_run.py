"""dry_run: a candidate policy over a closed window — before/after, merged groups, drops."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from phoenixcp.core.aggregation import OVERFLOW_LABEL, REPLICA_LABEL
from phoenixcp.core.policy.dry_run import dry_run
from phoenixcp.core.policy.model import (
    Aggregate,
    Cap,
    Classify,
    Drop,
    LabelMatcher,
    MatchOp,
    MetricKind,
    MetricSelector,
    PolicyMode,
    PolicySpec,
    PriorityClass,
    PriorityRule,
    TopK,
)
from phoenixcp.core.policy.window import MetricSnapshot, PointTally, SeriesSeen, TenantSnapshot
from phoenixcp.core.series import series_key

pytestmark = pytest.mark.unit

START_MS = 1_700_000_000_000
BOMB = "http_requests_total"


def metric(name: str, label_sets: Sequence[dict[str, str]], *, points: int = 1,
           kind: MetricKind = MetricKind.UNKNOWN) -> MetricSnapshot:
    series = []
    for i, extra in enumerate(label_sets):
        labels = tuple(sorted({"__name__": name, **extra}.items()))
        series.append(SeriesSeen(series_key(labels), labels, points + i % 2, float(i)))
    return MetricSnapshot(name=name, kind=kind, series=tuple(series), outputs={},
                          counts=PointTally())


def window(*metrics: MetricSnapshot) -> TenantSnapshot:
    return TenantSnapshot(tenant="acme", replica_id="pipeline-0", start_ms=START_MS,
                          end_ms=START_MS + 10_000, active_profile="full", replica_count=1,
                          metrics=metrics, counts=PointTally())


def bomb(users: int = 1000, jobs: int = 2) -> MetricSnapshot:
    """``users`` series of one counter, each its own user_id, over ``jobs`` jobs."""
    return metric(BOMB, [{"job": f"job-{i % jobs}", "user_id": f"u{i}"} for i in range(users)])


def quiet() -> MetricSnapshot:
    return metric("up", [{"job": f"job-{i}"} for i in range(5)])


def spec(action: object, *, name: str = BOMB, **kw: object) -> PolicySpec:
    return PolicySpec(id="candidate", action=action,  # type: ignore[arg-type]
                      match=MetricSelector(metric_name=name), tenant="acme", **kw)  # type: ignore[arg-type]


def test_aggregate_away_user_id_merges_into_one_group_per_job() -> None:
    result = dry_run(spec(Aggregate(without=("user_id",))), window(bomb(), quiet()),
                     replica="pipeline-0")
    assert (result.matched, result.before, result.after) == (1000, 1000, 2)
    assert (result.estimated_before, result.estimated_after) == (1000.0, 2.0)
    assert (result.dropped_count, result.overflowed_count) == (0, 0)
    assert [g.inputs for g in result.merged_groups] == [500, 500]
    first = result.merged_groups[0]
    assert first.metric == BOMB and not first.overflow
    assert dict(first.labels) == {"__name__": BOMB, "job": "job-0", REPLICA_LABEL: "pipeline-0"}
    assert len(first.examples) == 3
    assert all(dict(e.labels)["job"] == "job-0" for e in first.examples)
    assert (result.start_ms, result.end_ms) == (START_MS, START_MS + 10_000)
    assert result.warnings == ()


def test_cap_keeps_max_series_and_overflows_the_rest() -> None:
    result = dry_run(spec(Cap(max_series=100)), window(bomb(), quiet()), replica="r1")
    assert (result.before, result.after) == (1000, 101)
    assert result.overflowed_count == 900
    [overflow] = result.merged_groups
    assert overflow.overflow and overflow.inputs == 900
    assert dict(overflow.labels) == {"__name__": BOMB, OVERFLOW_LABEL: "true",
                                     REPLICA_LABEL: "r1"}


def test_cap_admits_the_heaviest_series_first() -> None:
    # Odd series sent two points, even ones one: a cap of 500 keeps exactly the odd ones.
    result = dry_run(spec(Cap(max_series=500)), window(bomb()), replica="r")
    examples = result.merged_groups[0].examples
    assert examples and all(e.points == 1 for e in examples)


def test_drop_lists_dropped_series_up_to_max_examples() -> None:
    result = dry_run(spec(Drop()), window(bomb(50), quiet()), replica="r", max_examples=7)
    assert (result.matched, result.before, result.after) == (50, 50, 0)
    assert result.dropped_count == 50
    assert len(result.dropped) == 7
    assert result.merged_groups == ()


def test_label_matchers_limit_what_matches_but_the_metric_counts_whole() -> None:
    only_job0 = MetricSelector(metric_name=BOMB,
                               matchers=(LabelMatcher("job", MatchOp.EQUAL, "job-0"),))
    policy = PolicySpec(id="candidate", action=Drop(), match=only_job0, tenant="acme")
    result = dry_run(policy, window(bomb(100)), replica="r")
    assert (result.matched, result.before, result.after, result.dropped_count) == (
        50, 100, 50, 50)


def test_top_k_keeps_k_and_merges_the_rest_into_other() -> None:
    result = dry_run(spec(TopK(k=10)), window(bomb(200)), replica="r")
    assert (result.before, result.after, result.overflowed_count) == (200, 11, 190)
    assert result.merged_groups[0].overflow


def test_no_match_warns_and_counts_nothing() -> None:
    result = dry_run(spec(Drop(), name="no_such_metric"), window(bomb(10), quiet()),
                     replica="r")
    assert (result.matched, result.before, result.after) == (0, 0, 0)
    assert result.warnings == ("the policy matches no series in the last window "
                               "(15 series of 2 metrics)",)


def test_metric_type_condition_uses_the_window_kind() -> None:
    counters = PolicySpec(id="candidate", action=Drop(), tenant="acme",
                          match=MetricSelector(kind=MetricKind.COUNTER))
    typed = metric("jobs_total", [{"job": "a"}, {"job": "b"}], kind=MetricKind.COUNTER)
    result = dry_run(counters, window(typed, quiet()), replica="r")
    assert (result.matched, result.dropped_count) == (2, 2)


def test_a_dry_run_mode_policy_is_evaluated_as_enforced_with_a_warning() -> None:
    result = dry_run(spec(Drop(), mode=PolicyMode.DRY_RUN), window(bomb(10)), replica="r")
    assert result.dropped_count == 10
    assert "mode is dry_run" in result.warnings[0]


def test_critical_series_are_reported_as_exempt() -> None:
    classify = Classify(rules=(PriorityRule(PriorityClass.CRITICAL,
                                            (LabelMatcher("job", MatchOp.EQUAL, "job-0"),)),))
    result = dry_run(spec(classify), window(bomb(10)), replica="r")
    assert result.warnings == ("5 matched series are CRITICAL and are never changed",)


def test_a_large_metric_is_sampled_and_merges_are_estimated() -> None:
    result = dry_run(spec(Aggregate(without=("user_id",))), window(bomb(1000)), replica="r",
                     sample_limit=100)
    assert (result.before, result.after) == (100, 2)
    # Groups that several sampled series merge into count once, not once per sampling rate.
    assert (result.estimated_before, result.estimated_after) == (1000.0, 2.0)
    assert result.warnings == ("counted over a sample and estimated for all series (caps and "
                               f"top-K scaled to the sample): {BOMB} (100 of 1000)",)


def test_a_sampled_cap_is_scaled_to_the_sample() -> None:
    result = dry_run(spec(Cap(max_series=100)), window(bomb(1000), quiet()), replica="r",
                     sample_limit=100)
    # 10% of the series are routed, so 10% of the cap: 10 kept, 90 into the overflow series.
    assert (result.before, result.after, result.overflowed_count) == (100, 11, 90)
    assert (result.estimated_before, result.estimated_after) == (1000.0, 101.0)


def test_a_sampled_drop_and_top_k_scale_linearly_and_per_metric() -> None:
    dropped = dry_run(spec(Drop()), window(bomb(1000)), replica="r", sample_limit=250)
    assert (dropped.dropped_count, dropped.estimated_after) == (250, 0.0)
    top = dry_run(spec(TopK(k=20)), window(bomb(1000)), replica="r", sample_limit=250)
    assert (top.before, top.after) == (250, 6)  # k scaled to 5, plus `other`
    assert top.estimated_after == 21.0


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="max_examples"):
        dry_run(spec(Drop()), window(), replica="r", max_examples=-1)
    with pytest.raises(ValueError, match="sample_limit"):
        dry_run(spec(Drop()), window(), replica="r", sample_limit=0)
