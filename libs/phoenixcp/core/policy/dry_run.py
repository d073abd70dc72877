"""What a candidate policy would do to a tenant's traffic, computed from the last window.

:func:`dry_run` routes the distinct input series of one closed window
(:class:`~phoenixcp.core.policy.window.TenantSnapshot`) through a fresh
``Plan([candidate])`` and counts the outcome: the series of the metrics it touches before
and after, the output series formed by merging several inputs, and the series it would drop
or push into an overflow or ``other`` series. The candidate is evaluated as if enforced (a
``dry_run``-mode policy would otherwise change nothing; the answer says so).

The window holds every distinct series the replica saw, so normally the "sample" is the whole
window. A metric with more than ``sample_limit`` series is sampled (bottom-k by series key,
the same uniform sample on every replica) to bound the work, and its counts are scaled up
linearly into the estimates; that is exact for drops and 1:1 routes and rough for caps and
merges, and a warning says so.

Series are routed heaviest first (most points in the window, then by key), so a cap admits
and a top-K keeps the busiest series, as a ranking over time would; the engine itself admits
first come, first served, so *which* series a cap keeps may differ, never how many.

Pure and thread-safe (the snapshot is immutable and the plan is private to the call), so an
API server may run it in a worker thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from phoenixcp.core.batch import LabelSet
from phoenixcp.core.policy.model import PolicyMode, PolicySpec, PriorityClass
from phoenixcp.core.policy.plan import Code, Plan, Route
from phoenixcp.core.policy.window import MetricSnapshot, SeriesSeen, TenantSnapshot
from phoenixcp.core.sketches import bottom_k_indices

__all__ = ["DEFAULT_SAMPLE_LIMIT", "DryRunResult", "MergedGroup", "dry_run"]

DEFAULT_SAMPLE_LIMIT = 20_000
"""Series per metric routed at most; beyond it the metric is sampled."""


@dataclass(frozen=True, slots=True)
class MergedGroup:
    """One output series that several input series would merge into."""

    metric: str
    labels: LabelSet
    """The output series' labels, ``__name__`` and ``phoenix_replica`` included, sorted."""
    inputs: int
    """Sampled input series merging into it."""
    examples: tuple[SeriesSeen, ...]
    """A few of those inputs (heaviest first)."""
    overflow: bool = False
    """True for a cap's overflow series or a top-K ``other`` series."""


@dataclass(frozen=True, slots=True)
class DryRunResult:
    """The outcome of :func:`dry_run`; "sample" counts are over the series routed."""

    start_ms: int
    end_ms: int
    matched: int
    """Sampled input series the policy matches."""
    before: int
    """Sampled series of the metrics the policy matches, before it."""
    after: int
    """Output series from those, after it."""
    estimated_before: float
    estimated_after: float
    merged_groups: tuple[MergedGroup, ...]
    """Outputs formed by more than one input, largest first (at most ``max_examples``)."""
    dropped: tuple[SeriesSeen, ...]
    """Series it would drop, heaviest first (at most ``max_examples``)."""
    dropped_count: int
    overflowed_count: int
    """Series that would go into a cap's overflow series or a top-K ``other`` series."""
    warnings: tuple[str, ...] = field(default=())


@dataclass(slots=True)
class _Group:
    metric: str
    labels: LabelSet
    overflow: bool
    inputs: int = 0
    examples: list[SeriesSeen] = field(default_factory=list)


@dataclass(slots=True)
class _Tally:
    matched: int = 0
    before: int = 0
    after: int = 0
    estimated_before: float = 0.0
    estimated_after: float = 0.0
    dropped: int = 0
    overflowed: int = 0
    critical: int = 0
    sampled_metrics: list[str] = field(default_factory=list)
    groups: dict[tuple[str, int], _Group] = field(default_factory=dict)
    dropped_series: list[SeriesSeen] = field(default_factory=list)


