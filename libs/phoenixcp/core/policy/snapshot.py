"""Turn one tenant's closed window into per-metric snapshots, active and shadow profiles.

Per distinct series of the window (not per point): its labels, points and route under the
active plan; the output series it fed; and, for every other profile (shadow accounting), the
output series it *would* have fed. Shadow routes are cached per series; at most
``shadow_budget`` new series per profile are routed per window, so a series bomb cannot turn
the window close into seconds of work — the shadow figures then cover the series routed so
far (the cache fills over the next windows), and the snapshot says how many were left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from phoenixcp.core.batch import LabelSet
from phoenixcp.core.policy.model import MetricKind
from phoenixcp.core.policy.plan import Code, Plan, Route
from phoenixcp.core.policy.window import MetricSnapshot, PointTally, PolicyTally, SeriesSeen
from phoenixcp.core.series import METRIC_NAME_LABEL

__all__ = ["SnapshotBuilder"]

_SAME = 0
"""Shadow output code: the series passes unchanged (its output key is its input key)."""
_DROPPED = 1
_FLUSH_MS = 15_000


class _Metric:
    __slots__ = ("counts", "groups", "outputs", "points_out", "series", "tallies")

    def __init__(self) -> None:
        self.series: list[SeriesSeen] = []
        self.counts = PointTally()
        self.tallies: dict[str, PolicyTally] = {}
        self.outputs: dict[str, set[int]] = {}
        self.groups: dict[str, set[int]] = {}
        self.points_out: dict[str, int] = {}

    def output(self, profile: str, key: int, points: int, merged: bool) -> None:
        self.outputs.setdefault(profile, set()).add(key)
        if merged:
            self.groups.setdefault(profile, set()).add(key)
        else:
            self.points_out[profile] = self.points_out.get(profile, 0) + points


class SnapshotBuilder:
    """Builds the :class:`MetricSnapshot` values of one tenant's window."""

    def __init__(self, *, active: str, shadows: Mapping[str, tuple[Plan, dict[int, int]]],
                 kind: Callable[[str], MetricKind], last_values: Mapping[int, float],
                 now_ms: int, shadow_budget: int) -> None:
        self._active = active
        self._shadows = shadows
        self._kind = kind
        self._last = last_values
        self._now_ms = now_ms
        self._budget = shadow_budget
        self.unrouted = 0
        """Series left out of shadow accounting in this window (over the budget)."""

    def build(self, keys: Sequence[int], points: Sequence[int], routes: Sequence[Route],
              catalog: Mapping[int, LabelSet], window_ms: int) -> tuple[MetricSnapshot, ...]:
        metrics: dict[str, _Metric] = {}
        budget = {name: self._budget for name in self._shadows}
        nan = math.nan
        for key, n, route in zip(keys, points, routes, strict=True):
            labels = catalog.get(key)
            if labels is None:
                continue
            name = labels[0][1] if labels and labels[0][0] == METRIC_NAME_LABEL else ""
            m = metrics.get(name)
            if m is None:
                m = metrics[name] = _Metric()
            m.series.append(SeriesSeen(key, labels, n, self._last.get(key, nan), route.priority))
            self._count(m, route, n)
            if route.code is Code.MERGE:
                m.output(self._active, route.group_key, n, True)
            elif route.code is not Code.DROP:
                m.output(self._active, key, n, False)
            for profile, (plan, cache) in self._shadows.items():
                code = cache.get(key)
                if code is None:
                    if budget[profile] <= 0:
                        self.unrouted += 1
                        continue
                    budget[profile] -= 1
                    r = plan.route(labels, self._kind(name), self._now_ms, key)
                    code = (r.group_key if r.code is Code.MERGE else
                            _DROPPED if r.code is Code.DROP else _SAME)
                    cache[key] = code
                if code == _SAME:
                    m.output(profile, key, n, False)
                elif code != _DROPPED:
                    m.output(profile, code, n, True)
        flushes = max(1, window_ms // _FLUSH_MS)
        out = []
        for name, m in sorted(metrics.items()):
            kind = self._kind(name)
            out.append(MetricSnapshot(
                name=name, kind=kind if kind is not MetricKind.ANY else MetricKind.UNKNOWN,
                series=tuple(m.series),
                outputs={p: np.fromiter(k, dtype=np.uint64, count=len(k))
                         for p, k in m.outputs.items()},
                counts=m.counts,
                output_points={p: m.points_out.get(p, 0) + flushes * len(m.groups.get(p, ()))
                               for p in m.outputs},
                policies=tuple(t for _, t in sorted(m.tallies.items()))))
        return tuple(out)

    @staticmethod
    def _count(m: _Metric, route: Route, n: int) -> None:
        counts = m.counts
        counts.received += n
        counts.accepted += n
        if route.code is Code.DROP:
            counts.dropped += n
        elif route.code is Code.MERGE:
            if route.overflow:
                counts.overflowed += n
            else:
                counts.merged += n
        for policy_id, dry_run, changes in route.tallies:
            t = m.tallies.get(policy_id)
            if t is None:
                t = m.tallies[policy_id] = PolicyTally(policy_id, dry_run)
            t.matched_points += n
            t.matched_series += 1
            if changes:
                t.changed_points += n
