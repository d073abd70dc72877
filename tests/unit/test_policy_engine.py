"""The policy engine on real remote-write batches: what passes, drops and merges."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from phoenixcp.api.prometheus import remote_pb2
from phoenixcp.core.aggregation import OVERFLOW_LABEL, REPLICA_LABEL
from phoenixcp.core.batch import LabelSet, MetricBatch
from phoenixcp.core.policy.engine import MergedOutput, PolicyEngine
from phoenixcp.core.policy.model import (
    Aggregate,
    Cap,
    Classify,
    Drop,
    LabelMatcher,
    MatchOp,
    MetricSelector,
    PolicyMode,
    PolicySpec,
    PriorityClass,
    PriorityRule,
    ProfileSpec,
)
from phoenixcp.core.series import is_stale_marker
from phoenixcp.platform.ingest import decode_remote_write

pytestmark = pytest.mark.unit

FULL = ProfileSpec(name="full")


@dataclass
class Source:
    active: ProfileSpec = FULL
    own: tuple[PolicySpec, ...] = ()
    others: tuple[ProfileSpec, ...] = ()
    extra: dict[str, ProfileSpec] = field(default_factory=dict)
    rejections: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = ()

    @property
    def profiles(self) -> Mapping[str, ProfileSpec]:
        return {p.name: p for p in (self.active, *self.others)}

    def profile_for(self, tenant: str) -> ProfileSpec:
        return self.active

    def policies_for(self, tenant: str, now: datetime) -> tuple[PolicySpec, ...]:
        return tuple(self.active.policies) + self.own


class Clock:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.ms


Series = tuple[dict[str, str], float]


def batch(series: list[Series], ts: int, tenant: str = "acme") -> MetricBatch:
    request = remote_pb2.WriteRequest()
    for labels, value in series:
        ts_ = request.timeseries.add()
        for name, v in sorted(labels.items()):
            ts_.labels.add(name=name, value=v)
        ts_.samples.add(value=value, timestamp=ts)
    return decode_remote_write(request.SerializeToString(), tenant=tenant,
                               content_encoding="identity")


def parsed(b: MetricBatch | None) -> dict[LabelSet, float]:
    if b is None:
        return {}
    request = remote_pb2.WriteRequest.FromString(b.write_request)
    return {tuple((lb.name, lb.value) for lb in s.labels): s.samples[-1].value
            for s in request.timeseries}


def merged(outputs: list[MergedOutput]) -> dict[LabelSet, float]:
    return {labels: v for o in outputs for labels, _, v in o.points}


def req(user: int, value: float, *, route: str = "/a", name: str = "http_requests_total"
        ) -> Series:
    return ({"__name__": name, "route": route, "user_id": f"u{user}"}, value)


def engine_with(*policies: PolicySpec, clock: Clock | None = None) -> PolicyEngine:
    engine = PolicyEngine(replica_id="r1", clock_ms=clock or Clock())
    engine.apply(Source(own=policies))
    return engine


def test_without_policies_the_batch_passes_as_it_came() -> None:
    engine = engine_with()
    b = batch([req(1, 1.0), req(2, 2.0)], 1000)
    outcome = engine.process(b)
    assert outcome.passthrough is b
    assert outcome.tally.received == outcome.tally.accepted == 2
    assert engine.flush(force=True) == []


def test_drop_removes_only_matching_series_and_counts_them() -> None:
    engine = engine_with(PolicySpec(id="no-debug", action=Drop(),
                                    match=MetricSelector(metric_name="debug_info")))
    b = batch([req(1, 1.0), ({"__name__": "debug_info", "x": "1"}, 5.0)], 1000)
    outcome = engine.process(b)
    assert outcome.tally.dropped == 1
    assert [dict(k)["__name__"] for k in parsed(outcome.passthrough)] == ["http_requests_total"]


def test_aggregate_without_sums_counters_per_remaining_labels_with_the_replica_label() -> None:
    clock = Clock()
    engine = engine_with(PolicySpec(id="no-user", action=Aggregate(without=("user_id",)),
                                    match=MetricSelector(metric_name="http_requests_total")),
                         clock=clock)
    out = engine.process(batch([req(1, 3.0), req(2, 4.0), req(3, 10.0, route="/b")], 1000))
    assert out.passthrough is None and out.tally.merged == 3
    clock.ms += 15_000
    sums = merged(engine.flush())
    a = (("__name__", "http_requests_total"), (REPLICA_LABEL, "r1"), ("route", "/a"))
    b = (("__name__", "http_requests_total"), (REPLICA_LABEL, "r1"), ("route", "/b"))
    assert sums == {a: 7.0, b: 10.0}
    # u1 resets (3 -> 1): the total keeps counting up, as rate() reads a reset.
    engine.process(batch([req(1, 1.0), req(2, 6.0)], 20_000))
    clock.ms += 15_000
    assert merged(engine.flush())[a] == 7.0 + 1.0 + 2.0


def test_cap_keeps_the_first_series_and_overflow_carries_the_rest_exactly() -> None:
    clock = Clock()
    engine = engine_with(PolicySpec(id="cap2", action=Cap(max_series=2)), clock=clock)
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    out = engine.process(batch([req(i, v) for i, v in enumerate(values)], 1000))
    kept = parsed(out.passthrough)
    assert len(kept) == 2 and out.tally.overflowed == 3
    overflow = merged(engine.flush(force=True))
    (labels, total), = overflow.items()
    assert dict(labels) == {"__name__": "http_requests_total", OVERFLOW_LABEL: "true",
                            REPLICA_LABEL: "r1"}
    assert sum(kept.values()) + total == sum(values)


def test_a_capped_series_that_keeps_sending_keeps_its_place_past_the_idle_timeout() -> None:
    """Windows refresh the cap places of the series they saw; a place frees only when its
    series falls silent for the cap's idle_timeout."""
    clock = Clock()
    engine = engine_with(PolicySpec(id="cap1", action=Cap(max_series=1,
                                                          idle_timeout=timedelta(seconds=30))),
                         clock=clock)
    for step in range(6):  # u1 sends for 60 s, a window every 10 s
        out = engine.process(batch([req(1, float(step))], clock.ms))
        assert len(parsed(out.passthrough)) == 1
        clock.ms += 10_000
        engine.close_window()
    late = engine.process(batch([req(1, 9.0), req(2, 1.0)], clock.ms))
    assert [dict(k)["user_id"] for k in parsed(late.passthrough)] == ["u1"]
    assert late.tally.overflowed == 1
    for _ in range(5):  # u1 falls silent: 30 s after the window that last saw it, its place
        # frees and a newcomer takes it (u2 stays in overflow: decisions are sticky)
        clock.ms += 10_000
        engine.close_window()
    fresh = engine.process(batch([req(3, 1.0)], clock.ms))
    assert [dict(k)["user_id"] for k in parsed(fresh.passthrough)] == ["u3"]


