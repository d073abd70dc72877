"""The series one tenant sent recently, found per batch without a Python loop over them.

A hash table in C (``_keytable``) gives every known series key a dense *slot*; the index keeps
each series' state in numpy arrays indexed by slot: its key, its route (an index into the
engine's route table, -1 until routed), its labels, its points in the current window, the
last window it sent in, and extra columns (the shadow profiles' output keys). A batch is
looked up with one call (``find``), new keys get slots with another (``add``); slots of
forgotten series are reused, so the arrays stay as large as the most series held at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from phoenixcp.core.batch import LabelSet
from phoenixcp.core.policy import _keytable_py

try:
    from phoenixcp.core.policy._keytable import KeyTable, count_points, split_codes

    KEY_TABLE = "c"
except ImportError:  # the extension is not built: same contract, slower
    KeyTable = _keytable_py.KeyTable  # type: ignore[assignment, misc]
    count_points = _keytable_py.count_points
    split_codes = _keytable_py.split_codes
    KEY_TABLE = "python"

__all__ = ["KEY_TABLE", "UNKNOWN", "SeriesIndex", "split_codes"]

_U64 = np.uint64
UNKNOWN = np.uint64(2**64 - 1)
"""An unset value in :attr:`SeriesIndex.columns`."""

_FREE = -2
"""``seen`` of a slot that holds no series."""


@dataclass(slots=True)
class SeriesIndex:
    """Known keys with their route ids, window points and the window they were last seen;
    every array is indexed by slot (see the module docstring)."""

    table: KeyTable | _keytable_py.KeyTable = field(default_factory=KeyTable)
    keys: npt.NDArray[np.uint64] = field(default_factory=lambda: np.empty(0, _U64))
    route: npt.NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    labels: npt.NDArray[np.object_] = field(default_factory=lambda: np.empty(0, object))
    """Each series' label set (None in a free slot): the one place the engine keeps them."""
    points: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    seen: npt.NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    last: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0, np.float64))
    """The last value of a merged series in the current window (NaN: none read)."""
    columns: dict[str, npt.NDArray[np.uint64]] = field(default_factory=dict)
    """Extra per-series values (shadow profiles' output keys); ``UNKNOWN`` until set."""

    def __len__(self) -> int:
        return len(self.table)

    def find(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """The slot of each key; -1 for keys not held."""
        return self.find_counted(keys)[0]

    def find_counted(self, keys: npt.NDArray[np.uint64]) -> tuple[npt.NDArray[np.int64], int]:
        """The slot of each key (-1 for keys not held), and how many are not held."""
        out = np.empty(len(keys), dtype=np.int64)
        missing = self.table.find(np.ascontiguousarray(keys, dtype=_U64), out)
        return out, missing

    def add(self, keys: npt.NDArray[np.uint64],
            labels: Sequence[LabelSet] | None = None) -> npt.NDArray[np.int64]:
        """Slots for ``keys`` (new ones start unrouted, with no points, holding their
        ``labels`` when given: aligned with ``keys``); returns them."""
        keys = np.ascontiguousarray(keys, dtype=_U64)
        out = np.empty(len(keys), dtype=np.int64)
        self.table.insert(keys, out)
        self._reserve(self.table.high)
        is_new = self.seen[out] == _FREE
        fresh = out[is_new]
        self.keys[fresh] = keys[is_new]
        self.route[fresh] = -1
        self.points[fresh] = 0
        self.seen[fresh] = -1
        self.last[fresh] = np.nan
        for column in self.columns.values():
            column[fresh] = UNKNOWN
        if labels is not None:
            self.labels[out] = np.fromiter(labels, dtype=object, count=len(keys))
        return out

    def _reserve(self, high: int) -> None:
        size = len(self.keys)
        if high <= size:
            return
        grown = max(high, 2 * size, 1024)

        def extend(a: npt.NDArray[np.generic], fill: object) -> npt.NDArray[np.generic]:
            out = np.empty(grown, dtype=a.dtype)
            out[:size] = a
            out[size:] = fill
            return out

        self.keys = extend(self.keys, 0)  # type: ignore[assignment]
        self.route = extend(self.route, -1)  # type: ignore[assignment]
        self.labels = extend(self.labels, None)  # type: ignore[assignment]
        self.points = extend(self.points, 0)  # type: ignore[assignment]
        self.seen = extend(self.seen, _FREE)  # type: ignore[assignment]
        self.last = extend(self.last, np.nan)  # type: ignore[assignment]
        for name, column in self.columns.items():
            self.columns[name] = extend(column, UNKNOWN)  # type: ignore[assignment]

    def count(self, slots: npt.NDArray[np.int64], spans: npt.NDArray[np.uint32],
              ids: npt.NDArray[np.int32]) -> int:
        """Add a batch's points per series (``spans[:, 2]``, a batch's ``series_spans``) to
        the window and write each series' route id into ``ids``; returns how many are -1
        (not routed yet). One C loop (``count_points``)."""
        return count_points(slots, spans, self.points, self.route, ids)

    def clear_routes(self, ids: npt.NDArray[np.int32] | None = None) -> None:
        """Forget routes (all, or those with the given ids) so they are computed again."""
        if ids is None:
            self.route.fill(-1)
        else:
            self.route[np.isin(self.route, ids)] = -1

    def column(self, name: str) -> npt.NDArray[np.uint64]:
        """The extra column ``name`` (created all UNKNOWN), indexed by slot."""
        found = self.columns.get(name)
        if found is None:
            found = self.columns[name] = np.full(len(self.keys), UNKNOWN, dtype=_U64)
        return found

    def drop_columns(self, keep: set[str]) -> None:
        for name in [n for n in self.columns if n not in keep]:
            del self.columns[name]

    def window(self) -> npt.NDArray[np.intp]:
        """Slots of the series that sent points in the current window."""
        return np.flatnonzero(self.points > 0)

    def end_window(self, window: int, keep_windows: int) -> npt.NDArray[np.uint64]:
        """Start the next window; forget series silent for ``keep_windows`` windows (bounded
        memory). Returns the forgotten keys."""
        self.seen[self.points > 0] = window
        self.points.fill(0)
        self.last.fill(np.nan)
        stale = np.flatnonzero((self.seen != _FREE) & (self.seen < window - keep_windows + 1))
        gone = self.keys[stale]
        if len(gone):
            self.table.remove(gone)
            self.seen[stale] = _FREE
            self.route[stale] = -1
            self.labels[stale] = None
        return gone
