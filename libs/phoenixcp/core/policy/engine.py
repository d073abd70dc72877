"""The policy stage of one pipeline replica: routes every batch through its tenant's plan.

Per batch the engine works on arrays and cached decisions, never per point, unless a policy
must change points:

* each series key is looked up in the tenant's route cache; a series seen for the first time
  is decoded (only that series: :meth:`MetricBatch.subset`) and routed once by the
  :class:`~phoenixcp.core.policy.plan.Plan`;
* series that pass go out as the request's own bytes (the whole batch when nothing changes);
* dropped series are counted; merged series are decoded and their points fed to the mergers
  of :mod:`phoenixcp.core.aggregation`, which :meth:`PolicyEngine.flush` empties on each
  target's flush interval (targets and the per-route merger cache: :mod:`.merge_targets`).

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
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, cast

import numpy as np
import numpy.typing as npt

from phoenixcp.core.aggregation import CumulativeMerger, GaugeMerger, MergeConfig
from phoenixcp.core.batch import LabelSet, MetricBatch, MetricType
from phoenixcp.core.policy.index import SeriesIndex, split_codes
from phoenixcp.core.policy.memo import SeriesMemo
from phoenixcp.core.policy.merge_targets import _Resolved, _Target
from phoenixcp.core.policy.model import MetricKind, PolicySpec, ProfileSpec
from phoenixcp.core.policy.plan import DEFAULT_FLUSH, Code, MergeSpec, Plan, Route, kind_of
from phoenixcp.core.policy.routes import RouteTable
from phoenixcp.core.policy.snapshot import SnapshotBuilder
from phoenixcp.core.policy.window import PointTally, TenantSnapshot
from phoenixcp.core.series import METRIC_NAME_LABEL

__all__ = ["MergedOutput", "Outcome", "PolicyEngine", "PolicySource"]

log = logging.getLogger(__name__)

_KEEP_WINDOWS = 6
"""Series silent this many windows are forgotten (decoded again if they come back)."""


class PolicySource(Protocol):
    """What the engine needs of the policy state (the watcher's view implements it)."""

    @property
    def profiles(self) -> Mapping[str, ProfileSpec]: ...

    def profile_for(self, tenant: str) -> ProfileSpec: ...

    def policies_for(self, tenant: str, now: datetime) -> tuple[PolicySpec, ...]: ...

    @property
    def rejections(self) -> Sequence[tuple[str, str, tuple[tuple[str, str], ...]]]:
        """Stored policies or profiles refused as invalid: ``(tenant or "", name,
        ((field, message), ...))``; reported in each tenant's window."""
        ...


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
class _Window:
    start_ms: int
    number: int = 0
    tally: PointTally = field(default_factory=PointTally)
    latencies: list[float] = field(default_factory=list)


@dataclass(slots=True)
class _Tenant:
    name: str
    plan: Plan
    profile: str
    window: _Window
    index: SeriesIndex = field(default_factory=SeriesIndex)
    table: RouteTable = field(default_factory=RouteTable)
    memo: SeriesMemo = field(default_factory=SeriesMemo)
    """What window closes keep of the series, by index slot (memo.py)."""
    resolved: _Resolved = field(default_factory=_Resolved)
    kinds: dict[str, MetricType] = field(default_factory=dict)
    shadows: dict[str, Plan] = field(default_factory=dict)
    """Every other profile's plan, routed for shadow accounting only (never exported)."""
    last: TenantSnapshot | None = None
    watched: dict[int, tuple[int, float]] = field(default_factory=dict)
    """Last (timestamp, value) of series a top-K keeps, to hand over if it is demoted."""
    handover: dict[int, Route] = field(default_factory=dict)
    """Series just promoted by a top-K, with the ``other`` route their next point also feeds."""
    moved: dict[int, Route] = field(default_factory=dict)
    """Series a cap pushed into overflow, with the route they had: their next point still
    goes that way, and starts their input state in overflow without adding to it."""
    kind_cache: dict[str, MetricKind] = field(default_factory=dict)
    last_metadata: bytes = b""

    def kind(self, name: str) -> MetricKind:
        found = self.kind_cache.get(name)
        if found is None:
            found = self.kind_cache[name] = kind_of(name, self.kinds)
        return found


def _spans_of(batch: MetricBatch) -> npt.NDArray[np.uint32]:
    """The batch's ``series_spans`` (C-contiguous uint32 rows: start, end, points,
    histograms); for a batch built by hand without them, rows with only the points."""
    spans = batch.series_spans
    if len(spans) == batch.series_count:
        return np.ascontiguousarray(spans, dtype=np.uint32)
    made = np.zeros((batch.series_count, 4), dtype=np.uint32)
    made[:, 2] = np.bincount(batch.columns().series_index, minlength=batch.series_count)
    return made


_MERGE = int(Code.MERGE)  # a plain int: an IntEnum member costs Python calls in numpy compares


class PolicyEngine:
    """Applies each tenant's active profile and own policies; see the module docstring.

    ``clock_ms`` is the wall clock in unix milliseconds (merged points are stamped with it);
    tests pass their own.
    """

    def __init__(self, *, replica_id: str, clock_ms: Callable[[], int] | None = None,
                 merge_config: MergeConfig | None = None,
                 default_flush: timedelta = DEFAULT_FLUSH,
                 shadow_budget: int = 5_000) -> None:
        self.replica_id = replica_id
        self._default_flush = default_flush
        self._shadow_budget = shadow_budget
        self._clock = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._merge_config = merge_config or MergeConfig()
        self._source: PolicySource | None = None
        self._tenants: dict[str, _Tenant] = {}
        self._targets: dict[tuple[str, Hashable], _Target] = {}
        self._by_spec: dict[MergeSpec, tuple[str, _Target]] = {}
        self._pending: list[MergedOutput] = []
        self._epoch = 0
        """Bumped whenever a merger may have freed group ids or routes were renumbered."""
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
                tenant.index.clear_routes()
                tenant.table.clear()
                self._epoch += 1
                self.plan_changes += 1
            tenant.profile = profile
            log.info("policies applied", extra={"fields": {
                "tenant": tenant.name, "profile": profile, "policies": len(policies)}})
        tenant.shadows = self._shadow_plans(tenant, profile, tenant.shadows)

    def _shadow_plans(self, tenant: _Tenant, active: str,
                      old: dict[str, Plan]) -> dict[str, Plan]:
        """Plans of the other profiles; one whose policies did not change keeps its state
        (and its routed series, in the index column named after it)."""
        if self._source is None:
            return {}
        own = [p for p in self._policies(tenant.name)[1]
               if p not in self._source.profile_for(tenant.name).policies]
        out: dict[str, Plan] = {}
        for name, profile in self._source.profiles.items():
            if name == active:
                continue
            plan = self._plan(tuple(profile.policies) + tuple(own))
            previous = old.get(name)
            out[name] = previous if (previous is not None
                                     and previous.signature == plan.signature) else plan
        tenant.index.drop_columns({n for n, p in out.items() if old.get(n) is p})
        return out

    def _tenant(self, name: str, now_ms: int) -> _Tenant:
        tenant = self._tenants.get(name)
        if tenant is None:
            tenant = _Tenant(name, self._plan(()), "full", _Window(now_ms))
            self._tenants[name] = tenant
            self._replan(tenant, now_ms)
        return tenant

    def _close_unused_targets(self, now_ms: int) -> None:
        self._epoch += 1
        live = {(t.name, fp) for t in self._tenants.values() for fp in t.plan.targets}
        self._by_spec.clear()
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
        tally = PointTally(received=batch.sample_count, accepted=batch.sample_count)
        spans = _spans_of(batch)
        slots = self._learn(tenant, batch)
        index = tenant.index
        ids = np.empty(len(slots), dtype=np.int32)
        # One C loop each (index.py): the window's points per series and the route ids, then
        # which series pass, merge or drop; numpy calls cost more than the work per batch.
        unrouted = index.count(slots, spans, ids)
        tenant.window.tally.add(tally)
        if tenant.plan.empty:
            return Outcome(batch, tally)
        if unrouted:
            todo = np.flatnonzero(ids < 0)
            routed = self._route_all(tenant, slots[todo], now_ms)
            index.route[slots[todo]] = routed
            ids[todo] = routed
            self._take_evicted(tenant)
        passing = np.empty(len(ids), dtype=np.int64)
        merging = np.empty(len(ids), dtype=np.int64)
        n_pass, n_merge, dropped, changed = split_codes(
            ids, spans, tenant.table.code_array, passing, merging)
        if not changed:
            return Outcome(batch, tally)
        passing, merging = passing[:n_pass], merging[:n_merge]
        if tenant.moved:
            passing, merging = self._hand_over(tenant, batch, ids, now_ms, passing, merging,
                                               tally)
        tally.dropped += dropped
        tenant.window.tally.dropped += dropped
        if len(merging):
            before = (tally.merged, tally.overflowed, tally.dropped)
            self._merge(tenant, batch, merging, ids, slots, tally)
            tenant.window.tally.merged += tally.merged - before[0]
            tenant.window.tally.overflowed += tally.overflowed - before[1]
            tenant.window.tally.dropped += tally.dropped - before[2]
        passthrough = None
        if len(passing):
            passthrough = batch if len(passing) == len(ids) else batch.subset(passing)
        return Outcome(passthrough, tally)

    def _take_evicted(self, tenant: _Tenant) -> None:
        """Re-route the series that caps pushed into overflow to make room for a better
        class, remembering the route each had (see :meth:`_hand_over`)."""
        evicted = tenant.plan.take_evicted()
        if not evicted:
            return
        index, routes = tenant.index, tenant.table.routes
        wanted = np.fromiter(evicted, dtype=np.uint64, count=len(evicted))
        found = index.find(wanted)  # series that count under a cap as themselves
        hit = found[found >= 0]
        # ... and inputs of merged or whole-histogram identities a cap counts.
        via = [i for i, r in enumerate(routes)
               if any(identity in evicted for _, _, identity in r.caps)]
        if via:
            hit = np.union1d(hit, np.flatnonzero(np.isin(index.route, via)))
        for slot in hit.tolist():
            route_id = int(index.route[slot])
            if route_id >= 0:
                tenant.moved[int(index.keys[slot])] = routes[route_id]
            index.route[slot] = -1

    def _hand_over(self, tenant: _Tenant, batch: MetricBatch,
                   ids: npt.NDArray[np.int32], now_ms: int, passing: npt.NDArray[np.int64],
                   merging: npt.NDArray[np.int64], tally: PointTally
                   ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The first point of a series a cap moved into overflow goes where the series went
        before (its own output series, or its old merge group) and only starts its input
        state in overflow, so no total counts it twice. Returns ``passing`` and ``merging``
        (which series of the batch pass, and which the mergers still take) updated."""
        keys = batch.series_keys
        moved = np.fromiter(tenant.moved, dtype=np.uint64, count=len(tenant.moved))
        # Merging series under MERGE (not WATCH); split_codes already let native histograms pass.
        here = merging[tenant.table.codes(ids[merging]) == _MERGE]
        here = here[np.isin(keys[here], moved)]
        if not len(here):
            return passing, merging
        passes = np.zeros(len(ids), dtype=bool)
        passes[passing] = True
        merges = np.zeros(len(ids), dtype=bool)
        merges[merging] = True
        series_index, timestamps, values = batch.samples(here)
        routes = tenant.table.routes
        key_list = keys[here].tolist()
        for s, ts, value in zip(series_index.tolist(), timestamps.tolist(), values.tolist(),
                                strict=True):
            key = key_list[s]
            old, new = tenant.moved[key], routes[ids[here[s]]]
            if old.target is not None and old.code is Code.MERGE:
                target = self._target(tenant.name, old.target, now_ms)
                (target.cumulative if old.cumulative else target.gauge).observe(
                    old.group, key, ts, value)
            assert new.target is not None
            target = self._target(tenant.name, new.target, now_ms)
            if new.cumulative:
                target.cumulative.seed(new.group, key, ts, value)
            else:
                target.gauge.observe(new.group, key, ts, value)
        merged = 0
        for s, (i, key) in enumerate(zip(here.tolist(), key_list, strict=True)):
            old = tenant.moved.pop(key)
            merges[i] = False
            if old.code is Code.MERGE:
                merged += int(np.count_nonzero(series_index == s))
            else:
                passes[i] = True
        tally.merged += merged
        tenant.window.tally.merged += merged
        return (np.flatnonzero(passes).astype(np.int64, copy=False),
                np.flatnonzero(merges).astype(np.int64, copy=False))

    def _learn(self, tenant: _Tenant, batch: MetricBatch) -> npt.NDArray[np.int64]:
        """The index slots of the batch's series; decodes the labels of those never seen
        (only those) and the batch's metadata types."""
        if batch.metadata_count and batch.other_fields != tenant.last_metadata:
            # Senders repeat the same metadata request after request: parse it once.
            tenant.last_metadata = batch.other_fields
            types = batch.subset(np.empty(0, dtype=np.intp)).columns().metric_types
            if any(tenant.kinds.get(n) != t for n, t in types.items()):
                tenant.kinds.update(types)
                tenant.kind_cache.clear()
        index = tenant.index
        slots, missing = index.find_counted(batch.series_keys)
        if missing:
            new = np.flatnonzero(slots < 0)
            slots[new] = index.add(batch.series_keys[new], batch.label_sets(new))
        return slots

    def _route_all(self, tenant: _Tenant, slots: npt.NDArray[np.int64], now_ms: int
                   ) -> npt.NDArray[np.int32]:
        """Route ids of the series at index ``slots``, routed afresh."""
        route, table_id = tenant.plan.route, tenant.table.id
        kinds, kind = tenant.kind_cache, tenant.kind
        out = []
        for key, labels in zip(tenant.index.keys[slots].tolist(),
                               self._labels_of(tenant, slots), strict=True):
            name = labels[0][1] if labels and labels[0][0] == METRIC_NAME_LABEL else ""
            out.append(table_id(route(labels, kinds.get(name) or kind(name), now_ms, key)))
        return np.asarray(out, dtype=np.int32)

    def _route(self, tenant: _Tenant, slot: int, now_ms: int) -> Route:
        """The route of the series at index ``slot``, routed afresh."""
        key = int(tenant.index.keys[slot])
        labels = self._labels_of(tenant, np.asarray([slot]))[0]
        name = labels[0][1] if labels and labels[0][0] == METRIC_NAME_LABEL else ""
        return tenant.plan.route(labels, tenant.kind(name), now_ms, key)

    @staticmethod
    def _labels_of(tenant: _Tenant, slots: npt.NDArray[np.int64]) -> list[LabelSet]:
        """The labels of the series at index ``slots``: the index holds a series' labels
        until a window's memo has learned them (see :meth:`_take`), the memo after."""
        index = tenant.index
        found: list[LabelSet | None] = index.labels[slots].tolist()
        gone = [i for i, labels in enumerate(found) if labels is None]
        if gone:
            at = slots[gone]
            for i, labels in zip(gone, tenant.memo.label_sets(at, index.keys[at]),
                                 strict=True):
                found[i] = labels
        if any(labels is None for labels in found):
            raise AssertionError("a held series has its labels in neither the index nor "
                                 "the memo")
        return cast(list[LabelSet], found)

    def _target(self, tenant: str, spec: MergeSpec, now_ms: int) -> _Target:
        fast = self._by_spec.get(spec)  # by identity: no deep hash of the fingerprint
        if fast is not None and fast[0] == tenant:
            return fast[1]
        key = (tenant, spec.fingerprint)
        target = self._targets.get(key)
        if target is None:
            interval = int(spec.flush_interval.total_seconds() * 1000)
            target = _Target(spec, CumulativeMerger(config=self._merge_config),
                             GaugeMerger(function=spec.gauge_function,
                                         config=self._merge_config),
                             interval, now_ms + interval)
            self._targets[key] = target
        self._by_spec[spec] = (tenant, target)
        return target

    def _merge(self, tenant: _Tenant, batch: MetricBatch, merging: npt.NDArray[np.intp],
               ids: npt.NDArray[np.int32], slots: npt.NDArray[np.int64],
               tally: PointTally) -> None:
        """Feed the merged series' points to their targets' mergers: one ``observe_many``
        call per merger for the batch, a Python step only for a route this epoch has not
        resolved yet (:meth:`_resolve`; not per point); points of top-K ranked series take
        :meth:`_merge_ranked`."""
        series_index, timestamps, values = batch.samples(merging)
        if not len(series_index):
            return
        now_ms = self._clock()
        routes = tenant.table.routes
        route_of = ids[merging][series_index]  # per point
        res = tenant.resolved
        res.ready(self._epoch, len(routes))
        merger_of = res.merger[route_of]
        if (merger_of == -2).any():  # routes no batch of this epoch has met yet
            for route_id in np.unique(route_of[merger_of == -2]).tolist():
                self._resolve(tenant, res, route_id, routes[route_id], now_ms)
            merger_of = res.merger[route_of]
        mergers = res.mergers
        keys = batch.series_keys[merging][series_index]
        gids = res.gid[route_of]
        overflow = res.overflow[route_of]
        low, high = int(merger_of.min()), int(merger_of.max())
        if low == high >= 0:  # one merger takes every point: the common case
            accepted = mergers[low].observe_many(gids, keys, timestamps, values)
            plain = None
        else:
            accepted = np.zeros(len(route_of), dtype=bool)
            for m in np.unique(merger_of[merger_of >= 0]).tolist():
                picked = np.flatnonzero(merger_of == m)  # in order: a series' points too
                accepted[picked] = mergers[m].observe_many(gids[picked], keys[picked],
                                                           timestamps[picked], values[picked])
            plain = merger_of >= 0
        merged = int(np.count_nonzero(accepted & ~overflow))
        overflowed = int(np.count_nonzero(accepted & overflow))
        # A cumulative merger ignores staleness markers (NaN): those are not refusals.
        refused_mask = ~accepted & ~(res.cumulative[route_of] & np.isnan(values))
        sample_slots = slots[merging][series_index]
        if plain is None:
            refused = int(np.count_nonzero(refused_mask))
            tenant.index.last[sample_slots] = values
        else:
            refused = int(np.count_nonzero(plain & refused_mask))
            tenant.index.last[sample_slots[plain]] = values[plain]
            ranked = np.flatnonzero(~plain)
            more = self._merge_ranked(tenant, route_of[ranked], keys[ranked],
                                      sample_slots[ranked], timestamps[ranked],
                                      values[ranked], now_ms)
            merged, overflowed, refused = (merged + more[0], overflowed + more[1],
                                           refused + more[2])
        tally.merged += merged
        tally.overflowed += overflowed
        tally.dropped += refused

    def _resolve(self, tenant: _Tenant, res: _Resolved, route_id: int, route: Route,
                 now_ms: int) -> None:
        """Note which merger and group the points of ``route_id`` go to (-1: point by point,
        for top-K ranked routes)."""
        if route.topk is not None or route.target is None:
            res.merger[route_id] = -1
            return
        target = self._target(tenant.name, route.target, now_ms)
        merger: CumulativeMerger | GaugeMerger = (
            target.cumulative if route.cumulative else target.gauge)
        m = res.numbered.get(id(merger))
        if m is None:
            m = res.numbered[id(merger)] = len(res.mergers)
            res.mergers.append(merger)
        res.merger[route_id] = m
        res.gid[route_id] = merger.group_id(route.group)
        res.overflow[route_id] = route.overflow
        res.cumulative[route_id] = route.cumulative

    def _merge_ranked(self, tenant: _Tenant, route_ids: npt.NDArray[np.int32],
                      keys: npt.NDArray[np.uint64], slots: npt.NDArray[np.int64],
                      timestamps: npt.NDArray[np.int64],
                      values: npt.NDArray[np.float64], now_ms: int) -> tuple[int, int, int]:
        """Points of top-K ranked series, one by one: each weighs towards its series' rank,
        a kept (WATCH) series is only watched, a promoted one feeds ``other`` once more.
        Returns (merged, overflowed, refused)."""
        routes = tenant.table.routes
        refused = merged = overflowed = 0
        last = tenant.index.last
        watched = tenant.watched
        plan = tenant.plan
        for route_id, key, slot, ts, value in zip(route_ids.tolist(), keys.tolist(),
                                                  slots.tolist(), timestamps.tolist(),
                                                  values.tolist(), strict=True):
            route = routes[route_id]
            plan.weigh(route, key, value)
            if route.target is None:  # WATCH: passes, only read for its rank
                previous = tenant.handover.pop(key, None) if tenant.handover else None
                if previous is not None and previous.target is not None:
                    old = self._target(tenant.name, previous.target, now_ms)
                    (old.cumulative if previous.cumulative else old.gauge).observe(
                        previous.group, key, ts, value)
                watched[key] = (ts, value)
                last[slot] = value
                continue
            target = self._target(tenant.name, route.target, now_ms)
            merger = target.cumulative if route.cumulative else target.gauge
            if merger.observe(route.group, key, ts, value):
                if route.overflow:
                    overflowed += 1
                else:
                    merged += 1
            elif not (route.cumulative and math.isnan(value)):
                refused += 1
            last[slot] = value
        return merged, overflowed, refused

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
            self._epoch += 1
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
        index, table = tenant.index, tenant.table
        stale: list[int] = []
        plain: list[int] = []
        for route_id, r in enumerate(table.routes):
            if r.topk is None:
                continue
            if r.topk[2] is None:
                plain.append(route_id)
            elif r.topk in moved:
                stale.append(route_id)
        moved_keys = np.fromiter((i for _, _, i in moved if isinstance(i, int)),
                                 dtype=np.uint64)
        hit = np.isin(index.route, stale) | (np.isin(index.route, plain)
                                             & np.isin(index.keys, moved_keys))
        for pos in np.flatnonzero(hit).tolist():
            route = table.routes[index.route[pos]]
            key = int(index.keys[pos])
            new = self._route(tenant, pos, now_ms)
            index.route[pos] = table.id(new)
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
        return [job() for job in self.window_jobs(replica_count=replica_count)]

    def window_jobs(self, *, replica_count: int = 1) -> list[Callable[[], TenantSnapshot]]:
        """Close every tenant's window now (its series and counts are taken and the next
        window starts: cheap) and return the jobs that build the snapshots (the costly part).
        A job reads only what the window took and state that batches do not change in place,
        so it may run on another thread while the event loop keeps taking batches; jobs run
        one at a time, in order."""
        now_ms = self._clock()
        return [self._take(tenant, now_ms, replica_count) for tenant in self._tenants.values()]

    def last_window(self, tenant: str) -> TenantSnapshot | None:
        state = self._tenants.get(tenant)
        return None if state is None else state.last

    def tenants(self) -> list[str]:
        return sorted(self._tenants)

    def series_held(self) -> dict[str, int]:
        """Per tenant, the series this engine keeps state for (seen in the last windows):
        what its memory grows with."""
        return {name: len(tenant.index) for name, tenant in self._tenants.items()}

    def _take(self, tenant: _Tenant, now_ms: int, replica_count: int
              ) -> Callable[[], TenantSnapshot]:
        window = tenant.window
        tenant.window = _Window(now_ms, window.number + 1)
        index = tenant.index
        pos = index.window()
        keys, points, ids = index.keys[pos], index.points[pos], index.route[pos]
        last = index.last[pos]
        merged = np.flatnonzero(~np.isnan(last))  # the last values read: merged series'
        last_values = dict(zip(keys[merged].tolist(), last[merged].tolist(), strict=True))
        plan, table = tenant.plan, tenant.table
        if not plan.empty:
            for i in np.flatnonzero(ids < 0).tolist():  # seen, but not since a plan change
                ids[i] = index.route[pos[i]] = table.id(self._route(tenant, pos[i], now_ms))
            self._take_evicted(tenant)
            self._touch(tenant, keys, ids, now_ms)
            ids = np.maximum(ids, 0)
        routes = table.routes if not plan.empty else []
        # A shadow column written by the job after a batch grew the index is lost: those
        # series are routed again next window (within the shadow budget).
        shadows = {name: (shadow, index.column(name)) for name, shadow in tenant.shadows.items()}
        # The labels of the window's series, taken now: a batch may reuse a forgotten
        # series' slot while the job runs. The index lets go of those the memo holds (it
        # makes them again when asked): one copy of each series' labels, as pair ids.
        labels = index.labels[pos]
        index.labels[pos[tenant.memo.holds(pos, keys)]] = None
        index.end_window(window.number, _KEEP_WINDOWS)
        if not plan.empty and plan.expire_caps(now_ms):
            index.clear_routes()
        if len(table) > 2 * len(index) + 1024:
            index.route = table.compact(index.route)[index.route]  # a new list: `routes` stays
            self._epoch += 1
        builder = SnapshotBuilder(active=tenant.profile, shadows=shadows, positions=pos,
                                  memo=tenant.memo, kind=tenant.kind,
                                  last_value=last_values.get, now_ms=now_ms,
                                  shadow_budget=self._shadow_budget)
        rejected = self._rejections(tenant.name)

        def build() -> TenantSnapshot:
            metrics = builder.build(keys, points, ids, routes, labels,
                                    now_ms - window.start_ms)
            snapshot = TenantSnapshot(
                tenant=tenant.name, replica_id=self.replica_id, start_ms=window.start_ms,
                end_ms=now_ms, active_profile=tenant.profile, replica_count=replica_count,
                metrics=metrics, counts=window.tally,
                batch_latency_seconds=np.asarray(window.latencies, dtype=np.float64),
                rejected_policies=rejected)
            tenant.last = snapshot
            return snapshot

        return build

    @staticmethod
    def _touch(tenant: _Tenant, keys: npt.NDArray[np.uint64], ids: npt.NDArray[np.int32],
               now_ms: int) -> None:
        """Keep the cap places of the window's series, a call per route."""
        routes = tenant.table.routes
        with_caps = np.fromiter((bool(r.caps) for r in routes), dtype=bool, count=len(routes))
        picked = np.flatnonzero((ids >= 0) & with_caps[np.maximum(ids, 0)])
        if not len(picked):
            return
        order = picked[np.argsort(ids[picked], kind="stable")]
        route_ids, starts = np.unique(ids[order], return_index=True)
        for route_id, chunk in zip(route_ids.tolist(), np.split(keys[order], starts[1:]),
                                   strict=True):
            tenant.plan.touch(routes[route_id], chunk.tolist(), now_ms)

    def _rejections(self, tenant: str) -> tuple[tuple[str, str, tuple[tuple[str, str], ...]],
                                                ...]:
        found = self._source.rejections if self._source is not None else ()
        return tuple((t, name, tuple(v)) for t, name, v in found if t in ("", tenant))