def test_critical_series_survive_every_policy() -> None:
    classify = PolicySpec(id="tiers", action=Classify(rules=(PriorityRule(
        PriorityClass.CRITICAL, (LabelMatcher("route", MatchOp.EQUAL, "/checkout"),)),)))
    engine = engine_with(classify, PolicySpec(id="drop-all", action=Drop()))
    out = engine.process(batch([req(1, 1.0), req(2, 2.0, route="/checkout")], 1000))
    assert [dict(k)["route"] for k in parsed(out.passthrough)] == ["/checkout"]
    assert out.tally.dropped == 1


def test_a_full_cap_pushes_lower_classes_into_overflow_first_and_totals_stay_exact() -> None:
    """Route /low is LOW, /high HIGH; a cap of 2. A HIGH newcomer pushes the latest LOW
    series into overflow: its next point still reaches its own series (which ends there)
    and only starts its state in overflow, so own series + overflow = what was sent."""
    clock = Clock()
    classify = PolicySpec(id="tiers", action=Classify(default_class=PriorityClass.MEDIUM,
                                                      rules=(
        PriorityRule(PriorityClass.HIGH, (LabelMatcher("route", MatchOp.EQUAL, "/high"),)),
        PriorityRule(PriorityClass.LOW, (LabelMatcher("route", MatchOp.EQUAL, "/low"),)))))
    engine = engine_with(classify, PolicySpec(id="cap2", action=Cap(max_series=2)),
                         clock=clock)
    own: dict[str, float] = {}

    def send(ts: int, values: dict[tuple[int, str], float]) -> None:
        out = engine.process(batch([req(u, v, route=r) for (u, r), v in values.items()], ts))
        own.update({f"{dict(k)['user_id']}{dict(k)['route']}": v
                    for k, v in parsed(out.passthrough).items()})

    send(1000, {(1, "/low"): 10.0, (2, "/low"): 20.0})
    send(2000, {(1, "/low"): 11.0, (2, "/low"): 21.0, (3, "/high"): 5.0})
    assert own == {"u1/low": 11.0, "u2/low": 21.0, "u3/high": 5.0}  # u2 pushed out now
    send(3000, {(1, "/low"): 12.0, (2, "/low"): 25.0, (3, "/high"): 6.0})
    assert own["u2/low"] == 25.0  # its own series ends at its hand-over point
    send(4000, {(1, "/low"): 13.0, (2, "/low"): 30.0, (3, "/high"): 7.0})
    assert own == {"u1/low": 13.0, "u2/low": 25.0, "u3/high": 7.0}
    clock.ms += 15_000
    overflow = merged(engine.flush())
    (total,) = overflow.values()
    assert total == 30.0 - 25.0  # only what u2 counted after the hand-over
    assert sum(own.values()) + total == 13.0 + 30.0 + 7.0


def test_dry_run_changes_nothing_and_reports_what_it_would_do() -> None:
    clock = Clock()
    engine = engine_with(PolicySpec(id="would-drop", action=Drop(), mode=PolicyMode.DRY_RUN),
                         clock=clock)
    b = batch([req(1, 1.0), req(2, 2.0)], 1000)
    assert engine.process(b).passthrough is b
    clock.ms += 10_000
    (snap,) = engine.close_window()
    (metric,) = snap.metrics
    (tally,) = metric.policies
    assert (tally.policy_id, tally.dry_run, tally.matched_series, tally.changed_points) == (
        "would-drop", True, 2, 2)


