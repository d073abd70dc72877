"""The policy stage of one pipeline replica: routes every batch through its tenant's plan.

Per batch the engine works on arrays and cached decisions, never per point, unless a policy
must change points:

* each series key is looked up in the tenant's route cache; a series seen for the first time
  is decoded (only that series: :meth:`MetricBatch.subset`) and routed once by the
  :class:`~phoenixcp.core.policy.plan.Plan`;
* series that pass go out as the request's own bytes (the whole batch when nothing changes);
* dropped series are counted; merged series are decoded and their points fed to the mergers
  of :mod:`phoenixcp.core.aggregation`, which :meth:`PolicyEngine.flush` empties on each
  target's flush interval.

A policy change (:meth:`PolicyEngine.apply`) takes effect between two batches: routes are
recomputed, merge state of policies that stay is kept, and the groups of policies that went
are flushed and ended with a staleness marker. Every window the engine also hands out what it
saw (:meth:`close_window`): distinct series with their labels, and the output cardinality of
every profile, the active one and the shadow ones.

Not thread-safe: the pipeline's event loop is the one caller.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import numpy as np
import numpy.typing as npt

from phoenixcp.core.aggregation import CumulativeMerger, GaugeMerger, MergeConfig
from phoenixcp.core.batch import LabelSet, MetricBatch, MetricType
from phoenixcp.core.policy.model import MetricKind, PolicySpec, ProfileSpec
from phoenixcp.core.policy.plan import DEFAULT_FLUSH, Code, MergeSpec, Plan, Route, kind_of
from phoenixcp.core.policy.window import (
    MetricSnapshot,
    PointTally,
    PolicyTally,
    SeriesSeen,
    TenantSnapshot,
)
from phoenixcp.core.series import METRIC_NAME_LABEL

__all__ = ["MergedOutput", "Outcome", "PolicyEngine", "PolicySource"]

log = logging.getLogger(__name__)

_SAME = 0
"""Shadow output code: the series passes unchanged (its output key is its input key)."""
_DROPPED = 1
_COMPACT_EVERY = 64
_RECENT_WINDOWS = 6


class PolicySource(Protocol):
    """What the engine needs of the policy state (the watcher's view implements it)."""

    @property
    def profiles(self) -> Mapping[str, ProfileSpec]: ...

    def profile_for(self, tenant: str) -> ProfileSpec: ...

    def policies_for(self, tenant: str, now: datetime) -> tuple[PolicySpec, ...]: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one batch: the series to export unchanged (None: none) and counts."""

    passthrough: MetricBatch | None
    tally: PointTally


@dataclass(frozen=True, slots=True)
class MergedOutput:
    """Merged points of one tenant to export: ``(labels, timestamp_ms, value)``."""

    tenant: str
    points: list[tuple[LabelSet, int, float]]


@dataclass(slots=True)
class _Target:
    spec: MergeSpec
    cumulative: CumulativeMerger
    gauge: GaugeMerger
    interval_ms: int
    next_flush_ms: int

    def flush(self, now_ms: int) -> list[tuple[LabelSet, int, float]]:
        points = self.cumulative.flush(now_ms) + self.gauge.flush(now_ms)
        return [(_labels(p.group), p.timestamp_ms, p.value) for p in points]

    def close(self, now_ms: int) -> list[tuple[LabelSet, int, float]]:
        points = self.cumulative.close(now_ms) + self.gauge.close(now_ms)
        return [(_labels(p.group), p.timestamp_ms, p.value) for p in points]


def _labels(group: Hashable) -> LabelSet:
    assert isinstance(group, tuple)
    return group


@dataclass(slots=True)
class _Window:
    start_ms: int
    keys: list[npt.NDArray[np.uint64]] = field(default_factory=list)
    points: list[npt.NDArray[np.int64]] = field(default_factory=list)
    tally: PointTally = field(default_factory=PointTally)
    last_values: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def add(self, keys: npt.NDArray[np.uint64], points: npt.NDArray[np.int64]) -> None:
        self.keys.append(keys)
        self.points.append(points)
        if len(self.keys) >= _COMPACT_EVERY:
            self.compact()

    def compact(self) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
        if not self.keys:
            return np.empty(0, np.uint64), np.empty(0, np.int64)
        keys = np.concatenate(self.keys)
        points = np.concatenate(self.points)
        distinct, inverse = np.unique(keys, return_inverse=True)
        summed = np.bincount(inverse, weights=points, minlength=len(distinct)).astype(np.int64)
        self.keys, self.points = [distinct], [summed]
        return distinct, summed


@dataclass(slots=True)
class _Tenant:
    name: str
    plan: Plan
    profile: str
    window: _Window
    routes: dict[int, Route] = field(default_factory=dict)
    catalog: dict[int, LabelSet] = field(default_factory=dict)
    kinds: dict[str, MetricType] = field(default_factory=dict)
    shadows: dict[str, tuple[Plan, dict[int, int]]] = field(default_factory=dict)
    last: TenantSnapshot | None = None
    recent: list[npt.NDArray[np.uint64]] = field(default_factory=list)
    watched: dict[int, tuple[int, float]] = field(default_factory=dict)
    """Last (timestamp, value) of series a top-K keeps, to hand over if it is demoted."""
    handover: dict[int, Route] = field(default_factory=dict)
    """Series just promoted by a top-K, with the ``other`` route their next point also feeds."""
    """Distinct keys of the last windows: the catalog and caches keep only these."""


def _points_per_series(batch: MetricBatch) -> npt.NDArray[np.int64]:
    spans = getattr(batch, "series_spans", None)
    if spans is not None and len(spans) == batch.series_count:
        return np.asarray(spans[:, 2], dtype=np.int64)
    cols = batch.columns()
    return np.bincount(cols.series_index, minlength=batch.series_count).astype(np.int64)


def _subset(batch: MetricBatch, index: npt.NDArray[np.intp]) -> MetricBatch:
    return batch.subset(index)


class PolicyEngine:
    """Applies each tenant's active profile and own policies; see the module docstring.

    ``clock_ms`` is the wall clock in unix milliseconds (merged points are stamped with it);
    tests pass their own.
    """

    def __init__(self, *, replica_id: str, clock_ms: Callable[[], int] | None = None,
                 merge_config: MergeConfig | None = None,
                 default_flush: timedelta = DEFAULT_FLUSH) -> None:
        self.replica_id = replica_id
        self._default_flush = default_flush
        self._clock = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._merge_config = merge_config or MergeConfig()
        self._source: PolicySource | None = None
        self._tenants: dict[str, _Tenant] = {}
        self._targets: dict[tuple[str, Hashable], _Target] = {}
        self._pending: list[MergedOutput] = []
        self._interned: dict[tuple[str, str], tuple[str, str]] = {}
        self.plan_changes = 0

    # -- policy state ------------------------------------------------------------------

    def apply(self, source: PolicySource) -> None:
        """Take new policy state; every known tenant switches before its next batch."""
        self._source = source
        now_ms = self._clock()
        for tenant in self._tenants.values():
            self._replan(tenant, now_ms)
        self._close_unused_targets(now_ms)

    def _plan(self, policies: tuple[PolicySpec, ...]) -> Plan:
        return Plan(policies, replica=self.replica_id, default_flush=self._default_flush)

    def active_profile(self, tenant: str) -> str:
        if self._source is None:
            return "full"
        return self._source.profile_for(tenant).name

    def _policies(self, tenant: str) -> tuple[str, tuple[PolicySpec, ...]]:
        if self._source is None:
            return "full", ()
        now = datetime.fromtimestamp(self._clock() / 1000, tz=UTC)
        return (self._source.profile_for(tenant).name,
                self._source.policies_for(tenant, now))

    def _replan(self, tenant: _Tenant, now_ms: int) -> None:
        profile, policies = self._policies(tenant.name)
        plan = self._plan(policies)
        if plan.signature != tenant.plan.signature or profile != tenant.profile:
            if plan.signature != tenant.plan.signature:
                tenant.plan = plan
                tenant.routes.clear()
                self.plan_changes += 1
            tenant.profile = profile
            log.info("policies applied", extra={"fields": {
                "tenant": tenant.name, "profile": profile, "policies": len(policies),
                "unsupported": plan.unsupported}})
        tenant.shadows = self._shadow_plans(tenant, profile, tenant.shadows)

    def _shadow_plans(self, tenant: _Tenant, active: str,
                      old: dict[str, tuple[Plan, dict[int, int]]]
                      ) -> dict[str, tuple[Plan, dict[int, int]]]:
        if self._source is None:
            return {}
        own = [p for p in self._policies(tenant.name)[1]
               if p not in self._source.profile_for(tenant.name).policies]
        out: dict[str, tuple[Plan, dict[int, int]]] = {}
        for name, profile in self._source.profiles.items():
            if name == active:
                continue
            plan = self._plan(tuple(profile.policies) + tuple(own))
            previous = old.get(name)
            if previous is not None and previous[0].signature == plan.signature:
                out[name] = previous
            else:
                out[name] = (plan, {})
        return out

    def _tenant(self, name: str, now_ms: int) -> _Tenant:
        tenant = self._tenants.get(name)
        if tenant is None:
            tenant = _Tenant(name, self._plan(()), "full", _Window(now_ms))
            self._tenants[name] = tenant
            self._replan(tenant, now_ms)
        return tenant

    def _close_unused_targets(self, now_ms: int) -> None:
        live = {(t.name, fp) for t in self._tenants.values() for fp in t.plan.targets}
        for key in [k for k in self._targets if k not in live]:
            target = self._targets.pop(key)
            points = target.close(now_ms)
            if points:
                self._pending.append(MergedOutput(key[0], points))

    # -- the data path -------------------------------------------------------------------

    def process(self, batch: MetricBatch) -> Outcome:
        """Route one batch; returns what to export unchanged and the counts."""
        now_ms = self._clock()
        tenant = self._tenant(batch.tenant, now_ms)
        keys = batch.series_keys
        points = _points_per_series(batch)
        tally = PointTally(received=batch.sample_count)
        key_list = keys.tolist()
        self._learn(tenant, batch, key_list)
        tenant.window.add(keys, points)
        if tenant.plan.empty:
            tally.accepted = batch.sample_count
            tenant.window.tally.add(tally)
            return Outcome(batch, tally)
        routes = tenant.routes
        found = [routes.get(k) for k in key_list]
        for i, route in enumerate(found):
            if route is None:
                found[i] = self._route(tenant, key_list[i], now_ms)
        codes = np.fromiter((r.code for r in found if r is not None), dtype=np.int8,
                            count=len(found))
        if not codes.any():
            tally.accepted = batch.sample_count
            tenant.window.tally.add(tally)
            return Outcome(batch, tally)
        if batch.histogram_count:
            # Native histograms are not merged (ADR 0007): such series pass unchanged.
            native = np.asarray(batch.series_spans[:, 3] > 0)
            codes[native & (codes >= Code.MERGE)] = Code.OBSERVE
        passing = np.flatnonzero((codes <= Code.OBSERVE) | (codes == Code.WATCH))
        merging = np.flatnonzero(codes >= Code.MERGE)
        tally.dropped = int(points[codes == Code.DROP].sum())
        if len(merging):
            self._merge(tenant, batch, merging, found, key_list, tally)
        passthrough = None
        if len(passing):
            passthrough = batch if len(passing) == len(codes) else _subset(batch, passing)
        tally.accepted = batch.sample_count
        tenant.window.tally.add(tally)
        return Outcome(passthrough, tally)

    def _learn(self, tenant: _Tenant, batch: MetricBatch, key_list: list[int]) -> None:
        """Decode the labels of series never seen, and the batch's metadata types."""
        catalog = tenant.catalog
        new = [i for i, k in enumerate(key_list) if k not in catalog]
        if batch.metadata_count:
            types = _subset(batch, np.empty(0, dtype=np.intp)).columns().metric_types
            tenant.kinds.update(types)
        if not new:
            return
        cols = _subset(batch, np.asarray(new, dtype=np.intp)).columns()
        intern = self._interned
        for i, labels in zip(new, cols.label_sets, strict=True):
            pairs = []
            for pair in sorted(labels):
                pairs.append(intern.setdefault(pair, pair))
            catalog[key_list[i]] = tuple(pairs)

    def _route(self, tenant: _Tenant, key: int, now_ms: int) -> Route:
        labels = tenant.catalog[key]
        name = dict(labels).get(METRIC_NAME_LABEL, "")
        route = tenant.plan.route(labels, kind_of(name, tenant.kinds), now_ms)
        tenant.routes[key] = route
        return route

    def _target(self, tenant: str, spec: MergeSpec, now_ms: int) -> _Target:
        key = (tenant, spec.fingerprint)
        target = self._targets.get(key)
        if target is None:
            interval = int(spec.flush_interval.total_seconds() * 1000)
            target = _Target(spec, CumulativeMerger(config=self._merge_config),
                             GaugeMerger(function=spec.gauge_function,
                                         config=self._merge_config),
                             interval, now_ms + interval)
            self._targets[key] = target
        return target

    def _merge(self, tenant: _Tenant, batch: MetricBatch, merging: npt.NDArray[np.intp],
               found: list[Route | None], key_list: list[int], tally: PointTally) -> None:
        cols = _subset(batch, merging).columns()
        now_ms = self._clock()
        targets: list[tuple[Callable[..., bool] | None, Route, int]] = []
        for i in merging.tolist():
            route = found[i]
            assert route is not None
            if route.target is None:  # WATCH: passes, only read for its rank
                targets.append((None, route, key_list[i]))
                continue
            target = self._target(tenant.name, route.target, now_ms)
            merger = target.cumulative if route.cumulative else target.gauge
            targets.append((merger.observe, route, key_list[i]))
        refused = merged = overflowed = 0
        last = tenant.window.last_values
        watched = tenant.watched
        plan = tenant.plan
        series_index = cols.series_index.tolist()
        for s, ts, value in zip(series_index, cols.timestamps.tolist(),
                                cols.values.tolist(), strict=True):
            observe, route, key = targets[s]
            if route.topk is not None:
                plan.weigh(route, key, value)
                if observe is None:
                    previous = tenant.handover.pop(key, None) if tenant.handover else None
                    if previous is not None and previous.target is not None:
                        old = self._target(tenant.name, previous.target, now_ms)
                        (old.cumulative if previous.cumulative else old.gauge).observe(
                            previous.group, key, ts, value)
                    watched[key] = (ts, value)
                    last[key] = value
                    continue
            assert observe is not None
            if observe(route.group, key, ts, value):
                if route.overflow:
                    overflowed += 1
                else:
                    merged += 1
            elif not (route.cumulative and math.isnan(value)):
                refused += 1
            last[key] = value
        tally.merged += merged
        tally.overflowed += overflowed
        tally.dropped += refused

    def flush(self, *, force: bool = False) -> list[MergedOutput]:
        """Merged points due now (every target on its own interval; all with ``force``),
        plus the final points of policies that went away."""
        now_ms = self._clock()
        for state in self._tenants.values():
            if state.plan.ranks:
                self._rerank(state, now_ms)
        out, self._pending = self._pending, []
        by_tenant: dict[str, list[tuple[LabelSet, int, float]]] = {}
        for (name, _), target in self._targets.items():
            if not force and now_ms < target.next_flush_ms:
                continue
            target.next_flush_ms = now_ms + target.interval_ms
            points = target.flush(now_ms)
            if points:
                by_tenant.setdefault(name, []).extend(points)
        for name, points in by_tenant.items():
            out.append(MergedOutput(name, points))
            found = self._tenants.get(name)
            if found is not None:
                found.window.tally.emitted += len(points)
        return out

    def _rerank(self, tenant: _Tenant, now_ms: int) -> None:
        """End due top-K ranking windows and re-route the series that moved. A demoted
        series is handed to ``other`` from its last value: only later increases count."""
        moved = tenant.plan.rerank(now_ms)
        if not moved:
            return
        for key, route in list(tenant.routes.items()):
            if route.topk not in moved:
                continue
            new = self._route(tenant, key, now_ms)
            last = tenant.watched.pop(key, None)
            if (route.code is Code.WATCH and new.code is Code.MERGE and new.cumulative
                    and new.target is not None and last is not None):
                target = self._target(tenant.name, new.target, now_ms)
                target.cumulative.seed(new.group, key, last[0], last[1])
            elif route.code is Code.MERGE and new.code is Code.WATCH:
                # Promoted: its next point still goes to `other` too, so the increase up to
                # it is counted there; its own series starts from that point.
                tenant.handover[key] = route

    def record_latency(self, tenant: str, seconds: float) -> None:
        """One batch's receive → durably queued latency, for the window report."""
        state = self._tenants.get(tenant)
        if state is not None and len(state.window.latencies) < 100_000:
            state.window.latencies.append(seconds)

    # -- windows ---------------------------------------------------------------------------

    def close_window(self, *, replica_count: int = 1) -> list[TenantSnapshot]:
        """Every tenant's window since the last call; starts the next ones."""
        now_ms = self._clock()
        out: list[TenantSnapshot] = []
        for tenant in self._tenants.values():
            snapshot = self._snapshot(tenant, now_ms, replica_count)
            tenant.last = snapshot
            out.append(snapshot)
        return out

    def last_window(self, tenant: str) -> TenantSnapshot | None:
        state = self._tenants.get(tenant)
        return None if state is None else state.last

    def tenants(self) -> list[str]:
        return sorted(self._tenants)

    def _snapshot(self, tenant: _Tenant, now_ms: int, replica_count: int) -> TenantSnapshot:
        window = tenant.window
        distinct, points = window.compact()
        tenant.window = _Window(now_ms)
        per_metric: dict[str, list[SeriesSeen]] = {}
        metric_counts: dict[str, PointTally] = {}
        policy_tallies: dict[tuple[str, str], PolicyTally] = {}
        outputs: dict[str, dict[str, set[int]]] = {}
        out_points: dict[str, dict[str, int]] = {}
        routes_merged: dict[str, dict[str, set[int]]] = {}
        plan = tenant.plan
        catalog = tenant.catalog
        for key, n in zip(distinct.tolist(), points.tolist(), strict=True):
            labels = catalog.get(key)
            if labels is None:
                continue
            name = dict(labels).get(METRIC_NAME_LABEL, "")
            route = tenant.routes.get(key)
            if plan.empty:
                route = Route(Code.PASS, name)
            elif route is None:
                route = tenant.routes[key] = plan.route(
                    labels, kind_of(name, tenant.kinds), now_ms)
            else:
                plan.touch(route, now_ms)
            per_metric.setdefault(name, []).append(SeriesSeen(
                key, labels, n, window.last_values.get(key, math.nan), route.priority))
            counts = metric_counts.setdefault(name, PointTally())
            counts.received += n
            counts.accepted += n
            if route.code is Code.DROP:
                counts.dropped += n
            elif route.code is Code.MERGE:
                groups = routes_merged.setdefault(name, {}).setdefault(tenant.profile, set())
                groups.add(route.group_key)
                if route.overflow:
                    counts.overflowed += n
                else:
                    counts.merged += n
            for policy_id, dry_run, changes in route.tallies:
                t = policy_tallies.setdefault((name, policy_id), PolicyTally(policy_id, dry_run))
                t.matched_points += n
                t.matched_series += 1
                if changes:
                    t.changed_points += n
            active_out = outputs.setdefault(name, {}).setdefault(tenant.profile, set())
            points_out = out_points.setdefault(name, {})
            if route.code is Code.MERGE:
                active_out.add(route.group_key)
            elif route.code is not Code.DROP:
                active_out.add(key)
                points_out[tenant.profile] = points_out.get(tenant.profile, 0) + n
            for profile, (shadow, cache) in tenant.shadows.items():
                code = cache.get(key)
                if code is None:
                    r = shadow.route(labels, kind_of(name, tenant.kinds), now_ms)
                    code = (r.group_key if r.code is Code.MERGE else
                            _DROPPED if r.code is Code.DROP else _SAME)
                    cache[key] = code
                shadow_out = outputs[name].setdefault(profile, set())
                if code == _SAME:
                    shadow_out.add(key)
                    points_out[profile] = points_out.get(profile, 0) + n
                elif code != _DROPPED:
                    shadow_out.add(code)
                    groups = routes_merged.setdefault(name, {}).setdefault(profile, set())
                    groups.add(code)
        if not plan.empty and plan.expire_caps(now_ms):
            tenant.routes.clear()
        self._forget(tenant, distinct)
        metrics = []
        for name, series in sorted(per_metric.items()):
            kind = kind_of(name, tenant.kinds)
            metrics.append(MetricSnapshot(
                name=name, kind=kind if kind is not MetricKind.ANY else MetricKind.UNKNOWN,
                series=tuple(series),
                outputs={p: np.fromiter(keys, dtype=np.uint64, count=len(keys))
                         for p, keys in outputs.get(name, {}).items()},
                counts=metric_counts[name],
                output_points=self._output_points(
                    out_points.get(name, {}), outputs.get(name, {}), routes_merged.get(name, {}),
                    now_ms - window.start_ms),
                policies=tuple(t for (m, _), t in sorted(policy_tallies.items()) if m == name)))
        return TenantSnapshot(
            tenant=tenant.name, replica_id=self.replica_id, start_ms=window.start_ms,
            end_ms=now_ms, active_profile=tenant.profile, replica_count=replica_count,
            metrics=tuple(metrics), counts=window.tally,
            batch_latency_seconds=np.asarray(window.latencies, dtype=np.float64))

    @staticmethod
    def _output_points(passed: dict[str, int], outputs: dict[str, set[int]],
                       merged_groups: dict[str, set[int]], window_ms: int) -> dict[str, int]:
        """Points each profile exports in the window: the points of series it passes, plus
        one point per merged group per (default 15 s) flush (at least one)."""
        flushes = max(1, window_ms // 15_000)
        return {profile: passed.get(profile, 0) + flushes * len(merged_groups.get(profile, ()))
                for profile in outputs}

    def _forget(self, tenant: _Tenant, seen: npt.NDArray[np.uint64]) -> None:
        """Keep the catalog and caches to the series of the last windows (bounded memory:
        a series silent for ``_RECENT_WINDOWS`` windows is decoded again when it returns)."""
        tenant.recent = [*tenant.recent[-(_RECENT_WINDOWS - 1):], seen]
        if len(tenant.catalog) <= sum(len(k) for k in tenant.recent):
            return
        keep = np.unique(np.concatenate(tenant.recent))
        known = np.fromiter(tenant.catalog, dtype=np.uint64, count=len(tenant.catalog))
        stale = known[~np.isin(known, keep)].tolist()
        for k in stale:
            del tenant.catalog[k]
            tenant.routes.pop(k, None)
            for _, cache in tenant.shadows.values():
                cache.pop(k, None)
