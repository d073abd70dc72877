"""A tenant's policies compiled into a router: which output series each input series feeds.

:class:`Plan` decides once per series (the engine caches the :class:`Route` by series key)
what happens to it: pass through unchanged, dropped, or merged into an output group by one of
the plan's merge targets. Action kinds run in a fixed order, so later ones see the output of
earlier ones: classify → drop → roll-up → aggregate → top-K → cap ("caps count merged
series"). CRITICAL series are never changed. Dry-run policies are evaluated the same way and
tallied, but never change the route.

Pure and single-threaded: a plan's caps are state (first come, first served; sticky), so one
owner calls it.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from phoenixcp.core.aggregation import (
    OVERFLOW_LABEL,
    REPLICA_LABEL,
    CapConfig,
    GaugeFunction,
    LabelReduction,
    SeriesCap,
)
from phoenixcp.core.batch import LabelSet, MetricType
from phoenixcp.core.policy.model import (
    Aggregate,
    Cap,
    CapScope,
    Classify,
    Drop,
    LabelMatcher,
    MetricKind,
    PolicySpec,
    PriorityClass,
    PriorityRollup,
    TopK,
)
from phoenixcp.core.policy.topk import TopKSet
from phoenixcp.core.series import METRIC_NAME_LABEL, series_key

__all__ = ["Code", "MergeSpec", "Plan", "Route", "kind_of", "merges_cumulatively"]

_CUMULATIVE_SUFFIXES = ("_total", "_bucket", "_count", "_sum")
_FAMILY_SUFFIXES = ("_bucket", "_count", "_sum", "_total")
_KEEP_UNDER_OVERFLOW = ("le", "quantile")
DEFAULT_FLUSH = timedelta(seconds=15)
OVERFLOW_TARGET = ("overflow",)
"""The merge target every cap's overflow series share (see :class:`MergeSpec`)."""


class Code(enum.IntEnum):
    """What happens to a series' points."""

    PASS = 0
    """Exported unchanged; no policy matched."""
    OBSERVE = 1
    """Exported unchanged; some policy matched (tallied: dry-run, or a cap that admitted it)."""
    DROP = 2
    """Dropped by an enforced drop policy (counted)."""
    MERGE = 3
    """Folded into ``Route.group`` by merge target ``Route.target``."""
    WATCH = 4
    """Exported unchanged, but its values are read: a top-K policy ranks it."""


@dataclass(frozen=True, slots=True, eq=False)
class MergeSpec:
    """One merge target of a plan: the policy that owns it and how it combines values.

    Compared by identity (a plan makes one per policy), so routes that carry it hash fast;
    the engine finds a target's state by ``fingerprint``, which survives plan changes."""

    fingerprint: Hashable
    policy_id: str
    gauge_function: GaugeFunction
    flush_interval: timedelta


@dataclass(frozen=True, slots=True)
class Route:
    """The decision for one input series (cached by the engine per series key)."""

    code: Code
    metric: str
    priority: PriorityClass = PriorityClass.MEDIUM
    group: LabelSet = ()
    group_key: int = 0
    target: MergeSpec | None = None
    cumulative: bool = False
    overflow: bool = False
    tallies: tuple[tuple[str, bool, bool], ...] = ()
    """``(policy id, dry_run, changes this series)`` of every policy that matched."""
    caps: tuple[tuple[int, Hashable, int | None], ...] = ()
    """``(cap index, scope, identity)`` of every cap the series counts under; identity None
    means the series' own key (the series reaches the cap unchanged), so such routes are
    shared by all series of a metric."""
    topk: tuple[int, Hashable, Hashable] | None = None
    """``(top-K index, scope, identity)`` when a top-K policy ranks the series; identity
    None: the series' own key, as for caps."""


def _family(name: str) -> str:
    for suffix in _FAMILY_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


