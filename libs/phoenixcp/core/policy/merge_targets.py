"""Where a tenant's merged points go, for :class:`~phoenixcp.core.policy.engine.PolicyEngine`.

A merge target (:class:`_Target`) is one merge spec's pair of mergers (cumulative and gauge,
from :mod:`phoenixcp.core.aggregation`) with its flush schedule; the engine keeps one per
tenant and spec fingerprint. :class:`_Resolved` caches, per route id of a tenant's route
table, which of those mergers and which group a route's points go to, so the data path
resolves a route once per engine epoch instead of once per batch. Not thread-safe: the
engine's event loop is the one caller.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from phoenixcp.core.aggregation import CumulativeMerger, GaugeMerger
from phoenixcp.core.batch import LabelSet
from phoenixcp.core.policy.plan import MergeSpec


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
class _Resolved:
    """Per route id of a tenant's route table: the merger (an index into ``mergers``; -1 for
    routes merged point by point, -2 not resolved yet) and group id its points go to, so a
    batch resolves only routes it has not seen. Valid for one engine epoch: a flush or close
    may free group ids, a plan change renumbers routes."""

    epoch: int = -1
    merger: npt.NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    gid: npt.NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    overflow: npt.NDArray[np.bool_] = field(default_factory=lambda: np.empty(0, bool))
    cumulative: npt.NDArray[np.bool_] = field(default_factory=lambda: np.empty(0, bool))
    mergers: list[CumulativeMerger | GaugeMerger] = field(default_factory=list)
    numbered: dict[int, int] = field(default_factory=dict)

    def ready(self, epoch: int, routes: int) -> None:
        """Start over in a new epoch; make room for ``routes`` route ids."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.merger = np.full(routes, -2, dtype=np.int32)
            self.gid = np.zeros(routes, dtype=np.int32)
            self.overflow = np.zeros(routes, dtype=bool)
            self.cumulative = np.zeros(routes, dtype=bool)
            self.mergers, self.numbered = [], {}
        elif routes > len(self.merger):
            grow = max(routes, 2 * len(self.merger)) - len(self.merger)
            self.merger = np.concatenate([self.merger, np.full(grow, -2, dtype=np.int32)])
            self.gid = np.concatenate([self.gid, np.zeros(grow, dtype=np.int32)])
            self.overflow = np.concatenate([self.overflow, np.zeros(grow, dtype=bool)])
            self.cumulative = np.concatenate([self.cumulative, np.zeros(grow, dtype=bool)])
