"""What a candidate policy would do to a tenant's traffic, computed from the last window.

:func:`dry_run` routes the input series of one closed window
(:class:`~phoenixcp.core.policy.window.TenantSnapshot`) through a fresh
``Plan([candidate])`` and counts the outcome: the series of the metrics it touches before
and after, the output series formed by merging several inputs, and the series it would drop
or push into an overflow or ``other`` series. The candidate is evaluated as if enforced (a
``dry_run``-mode policy would otherwise change nothing; the answer says so).

**Samples and estimates.** A metric's ``series`` may be a sample of its distinct series (a
bottom-k by series key, uniform and the same on every replica), and at most ``sample_limit``
of them are routed, to bound the work. Counts are over the series routed; the estimates
scale them to all of the metric's distinct series: series that stay as they are and groups
seen once scale with the sampling rate, a group that several sampled series merge into
counts once, and so does an overflow or ``other`` series. A cap's ``max_series`` and a
top-K's ``k`` are scaled to the sampling rate before routing, so the kept share of the
sample is the kept share of the whole (a per-tenant cap uses the tenant's overall rate).
With every series present (rate 1) the estimates equal the counts.

Series are routed heaviest first (most points in the window, then by key), so a cap admits
and a top-K keeps the busiest series, as a ranking over time would; the engine itself admits
first come, first served, so *which* series a cap keeps may differ, never how many.

Pure and thread-safe (the snapshot is immutable and the plans are private to the call), so
an API server may run it in a worker thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from phoenixcp.core.batch import LabelSet
from phoenixcp.core.policy.model import (
    Cap,
    CapScope,
    PolicyMode,
    PolicySpec,
    PriorityClass,
    TopK,
)
from phoenixcp.core.policy.plan import Code, Plan, Route
from phoenixcp.core.policy.window import MetricSnapshot, SeriesSeen, TenantSnapshot
from phoenixcp.core.sketches import bottom_k_indices

__all__ = ["DEFAULT_SAMPLE_LIMIT", "DryRunResult", "MergedGroup", "distinct_series", "dry_run"]

DEFAULT_SAMPLE_LIMIT = 20_000
"""Series per metric routed at most; beyond it the metric is sampled."""
_LISTED = 5


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
    samples = [(m, _sample(m.series, sample_limit)) for m in window.metrics]
    plans = _Plans(candidate, replica, samples)
    tally = _Tally()
    for metric, chosen in samples:
        _route_metric(plans.for_metric(metric, chosen), candidate.id, metric, chosen,
                      window.end_ms, tally, examples_per_group)
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


def distinct_series(metric: MetricSnapshot) -> int:
    """How many distinct input series the metric had in the window: every key when the
    snapshot lists them apart from a sample (``input_keys``), else ``len(series)``."""
    return max(len(metric.all_keys), len(metric.series))


def _sample(series: Sequence[SeriesSeen], limit: int) -> Sequence[SeriesSeen]:
    if len(series) <= limit:
        return series
    keys = np.fromiter((s.key for s in series), dtype=np.uint64, count=len(series))
    return [series[i] for i in bottom_k_indices(keys, limit).tolist()]


class _Plans:
    """The plans to route with: the candidate, its cap or top-K limit scaled to the sampling
    rate (per metric, or the tenant's overall rate for a per-tenant cap); one per limit."""

    def __init__(self, candidate: PolicySpec, replica: str,
                 samples: Sequence[tuple[MetricSnapshot, Sequence[SeriesSeen]]]) -> None:
        self._candidate = candidate
        self._replica = replica
        self._plans: dict[int, Plan] = {}
        action = candidate.action
        total = sum(distinct_series(m) for m, _ in samples)
        self._tenant_rate = (sum(len(c) for _, c in samples) / total) if total else 1.0
        self._per_tenant = isinstance(action, Cap) and action.scope is CapScope.PER_TENANT

    def for_metric(self, metric: MetricSnapshot, chosen: Sequence[SeriesSeen]) -> Plan:
        total = distinct_series(metric)
        rate = self._tenant_rate if self._per_tenant else (len(chosen) / total if total else 1)
        policy = self._candidate
        match policy.action:
            case Cap() as cap:
                limit = max(1, round(cap.max_series * rate))
                policy = dataclasses.replace(
                    policy, action=dataclasses.replace(cap, max_series=limit))
            case TopK() as top_k:
                limit = max(1, round(top_k.k * rate))
                policy = dataclasses.replace(policy, action=dataclasses.replace(top_k, k=limit))
            case _:
                limit = 0
        plan = self._plans.get(limit)
        if plan is None:
            plan = self._plans[limit] = Plan([policy], replica=self._replica)
        return plan


def _route_metric(plan: Plan, policy_id: str, metric: MetricSnapshot,
                  chosen: Sequence[SeriesSeen], now_ms: int, tally: _Tally,
                  per_group: int) -> None:
    ordered = sorted(chosen, key=lambda s: (-s.points, s.key))
    routed = [(seen, plan.route(seen.labels, metric.kind, now_ms)) for seen in ordered]
    matched = sum(1 for _, route in routed if _matches(route, policy_id))
    if not matched:
        return
    kept = 0
    groups: dict[int, _Group] = {}
    for seen, route in routed:
        if route.priority is PriorityClass.CRITICAL and _matches(route, policy_id):
            tally.critical += 1
        if route.code is Code.DROP:
            tally.dropped += 1
            tally.dropped_series.append(seen)
        elif route.code is Code.MERGE:
            other = route.overflow or route.topk is not None
            if other:
                tally.overflowed += 1
            group = groups.get(route.group_key)
            if group is None:
                group = groups[route.group_key] = _Group(metric.name, route.group, other)
            group.inputs += 1
            if len(group.examples) < per_group:
                group.examples.append(seen)
        else:
            kept += 1
    total = distinct_series(metric)
    scale = total / len(chosen)
    if scale > 1:
        tally.sampled_metrics.append(f"{metric.name} ({len(chosen)} of {total})")
    tally.matched += matched
    tally.before += len(chosen)
    tally.after += kept + len(groups)
    tally.estimated_before += total
    tally.estimated_after += kept * scale + sum(
        1 if g.overflow or g.inputs > 1 else scale for g in groups.values())
    tally.groups.update(((metric.name, k), g) for k, g in groups.items())


def _matches(route: Route, policy_id: str) -> bool:
    return any(pid == policy_id for pid, _, _ in route.tallies)


def _warnings(tally: _Tally, window: TenantSnapshot) -> list[str]:
    out: list[str] = []
    if not tally.matched:
        total = sum(distinct_series(m) for m in window.metrics)
        out.append(f"the policy matches no series in the last window ({total} series of "
                   f"{len(window.metrics)} metrics)")
    if tally.critical:
        out.append(f"{tally.critical} matched series are CRITICAL and are never changed")
    if tally.sampled_metrics:
        listed = tally.sampled_metrics[:_LISTED]
        more = len(tally.sampled_metrics) - len(listed)
        out.append("counted over a sample and estimated for all series (caps and top-K "
                   "scaled to the sample): " + ", ".join(listed)
                   + (f" and {more} more metrics" if more else ""))
    return out