def dry_run(candidate: PolicySpec, window: TenantSnapshot, *, replica: str,
            max_examples: int = 20, examples_per_group: int = 3,
            sample_limit: int = DEFAULT_SAMPLE_LIMIT) -> DryRunResult:
    """Route ``window``'s series through ``Plan([candidate])`` and count what changes.

    ``replica`` is the pipeline replica's id (merged outputs carry it as ``phoenix_replica``);
    ``max_examples`` bounds the merged groups and dropped series returned (each list),
    ``examples_per_group`` the inputs shown per group. Raises ValueError for a negative
    bound or a ``sample_limit`` below 1.
    """
    if max_examples < 0 or examples_per_group < 0:
        raise ValueError("max_examples and examples_per_group must be >= 0")
    if sample_limit < 1:
        raise ValueError(f"sample_limit must be at least 1, got {sample_limit}")
    warnings: list[str] = []
    if candidate.mode is PolicyMode.DRY_RUN:
        warnings.append("the policy's mode is dry_run: stored as it is, it changes nothing; "
                        "these are the effects it would have once enforced")
        candidate = dataclasses.replace(candidate, mode=PolicyMode.ENFORCE)
    if candidate.expired(datetime.fromtimestamp(window.end_ms / 1000, tz=UTC)):
        warnings.append("the policy's expire_time has passed: it would apply to nothing")
    plan = Plan([candidate], replica=replica)
    tally = _Tally()
    for metric in window.metrics:
        _route_metric(plan, candidate.id, metric, window.end_ms, tally,
                      examples_per_group, sample_limit)
    warnings.extend(_warnings(tally, window))
    groups = sorted((g for g in tally.groups.values() if g.inputs > 1),
                    key=lambda g: (-g.inputs, g.metric, g.labels))
    dropped = sorted(tally.dropped_series, key=lambda s: (-s.points, s.key))
    return DryRunResult(
        start_ms=window.start_ms, end_ms=window.end_ms, matched=tally.matched,
        before=tally.before, after=tally.after, estimated_before=tally.estimated_before,
        estimated_after=tally.estimated_after,
        merged_groups=tuple(MergedGroup(g.metric, g.labels, g.inputs, tuple(g.examples),
                                        g.overflow) for g in groups[:max_examples]),
        dropped=tuple(dropped[:max_examples]), dropped_count=tally.dropped,
        overflowed_count=tally.overflowed, warnings=tuple(warnings))


def _sample(series: Sequence[SeriesSeen], limit: int) -> Sequence[SeriesSeen]:
    if len(series) <= limit:
        return series
    keys = np.fromiter((s.key for s in series), dtype=np.uint64, count=len(series))
    return [series[i] for i in bottom_k_indices(keys, limit).tolist()]


def _route_metric(plan: Plan, policy_id: str, metric: MetricSnapshot, now_ms: int,
                  tally: _Tally, per_group: int, limit: int) -> None:
    chosen = _sample(metric.series, limit)
    ordered = sorted(chosen, key=lambda s: (-s.points, s.key))
    routed = [(seen, plan.route(seen.labels, metric.kind, now_ms)) for seen in ordered]
    matched = sum(1 for _, route in routed if _matches(route, policy_id))
    if not matched:
        return
    outputs: set[int] = set()
    for seen, route in routed:
        if route.priority is PriorityClass.CRITICAL and _matches(route, policy_id):
            tally.critical += 1
        if route.code is Code.DROP:
            tally.dropped += 1
            tally.dropped_series.append(seen)
        elif route.code is Code.MERGE:
            outputs.add(route.group_key)
            other = route.overflow or route.topk is not None
            if other:
                tally.overflowed += 1
            group = tally.groups.get((metric.name, route.group_key))
            if group is None:
                group = tally.groups[(metric.name, route.group_key)] = _Group(
                    metric.name, route.group, other)
            group.inputs += 1
            if len(group.examples) < per_group:
                group.examples.append(seen)
        else:
            outputs.add(seen.key)
    scale = len(metric.series) / len(chosen)
    if len(chosen) < len(metric.series):
        tally.sampled_metrics.append(f"{metric.name} ({len(chosen)} of {len(metric.series)})")
    tally.matched += matched
    tally.before += len(chosen)
    tally.after += len(outputs)
    tally.estimated_before += len(metric.series)
    tally.estimated_after += len(outputs) * scale


def _matches(route: Route, policy_id: str) -> bool:
    return any(pid == policy_id for pid, _, _ in route.tallies)


def _warnings(tally: _Tally, window: TenantSnapshot) -> list[str]:
    out: list[str] = []
    if not tally.matched:
        total = sum(len(m.series) for m in window.metrics)
        out.append(f"the policy matches no series in the last window ({total} series of "
                   f"{len(window.metrics)} metrics)")
    if tally.critical:
        out.append(f"{tally.critical} matched series are CRITICAL and are never changed")
    if tally.sampled_metrics:
        out.append("sampled, and scaled linearly into the estimates (rough for caps and "
                   "merges): " + ", ".join(tally.sampled_metrics))
    return out