_TYPE_TO_KIND = {
    MetricType.COUNTER: MetricKind.COUNTER,
    MetricType.GAUGE: MetricKind.GAUGE,
    MetricType.HISTOGRAM: MetricKind.HISTOGRAM,
    MetricType.GAUGEHISTOGRAM: MetricKind.HISTOGRAM,
    MetricType.SUMMARY: MetricKind.SUMMARY,
}


def kind_of(name: str, types: Mapping[str, MetricType]) -> MetricKind:
    """The metric kind from remote-write metadata (by metric or family name), else UNKNOWN."""
    found = types.get(name)
    if found is None:
        found = types.get(_family(name))
    return MetricKind.UNKNOWN if found is None else _TYPE_TO_KIND.get(found, MetricKind.UNKNOWN)


def merges_cumulatively(name: str, kind: MetricKind, labels: Mapping[str, str]) -> bool:
    """Whether merged values of this series are summed as a cumulative counter.

    Counters, histogram series and a summary's ``_sum``/``_count`` are. Without metadata
    (Prometheus sends it apart from samples) the Prometheus naming conventions decide:
    ``_total``, ``_bucket``, ``_count`` and ``_sum`` are cumulative; everything else,
    summary quantiles included, merges as a gauge (ADR 0007).
    """
    if kind in (MetricKind.COUNTER, MetricKind.HISTOGRAM):
        return True
    if kind is MetricKind.SUMMARY:
        return "quantile" not in labels
    if kind is MetricKind.GAUGE:
        return False
    return name.endswith(_CUMULATIVE_SUFFIXES) and "quantile" not in labels


def _identity(labels: Mapping[str, str], *, whole: bool = False) -> int:
    """What a cap or top-K counts: the output series (``whole``: without ``le`` and
    ``quantile``, so all buckets of one histogram series share one decision)."""
    return series_key((n, v) for n, v in labels.items()
                      if n != REPLICA_LABEL and not (whole and n in _KEEP_UNDER_OVERFLOW))


def _rules_for(policy: PolicySpec, name: str
               ) -> list[tuple[PriorityClass, tuple[LabelMatcher, ...]]]:
    assert isinstance(policy.action, Classify)
    out = []
    for rule in policy.action.rules:
        on_name = [m for m in rule.matchers if m.name == METRIC_NAME_LABEL]
        if all(m.matches(name) for m in on_name):
            out.append((rule.priority_class,
                        tuple(m for m in rule.matchers if m.name != METRIC_NAME_LABEL)))
    return out


def _shareable(route: Route) -> bool:
    return all(i is None for _, _, i in route.caps) and (
        route.topk is None or route.topk[2] is None)


def _with_replica(labels: Mapping[str, str], replica: str) -> LabelSet:
    out = {n: v for n, v in labels.items() if v}
    out[REPLICA_LABEL] = replica
    return tuple(sorted(out.items()))


@dataclass(slots=True)
class _CapState:
    policy: PolicySpec
    action: Cap
    cap: SeriesCap


@dataclass(slots=True)
class _TopKState:
    policy: PolicySpec
    action: TopK
    window_ms: int
    next_rank_ms: int = 0
    sets: dict[Hashable, TopKSet] = field(default_factory=dict)


@dataclass(slots=True)
class _Compiled:
    """Policies by action kind, in order; for one metric name, only those whose name and
    type conditions hold (the label conditions are checked per series)."""

    classify: list[PolicySpec] = field(default_factory=list)
    rules: list[list[tuple[PriorityClass, tuple[LabelMatcher, ...]]]] = field(
        default_factory=list)
    """Per classify policy (same order), its rules left for this name: rules whose
    ``__name__`` conditions fail are gone, those conditions removed from the others."""
    drop: list[PolicySpec] = field(default_factory=list)
    aggregate: list[tuple[PolicySpec, LabelReduction]] = field(default_factory=list)
    top_k: list[tuple[int, _TopKState]] = field(default_factory=list)
    cap: list[tuple[int, _CapState]] = field(default_factory=list)
    caps_only: bool = False
    """Only caps without label conditions apply: a plain series' route depends on nothing
    but the caps' decisions (memoised in ``memo``)."""
    memo: dict[tuple[tuple[bool, ...], tuple[str, ...]], Route] = field(default_factory=dict)
    aggregate_only: bool = False
    """Only one enforced aggregate without label conditions applies: a series' route depends
    on nothing but its reduced label set (memoised in ``reduced``)."""
    reduced: dict[LabelSet, Route] = field(default_factory=dict)
    reduce_names: frozenset[str] = frozenset()
    """The aggregate's label names kept (``reduce_by``) or removed."""
    reduce_by: bool = False

    active: bool = False
    """Some policy may apply (set once the lists are filled)."""


