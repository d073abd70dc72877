"""Turn one tenant's closed window into per-metric snapshots, active and shadow profiles.

The work is per distinct series of the window, on arrays: series are grouped by metric with
one sort, counts come from ``bincount`` over route codes, each profile's output keys from its
routes. What depends on a series' labels alone (its metric, its labels, the ids of its label
pairs) is kept across windows in a :class:`~phoenixcp.core.policy.memo.SeriesMemo` (memo.py)
aligned with the index slots, so a series costs Python work (reading its labels) only in the
first window it is seen; objects are built only for the sample (the ``sample_k`` smallest
keys per metric) and for the distinct label pairs of a metric whose series changed.

Shadow routes (what every other profile would have done) are kept per series in the index
(a ``uint64`` column per profile: 8 bytes per series); at most ``shadow_budget`` new series
per profile, and at most ``shadow_seconds`` of CPU for all profiles together (50 ms, shared
equally), are routed per window, so neither a start nor a series bomb can turn the window
close into seconds of work — the shadow figures then cover the series routed so far, the
rest fill in over the next windows, and :attr:`SnapshotBuilder.unrouted` says how many were
left out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import repeat
from typing import cast

import numpy as np
import numpy.typing as npt

from phoenixcp.core.batch import LabelSet
from phoenixcp.core.checkpoints import checkpoint
from phoenixcp.core.policy.memo import SeriesMemo, _Labels
from phoenixcp.core.policy.model import MetricKind, PriorityClass
from phoenixcp.core.policy.plan import Code, Plan, Route
from phoenixcp.core.policy.window import MetricSnapshot, PointTally, PolicyTally, SeriesColumns

__all__ = ["SeriesMemo", "SnapshotBuilder"]

_Outputs = tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]

_DROPPED = np.uint64(1)
_SAME = np.uint64(0)
_UNKNOWN = np.uint64(2**64 - 1)
_FLUSH_MS = 15_000


class SnapshotBuilder:
    """Builds the :class:`MetricSnapshot` values of one tenant's window.

    ``memo`` is the tenant's :class:`SeriesMemo`, kept by the engine from window to window,
    so a series' labels are read only in the first window it is seen. ``positions``
    are the series' index slots; keys come in slot order (the builder sorts per metric).
    """

    def __init__(self, *, active: str,
                 shadows: Mapping[str, tuple[Plan, npt.NDArray[np.uint64]]],
                 positions: npt.NDArray[np.intp], kind: Callable[[str], MetricKind],
                 last_value: Callable[[int, float], float], now_ms: int,
                 shadow_budget: int,
                 memo: SeriesMemo, sample_k: int = 256,
                 shadow_seconds: float = 0.05) -> None:
        self._active = active
        self._shadows = shadows
        self._positions = positions
        self._kind = kind
        self._last = last_value
        self._now_ms = now_ms
        self._budget = shadow_budget
        self._share = shadow_seconds / max(1, len(shadows))
        self._k = sample_k
        self._memo = memo
        self.unrouted = 0
        """Series left out of shadow accounting in this window (over the budget)."""

    def build(self, keys: npt.NDArray[np.uint64], points: npt.NDArray[np.int64],
              route_ids: npt.NDArray[np.int32], routes: Sequence[Route],
              labels: _Labels, window_ms: int) -> tuple[MetricSnapshot, ...]:
        """``keys`` (in index slot order, ``positions`` their slots) with their window
        ``points``, ``route_ids`` into ``routes`` (every id valid) and ``labels`` (read only
        for the series the memo does not know yet; a series with None there and unknown to
        the memo is left out). Metrics come in the order of their smallest key, each one's
        series (and sample) ascending by key."""
        memo = self._memo
        rows = memo.rows(keys, self._positions, labels)
        checkpoint()
        known = rows >= 0
        mids, names, order, bounds = memo.grouping(keys, rows)
        checkpoint()
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

        checkpoint()
        active = (np.where(merged, group[route_ids] if len(routes) else keys, keys),
                  known & ~dropped, known & ~merged & ~dropped)
        tallies = self._tallies(mids, route_ids, points, routes, known)
        checkpoint()
        flushes = max(1, window_ms // _FLUSH_MS)
        if not known.all():  # series with no labels are left out (metric runs in order)
            order = order[known[order]]
            bounds = [0, *np.cumsum(np.bincount(mids[known], minlength=n_metrics)).tolist()]
        # Every per-series array in metric order once: each metric is then a slice.
        keys_m, points_m, rows_m = keys[order], points[order], rows[order]
        if len(routes):
            priority_of = np.fromiter((r.priority for r in routes), dtype=np.int8,
                                      count=len(routes))
            priority_m = priority_of[route_ids[order]]
        else:
            priority_m = np.full(len(order), PriorityClass.MEDIUM, dtype=np.int8)
        runs = [(m, bounds[m], bounds[m + 1]) for m in range(n_metrics)
                if bounds[m] < bounds[m + 1]]
        profile_keys: list[dict[str, npt.NDArray[np.uint64]]] = [{} for _ in runs]
        profile_points: list[dict[str, int]] = [{} for _ in runs]
        # One profile at a time: its arrays are freed before the next one's are made.
        for profile, outputs, live, passing in self._profiles(active, keys, rows, known):
            keys_out, lives, passes = outputs[order], live[order], passing[order]
            for j, (_, lo, hi) in enumerate(runs):
                checkpoint()
                live_out, pass_out = lives[lo:hi], passes[lo:hi]
                # Series that pass keep their own key: ascending and distinct already; when
                # all pass, the metric's keys are shared (a view), not copied per profile.
                if pass_out.all():
                    distinct = keys_m[lo:hi]
                elif (pass_out | ~live_out).all():
                    distinct = keys_m[lo:hi][live_out]
                else:
                    distinct = np.unique(keys_out[lo:hi][live_out])
                profile_keys[j][profile] = distinct
                n_through = int(np.count_nonzero(pass_out))
                n_groups = len(distinct) - n_through
                profile_points[j][profile] = (int(points_m[lo:hi][pass_out].sum())
                                              + flushes * max(0, n_groups))
        out = []
        for j, (m, lo, hi) in enumerate(runs):
            checkpoint()
            name = names[m]
            metric_keys = keys_m[lo:hi]
            top = slice(lo, min(hi, lo + self._k))
            out.append(MetricSnapshot(
                name=name, kind=self._kind(name),
                series=self._sample(metric_keys[: self._k], points_m[top], priority_m[top],
                                    memo.labels(rows_m[top])),
                outputs=profile_keys[j],
                counts=PointTally(received=received[m], accepted=received[m],
                                  dropped=dropped_n[m], merged=merged_n[m],
                                  overflowed=overflowed_n[m]),
                policies=tuple(tallies.get(m, ())), output_points=profile_points[j],
                input_keys=metric_keys,
                label_pairs=memo.label_pairs(name, metric_keys, rows_m[lo:hi])))
        return tuple(out)

    def _profiles(self, active: _Outputs, keys: npt.NDArray[np.uint64],
                  rows: npt.NDArray[np.intp], known: npt.NDArray[np.bool_]
                  ) -> Iterator[tuple[str, npt.NDArray[np.uint64], npt.NDArray[np.bool_],
                                      npt.NDArray[np.bool_]]]:
        """Per profile, the active one first: each series' output key, whether it is live
        (not dropped, routed) and whether it passes unchanged, made when asked for."""
        yield self._active, *active
        for profile, (plan, column) in self._shadows.items():
            codes = self._shadow_codes(plan, column, keys, rows, self._memo)
            yield (profile, np.where(codes == _SAME, keys, codes),
                   known & (codes != _DROPPED) & (codes != _UNKNOWN), known & (codes == _SAME))

    def _sample(self, keys: npt.NDArray[np.uint64], points: npt.NDArray[np.int64],
                priorities: npt.NDArray[np.int8],
                labels: list[LabelSet | None]) -> SeriesColumns:
        """The sampled series (all with labels) as columns."""
        values = np.fromiter(map(self._last, keys.tolist(), repeat(math.nan)),
                             dtype=np.float64, count=len(keys))
        return SeriesColumns(keys, cast(list[LabelSet], labels), points, values, priorities)

    def _shadow_codes(self, plan: Plan, column: npt.NDArray[np.uint64],
                      keys: npt.NDArray[np.uint64], rows: npt.NDArray[np.intp],
                      memo: SeriesMemo) -> npt.NDArray[np.uint64]:
        """The shadow output code of every window series, routing (up to the budget) those
        not routed yet and remembering them in the index column."""
        pos = self._positions
        deadline = time.process_time() + self._share
        codes = column[pos]
        todo = np.flatnonzero(codes == _UNKNOWN)
        if len(todo) > self._budget:
            self.unrouted += len(todo) - self._budget
            todo = todo[: self._budget]
        todo_keys = keys[todo].tolist()
        todo_labels = memo.labels(rows[todo])
        for n, i in enumerate(todo.tolist()):
            if n % 64 == 0:
                checkpoint()
            if n % 64 == 0 and time.process_time() > deadline:
                self.unrouted += len(todo) - n
                break
            lb = todo_labels[n]
            if lb is None:
                continue
            r = plan.route(lb, self._kind(lb[0][1]), self._now_ms, todo_keys[n])
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