def test_switching_profile_applies_at_the_next_batch_and_ends_old_groups() -> None:
    clock = Clock()
    engine = PolicyEngine(replica_id="r1", clock_ms=clock)
    aggressive = ProfileSpec(name="aggressive", policies=(
        PolicySpec(id="no-user", action=Aggregate(without=("user_id",))),))
    engine.apply(Source(active=aggressive, others=(FULL,)))
    assert engine.process(batch([req(1, 1.0), req(2, 2.0)], 1000)).passthrough is None
    engine.apply(Source(active=FULL, others=(aggressive,)))
    # The old groups' last totals and then staleness markers are queued at the switch.
    final = [p for o in engine.flush() for p in o.points]
    assert [v for _, _, v in final if not is_stale_marker(v)] == [3.0]
    assert sum(is_stale_marker(v) for _, _, v in final) == 1
    b = batch([req(1, 2.0), req(2, 3.0)], 2000)
    assert engine.process(b).passthrough is b


def test_window_reports_distinct_series_and_every_profiles_output() -> None:
    clock = Clock()
    engine = PolicyEngine(replica_id="r1", clock_ms=clock)
    balanced = ProfileSpec(name="balanced", policies=(
        PolicySpec(id="no-user", action=Aggregate(without=("user_id",))),))
    engine.apply(Source(active=FULL, others=(balanced,)))
    for t in range(3):
        engine.process(batch([req(u, float(t), route=f"/{u % 2}") for u in range(10)],
                             1000 + t))
    clock.ms += 10_000
    (snap,) = engine.close_window(replica_count=3)
    (metric,) = snap.metrics
    assert snap.active_profile == "full" and snap.replica_count == 3
    assert len(metric.series) == 10 and sum(s.points for s in metric.series) == 30
    assert len(metric.outputs["full"]) == 10
    assert len(metric.outputs["balanced"]) == 2  # /0 and /1
    assert metric.counts.received == 30


def test_policies_refused_in_etcd_are_reported_in_the_tenants_window() -> None:
    clock = Clock()
    engine = PolicyEngine(replica_id="r1", clock_ms=clock)
    engine.apply(Source(rejections=(
        ("acme", "bad-cap", (("cap.max_series", "must be at least 1, got 0"),)),
        ("other", "x", (("id", "bad"),)),
        ("", "broken-profile", (("policies[0].aggregate", "give by or without"),)))))
    engine.process(batch([req(1, 1.0)], 1000))
    clock.ms += 10_000
    (snap,) = engine.close_window()
    assert [name for _, name, _ in snap.rejected_policies] == ["bad-cap", "broken-profile"]


def test_series_held_counts_each_series_once_and_forgets_silent_ones() -> None:
    """What phoenix_pipeline_series shows: distinct series per tenant, repeats counted once,
    series silent for 6 windows forgotten (the pipeline's memory follows this number)."""
    engine = engine_with()
    for ts in (1, 2):  # the same 40 series twice, and 5 of another tenant
        engine.process(batch([req(u, float(ts)) for u in range(40)], ts))
    engine.process(batch([req(u, 1.0) for u in range(5)], 1, tenant="other"))
    assert engine.series_held() == {"acme": 40, "other": 5}
    for _ in range(6):  # the window they sent in closes, then five silent ones
        [job() for job in engine.window_jobs()]
        engine.process(batch([req(0, 9.0)], 3))  # one acme series keeps sending
    assert engine.series_held() == {"acme": 40, "other": 5}
    [job() for job in engine.window_jobs()]  # the sixth silent window
    assert engine.series_held() == {"acme": 1, "other": 0}


def test_series_routed_again_after_their_labels_moved_to_the_memo_merge_by_their_labels(
) -> None:
    """After two window closes the engine keeps a series' labels only as the memo's pair
    ids; a policy that arrives then routes the held series from those, with the same
    result as from the labels they came with."""
    clock = Clock()
    source = Source()
    engine = PolicyEngine(replica_id="r1", clock_ms=clock)
    engine.apply(source)
    sent = [req(u, float(u), route=f"/{u % 3}") for u in range(30)]
    for t in range(2):  # the first close learns the labels, the second lets the index go
        engine.process(batch(sent, 1000 + t))
        clock.ms += 10_000
        (snap,) = engine.close_window()
    (metric,) = snap.metrics
    assert sorted(dict(s.labels)["user_id"] for s in metric.series) == sorted(
        f"u{u}" for u in range(30))
    engine.apply(Source(own=(PolicySpec(id="no-user", action=Aggregate(without=("user_id",)),
                                        match=MetricSelector(metric_name="http_requests_total")),)))
    out = engine.process(batch(sent, 30_000))
    assert out.passthrough is None and out.tally.merged == 30
    clock.ms += 15_000
    sums = merged(engine.flush())
    assert {dict(labels)["route"]: v for labels, v in sums.items()} == {
        f"/{r}": float(sum(u for u in range(30) if u % 3 == r)) for r in range(3)}