_CACHE_MAX = 65_536


class Plan:
    """Routes series for one tenant under one ordered set of policies.

    ``replica`` is this pipeline replica's id; every merged output series carries it as
    ``phoenix_replica`` so replicas never overwrite each other's partial results. Top-K
    sets live in the plan (see :mod:`phoenixcp.core.policy.topk`). Routing a series costs
    a few microseconds: policies are pre-filtered per metric name, and output label sets,
    their keys and the routes themselves are shared between series.
    """

    def __init__(self, policies: Sequence[PolicySpec], *, replica: str,
                 default_flush: timedelta = DEFAULT_FLUSH) -> None:
        self.policies = tuple(sorted(policies, key=PolicySpec.sort_key))
        self.replica = replica
        self.default_flush = default_flush
        self.signature = tuple(p.fingerprint for p in self.policies)
        self._tk: list[_TopKState] = []
        self._caps: list[_CapState] = []
        self._c = _Compiled()
        for p in self.policies:
            match p.action:
                case Classify():
                    self._c.classify.append(p)
                case Drop():
                    self._c.drop.append(p)
                case Aggregate() as agg:
                    self._c.aggregate.append(
                        (p, LabelReduction(by=agg.by, without=agg.without)))
                case TopK() as top_k:
                    state = _TopKState(p, top_k, int(top_k.ranking_window.total_seconds()
                                                     * 1000))
                    self._c.top_k.append((len(self._tk), state))
                    self._tk.append(state)
                case Cap() as cap:
                    cap_state = _CapState(p, cap, SeriesCap(config=CapConfig(
                        max_series=cap.max_series, idle_timeout=cap.idle_timeout)))
                    self._c.cap.append((len(self._caps), cap_state))
                    self._caps.append(cap_state)
        self._by_name: dict[int, dict[str, _Compiled]] = {}
        self._groups: dict[LabelSet, tuple[LabelSet, int]] = {}
        self._specs: dict[tuple[int, int, timedelta], MergeSpec] = {}
        self._routes: dict[Route, Route] = {}

    @property
    def targets(self) -> frozenset[Hashable]:
        """Fingerprints of the merge targets this plan may route to."""
        out: set[Hashable] = {p.fingerprint for p in self.policies}
        if self._caps:
            out.add(OVERFLOW_TARGET)
        return frozenset(out)

    @property
    def empty(self) -> bool:
        """No policy at all: every series passes and nothing needs decoding."""
        return not self.policies

    def _for_name(self, name: str, kind: MetricKind) -> _Compiled:
        # `_value_`, not `value`: the enum property costs a Python call per series.
        by_kind = self._by_name.get(kind._value_)
        if by_kind is None:
            by_kind = self._by_name[kind._value_] = {}
        found = by_kind.get(name)
        if found is None:
            def ok(p: PolicySpec) -> bool:
                sel = p.match
                return (sel.kind is MetricKind.ANY or sel.kind is kind) and sel.matches_name(name)
            c = self._c
            classify = [p for p in c.classify if ok(p)]
            found = _Compiled(
                classify=classify,
                rules=[_rules_for(p, name) for p in classify],
                drop=[p for p in c.drop if ok(p)],
                aggregate=[(p, r) for p, r in c.aggregate if ok(p)],
                top_k=[(i, t) for i, t in c.top_k if ok(t.policy)],
                cap=[(i, s) for i, s in c.cap if ok(s.policy)])
            found.active = bool(found.classify or found.drop or found.aggregate
                                or found.top_k or found.cap)
            found.aggregate_only = len(found.aggregate) == 1 and not (
                found.classify or found.drop or found.top_k or found.cap) and all(
                p.enforced and not p.match.matchers for p, _ in found.aggregate)
            if found.aggregate_only:
                reduction = found.aggregate[0][1]
                found.reduce_by = bool(reduction.by)
                found.reduce_names = reduction.keep if reduction.by else reduction.drop
            found.caps_only = bool(found.cap) and not (
                found.classify or found.drop or found.aggregate or found.top_k) and all(
                not s.policy.match.matchers for _, s in found.cap)
            if len(by_kind) >= _CACHE_MAX:
                by_kind.clear()
            by_kind[name] = found
        return found

    def _spec(self, owner: PolicySpec | None, function: GaugeFunction,
              flush: timedelta) -> MergeSpec:
        """The plan's one MergeSpec of ``owner`` (None: the shared overflow target); keyed
        by object identity, so the policy's fingerprint is hashed once per plan."""
        key = (id(owner), function.value, flush)
        found = self._specs.get(key)
        if found is None:
            found = self._specs[key] = MergeSpec(
                OVERFLOW_TARGET if owner is None else owner.fingerprint,
                "overflow" if owner is None else owner.id, function, flush)
        return found

    def _shared(self, route: Route) -> Route:
        found = self._routes.get(route)
        if found is None:
            if len(self._routes) >= _CACHE_MAX:
                self._routes.clear()
            found = self._routes[route] = route
        return found

    def _group(self, out: Mapping[str, str]) -> tuple[LabelSet, int]:
        """The output label set (with ``phoenix_replica``) and its key, shared."""
        labels = tuple(sorted((n, v) for n, v in out.items() if v))
        found = self._groups.get(labels)
        if found is None:
            group = _with_replica(out, self.replica)
            found = (group, series_key(group))
            if len(self._groups) >= _CACHE_MAX:
                self._groups.clear()
            self._groups[labels] = found
        return found

    def route(self, labels: LabelSet, kind: MetricKind, now_ms: int,
              key: int | None = None) -> Route:
        """Decide what happens to the series ``labels`` (``__name__`` included, sorted by
        name); ``key`` is its series key when the caller has it (saves hashing)."""
        name = labels[0][1] if labels and labels[0][0] == METRIC_NAME_LABEL else \
            dict(labels).get(METRIC_NAME_LABEL, "")
        c = self._for_name(name, kind)
        if not c.active:
            return self._shared(Route(Code.PASS, name))
        if c.caps_only and key is not None:
            if len(c.cap) == 1:
                s = c.cap[0][1]
                decisions: tuple[bool, ...] = (s.cap.admit(
                    name if s.action.scope is CapScope.PER_METRIC else "", key, now_ms),)
            else:
                decisions = tuple(
                    s.cap.admit(name if s.action.scope is CapScope.PER_METRIC else "", key,
                                now_ms)
                    for _, s in c.cap)
            # The overflow series keeps `le`/`quantile`: they are part of the memo key of a
            # series some cap refuses (an admitted one's route depends only on its name).
            memo_key = (decisions, () if all(decisions) else
                        tuple(v for n, v in labels if n in _KEEP_UNDER_OVERFLOW))
            found = c.memo.get(memo_key)
            if found is None:
                found = c.memo[memo_key] = self._route(labels, name, c, kind, now_ms, key)
            return found
        if c.aggregate_only:
            names = c.reduce_names
            if c.reduce_by:
                reduced = tuple(pair for pair in labels if pair[0] in names)
            else:
                reduced = tuple(pair for pair in labels if pair[0] not in names)
            if len(c.reduced) >= _CACHE_MAX:
                c.reduced.clear()
            found = c.reduced.get(reduced)
            if found is None:
                found = c.reduced[reduced] = self._route(labels, name, c, kind, now_ms, key)
            return found
        return self._route(labels, name, c, kind, now_ms, key)

    def _route(self, labels: LabelSet, name: str, c: _Compiled, kind: MetricKind,
               now_ms: int, key: int | None) -> Route:
        d = dict(labels)
        tallies: list[tuple[str, bool, bool]] = []
        caps: list[tuple[int, Hashable, int | None]] = []
        priority, rollup = self._classify(c, d, tallies)
        if priority is PriorityClass.CRITICAL:
            return self._shared(Route(Code.OBSERVE if tallies else Code.PASS, name, priority,
                                      tallies=tuple(tallies)))
        for p in c.drop:
            if p.match.matches_labels(d):
                tallies.append((p.id, not p.enforced, True))
                if p.enforced:
                    return self._shared(Route(Code.DROP, name, priority,
                                              tallies=tuple(tallies)))
        out: dict[str, str] | None = None
        target: MergeSpec | None = None
        overflow = False
        if rollup is not None:
            policy, roll = rollup
            out = {n: v for n, v in d.items() if n not in roll.without}
            out[roll.others_label] = "others"
            target = self._spec(policy, roll.gauge_function,
                               self.default_flush)
        current = d if out is None else out
        for p, reduction in c.aggregate:
            if not p.match.matches_labels(d):
                continue
            assert isinstance(p.action, Aggregate)
            reduced = dict(reduction.apply(tuple(current.items())))
            changes = reduced != {n: v for n, v in current.items() if v}
            tallies.append((p.id, not p.enforced, changes))
            if p.enforced and out is None and changes:
                out = reduced
                current = out
                target = self._spec(p, p.action.gauge_function,
                                   p.action.flush_interval)
        plain_key = key if key is not None and out is None else None
        histogram = "le" in d or "quantile" in d
        topk: tuple[int, Hashable, Hashable] | None = None
        watch = False
        cumulative = merges_cumulatively(name, kind, d)
        for index, tk in c.top_k:
            p = tk.policy
            if not p.match.matches_labels(d):
                continue
            partition = tuple((n, current.get(n, "")) for n in tk.action.partition_by)
            scope: Hashable = (name, partition)
            # Top-K ranks a histogram series as a whole, so K kept series keep every bucket.
            identity = (_identity(current, whole=True) if histogram or plain_key is None
                        else plain_key)
            members = tk.sets.get(scope)
            if members is None:
                members = tk.sets[scope] = TopKSet(tk.action, cumulative)
                if not tk.next_rank_ms:
                    tk.next_rank_ms = now_ms + tk.window_ms
            kept = members.place(identity)
            tallies.append((p.id, not p.enforced, not kept))
            if p.enforced and topk is None:
                topk = (index, scope, None if identity == plain_key else identity)
                if kept:
                    watch = True
                else:
                    kept_labels = {n: current[n] for n in _KEEP_UNDER_OVERFLOW if current.get(n)}
                    out = {METRIC_NAME_LABEL: name, **dict(partition),
                           tk.action.other_label: "other", **kept_labels}
                    current = out
                    plain_key = None
                    target = self._spec(p, tk.action.gauge_function,
                                       self.default_flush)
        for index, state in c.cap:
            p = state.policy
            if not p.match.matches_labels(d):
                continue
            scope = name if state.action.scope is CapScope.PER_METRIC else ""
            identity = plain_key if plain_key is not None else _identity(current)
            # Classes only matter where a classification applies to this metric.
            admitted = state.cap.admit(scope, identity, now_ms,
                                       int(priority) if c.classify else None)
            caps.append((index, scope, None if identity == plain_key else identity))
            tallies.append((p.id, not p.enforced, not admitted))
            if not admitted and p.enforced and not overflow:
                overflow = True
                kept_labels = {n: current[n] for n in _KEEP_UNDER_OVERFLOW if current.get(n)}
                out = {METRIC_NAME_LABEL: name, OVERFLOW_LABEL: "true", **kept_labels}
                current = out
                # One overflow series per metric, whichever cap sent a series there: all
                # caps share one merge target, so two never write the same output series.
                target = self._spec(None, state.action.gauge_function,
                                   self.default_flush)
        if out is None or target is None:
            code = Code.WATCH if watch else Code.OBSERVE if tallies else Code.PASS
            route = Route(code, name, priority, tallies=tuple(tallies), caps=tuple(caps),
                          topk=topk)
            return self._shared(route) if _shareable(route) else route
        group, group_key = self._group(out)
        route = Route(Code.MERGE, name, priority, group=group, group_key=group_key,
                      target=target, cumulative=cumulative, overflow=overflow,
                      tallies=tuple(tallies), caps=tuple(caps), topk=topk)
        return self._shared(route) if _shareable(route) else route

    def _classify(self, c: _Compiled, d: dict[str, str],
                  tallies: list[tuple[str, bool, bool]]
                  ) -> tuple[PriorityClass, tuple[PolicySpec, PriorityRollup] | None]:
        priority = PriorityClass.MEDIUM
        decided = False
        rollup: tuple[PolicySpec, PriorityRollup] | None = None
        for p, rules in zip(c.classify, c.rules, strict=True):
            if not p.match.matches_labels(d):
                continue
            assert isinstance(p.action, Classify)
            found = next((cls for cls, matchers in rules
                          if all(m.matches(d.get(m.name, "")) for m in matchers)),
                         p.action.default_class)
            roll = next((r for r in p.action.rollups if r.priority_class is found), None)
            tallies.append((p.id, not p.enforced, roll is not None))
            if p.enforced and not decided:
                decided = True
                priority = found
                rollup = None if roll is None else (p, roll)
        return priority, rollup

    def touch(self, route: Route, keys: list[int], now_ms: int) -> None:
        """Mark the series ``keys``, all routed by ``route``, as alive for its caps (once per
        window per series seen)."""
        for index, scope, identity in route.caps:
            self._caps[index].cap.touch(scope, keys if identity is None else (identity,),
                                        now_ms)

    def weigh(self, route: Route, key: int, value: float) -> None:
        """Count one point of the top-K ranked series ``key`` towards its rank."""
        if route.topk is not None:
            index, scope, identity = route.topk
            self._tk[index].sets[scope].weigh(key if identity is None else identity, key,
                                              value)

    def rerank(self, now_ms: int) -> set[tuple[int, Hashable, Hashable]]:
        """End the ranking windows that are due; returns the ``Route.topk`` of every series
        that moved (promoted or demoted), whose routes must be computed again."""
        moved: set[tuple[int, Hashable, Hashable]] = set()
        for index, tk in enumerate(self._tk):
            if not tk.next_rank_ms or now_ms < tk.next_rank_ms:
                continue
            tk.next_rank_ms = now_ms + tk.window_ms
            for scope, members in tk.sets.items():
                promoted, demoted = members.rerank()
                moved.update((index, scope, i) for i in (*promoted, *demoted))
        return moved

    @property
    def ranks(self) -> bool:
        return bool(self._tk)

    def take_evicted(self) -> set[int]:
        """Cap identities (series keys, or the keys of whole histograms or merged series)
        pushed into overflow by better-class newcomers since the last call."""
        return {identity for state in self._caps for _, identity in state.cap.take_evicted()
                if isinstance(identity, int)}

    def expire_caps(self, now_ms: int) -> int:
        """Forget cap places idle past their timeout; returns how many were freed."""
        return sum(s.cap.expire(now_ms) for s in self._caps)
