"""Turn one tenant's closed window into per-metric snapshots, active and shadow profiles.

The work is per distinct series of the window, on arrays: series are grouped by metric with
one sort, counts come from ``bincount`` over route codes, each profile's output keys from its
routes. Python touches each series once (to find its metric and label pairs) and builds
objects only for the sample (the ``sample_k`` smallest keys per metric).

Shadow routes (what every other profile would have done) are kept per series in the index
(a ``uint64`` column per profile: 8 bytes per series); at most ``shadow_budget`` new series
per profile, and at most ``shadow_seconds`` of CPU for all profiles together (50 ms, shared
equally), are
routed per window, so neither a start nor a series bomb can turn the window close into
seconds of work — the shadow figures then cover the series routed so far, the rest fill in
over the next windows, and :attr:`SnapshotBuilder.unrouted` says how many were left out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from phoenixcp.core.batch import LabelSet
from phoenixcp.core.policy.model import MetricKind, PriorityClass
from phoenixcp.core.policy.plan import Code, Plan, Route
from phoenixcp.core.policy.window import MetricSnapshot, PointTally, PolicyTally, SeriesSeen

__all__ = ["SnapshotBuilder"]

_DROPPED = np.uint64(1)
_SAME = np.uint64(0)
_UNKNOWN = np.uint64(2**64 - 1)
_FLUSH_MS = 15_000


class SnapshotBuilder:
    """Builds the :class:`MetricSnapshot` values of one tenant's window."""

    def __init__(self, *, active: str,
                 shadows: Mapping[str, tuple[Plan, npt.NDArray[np.uint64]]],
                 positions: npt.NDArray[np.intp], kind: Callable[[str], MetricKind],
                 last_values: Mapping[int, float], now_ms: int, shadow_budget: int,
                 sample_k: int = 256, shadow_seconds: float = 0.05) -> None:
        self._active = active
        self._shadows = shadows
        self._positions = positions
        self._kind = kind
        self._last = last_values
        self._now_ms = now_ms
        self._budget = shadow_budget
        self._share = shadow_seconds / max(1, len(shadows))
        self._k = sample_k
        self.unrouted = 0
        """Series left out of shadow accounting in this window (over the budget)."""

    def build(self, keys: npt.NDArray[np.uint64], points: npt.NDArray[np.int64],
              route_ids: npt.NDArray[np.int32], routes: Sequence[Route],
              catalog: Mapping[int, LabelSet], window_ms: int) -> tuple[MetricSnapshot, ...]:
        """``keys`` ascending with their window ``points`` and ``route_ids`` into ``routes``
        (every id valid)."""
        key_list = keys.tolist()
        labels = [catalog.get(k) for k in key_list]
        metric_of: dict[str, int] = {}
        mids = np.fromiter(
            (metric_of.setdefault(lb[0][1] if lb else "", len(metric_of)) for lb in labels),
            dtype=np.int64, count=len(labels))
        names = list(metric_of)
        known = np.fromiter((lb is not None for lb in labels), dtype=bool, count=len(labels))
        code = np.fromiter((r.code for r in routes), dtype=np.int8, count=len(routes))
        over = np.fromiter((r.overflow for r in routes), dtype=bool, count=len(routes))
        group = np.fromiter((r.group_key for r in routes), dtype=np.uint64, count=len(routes))
        c = code[route_ids] if len(routes) else np.zeros(len(keys), dtype=np.int8)
        merged = (c == Code.MERGE) & known
        dropped = (c == Code.DROP) & known
        n_metrics = len(names)

        def per_metric(mask: npt.NDArray[np.bool_]) -> list[int]:
            counts = np.bincount(mids[mask], weights=points[mask], minlength=n_metrics)
            return [int(x) for x in counts]

        received = per_metric(known)
        dropped_n = per_metric(dropped)
        overflow_mask = merged & over[route_ids] if len(routes) else merged
        overflowed_n = per_metric(overflow_mask)
        merged_n = per_metric(merged & ~overflow_mask)

        outputs: dict[str, npt.NDArray[np.uint64]] = {}
        passing: dict[str, npt.NDArray[np.bool_]] = {}
        active_out = np.where(merged, group[route_ids] if len(routes) else keys, keys)
        outputs[self._active] = active_out
        passing[self._active] = known & ~merged & ~dropped
        live = {self._active: known & ~dropped}
        for profile, (plan, column) in self._shadows.items():
            codes = self._shadow_codes(plan, column, key_list, labels)
            outputs[profile] = np.where(codes == _SAME, keys, codes)
            passing[profile] = known & (codes == _SAME)
            live[profile] = known & (codes != _DROPPED) & (codes != _UNKNOWN)

        order = np.argsort(mids, kind="stable")  # keys stay ascending within a metric
        bounds = np.searchsorted(mids[order], np.arange(n_metrics + 1))
        tallies = self._tallies(mids, route_ids, points, routes, known)
        flushes = max(1, window_ms // _FLUSH_MS)
        out = []
        for m, name in enumerate(names):
            idx = order[bounds[m]:bounds[m + 1]]
            idx = idx[known[idx]]
            if not len(idx):
                continue
            sample = idx[: self._k].tolist()
            series = tuple(SeriesSeen(key_list[i], labels[i] or (), int(points[i]),
                                      self._last.get(key_list[i], math.nan),
                                      routes[route_ids[i]].priority if len(routes)
                                      else PriorityClass.MEDIUM)
                           for i in sample)
            pairs: frozenset[tuple[str, str]] = frozenset().union(
                *[labels[i] or () for i in idx.tolist()])
            profile_keys = {}
            profile_points = {}
            for profile, keys_out in outputs.items():
                sel = idx[live[profile][idx]]
                distinct = np.unique(keys_out[sel])
                profile_keys[profile] = distinct
                through = idx[passing[profile][idx]]
                n_groups = len(distinct) - len(through)
                profile_points[profile] = int(points[through].sum()) + flushes * max(0, n_groups)
            out.append(MetricSnapshot(
                name=name, kind=self._kind(name), series=series, outputs=profile_keys,
                counts=PointTally(received=received[m], accepted=received[m],
                                  dropped=dropped_n[m], merged=merged_n[m],
                                  overflowed=overflowed_n[m]),
                policies=tuple(tallies.get(m, ())), output_points=profile_points,
                input_keys=keys[idx], label_pairs=pairs))
        return tuple(out)

    def _shadow_codes(self, plan: Plan, column: npt.NDArray[np.uint64], key_list: list[int],
                      labels: list[LabelSet | None]) -> npt.NDArray[np.uint64]:
        """The shadow output code of every window series, routing (up to the budget) those
        not routed yet and remembering them in the index column."""
        pos = self._positions
        deadline = time.process_time() + self._share
        codes = column[pos]
        todo = np.flatnonzero(codes == _UNKNOWN)
        if len(todo) > self._budget:
            self.unrouted += len(todo) - self._budget
            todo = todo[: self._budget]
        for n, i in enumerate(todo.tolist()):
            if n % 64 == 0 and time.process_time() > deadline:
                self.unrouted += len(todo) - n
                break
            lb = labels[i]
            if lb is None:
                continue
            r = plan.route(lb, self._kind(lb[0][1]), self._now_ms, key_list[i])
            value = (np.uint64(r.group_key) if r.code is Code.MERGE else
                     _DROPPED if r.code is Code.DROP else _SAME)
            codes[i] = value
            column[pos[i]] = value
        return codes

    @staticmethod
    def _tallies(mids: npt.NDArray[np.int64], route_ids: npt.NDArray[np.int32],
                 points: npt.NDArray[np.int64], routes: Sequence[Route],
                 known: npt.NDArray[np.bool_]) -> dict[int, list[PolicyTally]]:
        """Per metric, each policy's effect, from the (metric, route) pairs of the window."""
        if not len(routes):
            return {}
        with_tallies = np.fromiter((bool(r.tallies) for r in routes), dtype=bool,
                                   count=len(routes))
        sel = known & with_tallies[route_ids]
        if not sel.any():
            return {}
        pair = mids[sel] * len(routes) + route_ids[sel]
        uniq, inverse, series_n = np.unique(pair, return_inverse=True, return_counts=True)
        points_n = np.bincount(inverse, weights=points[sel]).astype(np.int64)
        out: dict[int, dict[str, PolicyTally]] = {}
        for p, s_n, pt_n in zip(uniq.tolist(), series_n.tolist(), points_n.tolist(),
                                strict=True):
            m, rid = divmod(p, len(routes))
            per = out.setdefault(m, {})
            for policy_id, dry_run, changes in routes[rid].tallies:
                t = per.get(policy_id)
                if t is None:
                    t = per[policy_id] = PolicyTally(policy_id, dry_run)
                t.matched_points += pt_n
                t.matched_series += s_n
                if changes:
                    t.changed_points += pt_n
        return {m: [per[k] for k in sorted(per)] for m, per in out.items()}
