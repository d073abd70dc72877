"""The series one tenant sent recently, as sorted arrays: looked up per batch without a
Python loop over the series.

A batch's keys are found with one ``searchsorted`` over the sorted key array; the parallel
arrays hold each series' route (an index into the engine's route table, -1 until routed) and
its points in the current window. Keys seen for the first time go to a small side table and
are merged into the arrays in bulk, so a batch with no new series costs a few numpy calls
whatever its size, and a burst of new series costs O(new) plus an amortised merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["UNKNOWN", "Lookup", "SeriesIndex"]

_U64 = np.uint64
UNKNOWN = np.uint64(2**64 - 1)
"""An unset value in :attr:`SeriesIndex.columns`."""


@dataclass(frozen=True, slots=True)
class Lookup:
    """Where each key of a batch lives: ``pos`` into the arrays, or -1 when it is new or
    still in the side table (then ``side[i]`` holds its side slot, else -1)."""

    pos: npt.NDArray[np.intp]
    side: npt.NDArray[np.intp]


@dataclass(slots=True)
class SeriesIndex:
    """Known keys with their route ids, window points and the window they were last seen."""

    keys: npt.NDArray[np.uint64] = field(default_factory=lambda: np.empty(0, _U64))
    route: npt.NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    points: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    seen: npt.NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    side_keys: list[int] = field(default_factory=list)
    side_slot: dict[int, int] = field(default_factory=dict)
    side_route: list[int] = field(default_factory=list)
    side_points: list[int] = field(default_factory=list)
    columns: dict[str, npt.NDArray[np.uint64]] = field(default_factory=dict)
    """Extra per-series values aligned with ``keys`` (shadow profiles' output keys);
    ``UNKNOWN`` until set."""

    def __len__(self) -> int:
        return len(self.keys) + len(self.side_keys)

    def find(self, keys: npt.NDArray[np.uint64]) -> Lookup:
        """Positions of ``keys``; new keys (in neither place) have pos and side -1."""
        n = len(self.keys)
        if n:
            # Searching in key order keeps each search near the last one: under load, when
            # the index is not in the CPU cache, this costs a few misses per key, not ~18.
            order = np.argsort(keys)
            pos = np.empty(len(keys), dtype=np.intp)
            pos[order] = np.searchsorted(self.keys, keys[order])
            clipped = np.minimum(pos, n - 1)
            hit = self.keys[clipped] == keys
            pos = np.where(hit, clipped, -1)
        else:
            pos = np.full(len(keys), -1, dtype=np.intp)
        side = np.full(len(keys), -1, dtype=np.intp)
        if self.side_slot:
            slot = self.side_slot
            for i in np.flatnonzero(pos < 0).tolist():
                found = slot.get(int(keys[i]))
                if found is not None:
                    side[i] = found
        return Lookup(pos.astype(np.intp, copy=False), side)

    def add(self, keys: list[int]) -> list[int]:
        """Add new keys to the side table; returns their side slots."""
        slots = []
        for k in keys:
            slot = self.side_slot.get(k)
            if slot is None:
                slot = self.side_slot[k] = len(self.side_keys)
                self.side_keys.append(k)
                self.side_route.append(-1)
                self.side_points.append(0)
            slots.append(slot)
        return slots

    def routes_of(self, look: Lookup) -> npt.NDArray[np.int32]:
        """Route ids of a looked-up batch (-1: not routed under the current plan)."""
        out = np.full(len(look.pos), -1, dtype=np.int32)
        main = look.pos >= 0
        out[main] = self.route[look.pos[main]]
        for i in np.flatnonzero(look.side >= 0).tolist():
            out[i] = self.side_route[look.side[i]]
        return out

    def set_route(self, look: Lookup, i: int, route_id: int) -> None:
        if look.pos[i] >= 0:
            self.route[look.pos[i]] = route_id
        else:
            self.side_route[look.side[i]] = route_id

    def count(self, look: Lookup, points: npt.NDArray[np.int64]) -> None:
        """Add a batch's points per series to the window."""
        main = look.pos >= 0
        if main.all():
            np.add.at(self.points, look.pos, points)
            return
        np.add.at(self.points, look.pos[main], points[main])
        for i in np.flatnonzero(~main).tolist():
            self.side_points[look.side[i]] += int(points[i])

    def settle(self, *, force: bool = False) -> bool:
        """Merge the side table into the arrays when it has grown (or with ``force``);
        True when it did (earlier lookups are then out of date)."""
        if not self.side_keys or (not force and len(self.side_keys) < max(
                1024, len(self.keys) // 8)):
            return False
        keys = np.concatenate([self.keys, np.asarray(self.side_keys, dtype=_U64)])
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.route = np.concatenate(
            [self.route, np.asarray(self.side_route, dtype=np.int32)])[order]
        self.points = np.concatenate(
            [self.points, np.asarray(self.side_points, dtype=np.int64)])[order]
        self.seen = np.concatenate(
            [self.seen, np.full(len(self.side_keys), -1, dtype=np.int32)])[order]
        for name, column in self.columns.items():
            self.columns[name] = np.concatenate(
                [column, np.full(len(self.side_keys), UNKNOWN, dtype=_U64)])[order]
        self.side_keys, self.side_slot, self.side_route, self.side_points = [], {}, [], []
        return True

    def clear_routes(self, ids: npt.NDArray[np.int32] | None = None) -> None:
        """Forget routes (all, or those with the given ids) so they are computed again."""
        if ids is None:
            self.route.fill(-1)
            self.side_route = [-1] * len(self.side_keys)
            return
        self.route[np.isin(self.route, ids)] = -1
        wanted = set(ids.tolist())
        self.side_route = [-1 if r in wanted else r for r in self.side_route]

    def column(self, name: str) -> npt.NDArray[np.uint64]:
        """The extra column ``name`` (created all UNKNOWN); call after :meth:`settle`."""
        found = self.columns.get(name)
        if found is None or len(found) != len(self.keys):
            found = self.columns[name] = np.full(len(self.keys), UNKNOWN, dtype=_U64)
        return found

    def drop_columns(self, keep: set[str]) -> None:
        for name in [n for n in self.columns if n not in keep]:
            del self.columns[name]

    def window(self) -> npt.NDArray[np.intp]:
        """Positions of the series that sent points in the current window (settles first)."""
        self.settle(force=True)
        return np.flatnonzero(self.points > 0)

    def end_window(self, window: int, keep_windows: int) -> npt.NDArray[np.uint64]:
        """Start the next window; forget series silent for ``keep_windows`` windows (bounded
        memory). Returns the forgotten keys."""
        self.settle(force=True)
        self.seen[self.points > 0] = window
        self.points = np.zeros(len(self.keys), dtype=np.int64)
        stale = self.seen < window - keep_windows + 1
        gone = self.keys[stale]
        if len(gone):
            keep = ~stale
            self.keys, self.route = self.keys[keep], self.route[keep]
            self.points, self.seen = self.points[keep], self.seen[keep]
            for name, column in self.columns.items():
                self.columns[name] = column[keep]
        return gone
