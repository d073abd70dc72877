"""Counter mergers: cumulative counters (and histogram series) and delta counters.

``CumulativeMerger`` is ``_PyCumulativeMerger``'s contract with its state in the
``_mergecore`` C extension (docs/adr/0009-merge-state-in-c.md); where the extension is not
built it *is* ``_PyCumulativeMerger``, the reference implementation the tests compare it with.
``MERGE_STATE`` says which one runs ("c" or "python").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Hashable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, NamedTuple, SupportsIndex

import numpy as np
import numpy.typing as npt

from phoenixcp.core.series import STALE_NAN

try:
    from phoenixcp.core.aggregation._mergecore import CumulativeCore as _CumulativeCore

    MERGE_STATE = "c"
except ImportError:  # the extension is not built: the reference implementation runs
    MERGE_STATE = "python"

__all__ = ["MERGE_STATE", "CumulativeMerger", "DeltaMerger", "MergeConfig", "MergedPoint"]


class MergedPoint(NamedTuple):
    """One output point: the group (output series), its timestamp (ms) and value.

    ``value`` may be Prometheus' staleness marker (check with ``is_stale_marker``): the group
    lost its last input and its output series ends.
    """

    group: Hashable
    timestamp_ms: int
    value: float


@dataclass(frozen=True, slots=True, kw_only=True)
class MergeConfig:
    """How long an input series may stay silent before its state is forgotten.

    A forgotten cumulative input that comes back counts as a new series (its whole value is
    added again); keep ``idle_timeout`` well above the inputs' scrape or export interval.
    """

    idle_timeout: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        if self.idle_timeout <= timedelta(0):
            raise ValueError(f"idle_timeout must be positive, got {self.idle_timeout}")

    @property
    def idle_timeout_ms(self) -> int:
        return int(self.idle_timeout / timedelta(milliseconds=1))


_KEY_MASK = (1 << 64) - 1


class _SeriesKeys:
    """uint64 keys for ``observe``'s hashable series (the slow path; the engine passes keys).

    An int, or anything with ``__index__`` (numpy.uint64), is its own key modulo 2**64, as
    in ``observe_many``. Anything else gets a key counted down from 2**64 - 1, remembered
    for the merger's lifetime: do not feed an unbounded stream of such series to ``observe``.
    """

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: dict[Hashable, int] = {}

    def __call__(self, series: Hashable) -> int:
        if type(series) is int:
            return series & _KEY_MASK
        key = self._ids.get(series)
        if key is None:
            if isinstance(series, SupportsIndex):
                return series.__index__() & _KEY_MASK
            key = self._ids[series] = _KEY_MASK - len(self._ids)
        return key


_FREE = object()


class _GroupIds:
    """The reference mergers' ``group_id``: small ints, freed when the group is forgotten."""

    __slots__ = ("_free", "_groups", "_ids")

    def __init__(self) -> None:
        self._ids: dict[Hashable, int] = {}
        self._groups: list[object] = []
        self._free: list[int] = []

    def id(self, group: Hashable) -> int:
        gid = self._ids.get(group)
        if gid is None:
            if self._free:
                gid = self._free.pop()
                self._groups[gid] = group
            else:
                gid = len(self._groups)
                self._groups.append(group)
            self._ids[group] = gid
        return gid

    def groups(self, gids: list[int]) -> list[Hashable]:
        out: list[Hashable] = []
        for gid in gids:
            group = self._groups[gid] if 0 <= gid < len(self._groups) else _FREE
            if group is _FREE:
                raise ValueError(f"unknown group id {gid} (ids from group_id() are valid "
                                 "until the next flush or close)")
            out.append(group)
        return out

    def retain(self, live: Container[Hashable]) -> None:
        """Frees the ids of groups not in ``live``."""
        for group, gid in list(self._ids.items()):
            if group not in live:
                del self._ids[group]
                self._groups[gid] = _FREE
                self._free.append(gid)


def _observe_each(observe: Callable[[Hashable, Hashable, int, float], bool], ids: _GroupIds,
                  gids: npt.NDArray[np.int32], series: npt.NDArray[np.uint64],
                  timestamps_ms: npt.NDArray[np.int64],
                  values: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """``observe_many`` as a loop: every id checked first, then each point in order."""
    groups = ids.groups(np.asarray(gids, dtype=np.int32).tolist())
    columns = (np.asarray(series, dtype=np.uint64).tolist(),
               np.asarray(timestamps_ms, dtype=np.int64).tolist(),
               np.asarray(values, dtype=np.float64).tolist())
    if any(len(c) != len(groups) for c in columns):
        raise ValueError("observe_many: arrays of different lengths")
    return np.fromiter(map(observe, groups, *columns), dtype=np.bool_, count=len(groups))


@dataclass(slots=True)
class _Input:
    last_value: float
    last_ts: int


@dataclass(slots=True)
class _Group:
    total: float = 0.0
    dirty: bool = False
    inputs: dict[Hashable, _Input] = field(default_factory=dict)


class _PyCumulativeMerger:
    """Merges cumulative counters into one running total per group, monotonic by design.

    For each ``(group, series)`` it keeps the series' last raw value. A point adds the
    series' *increase* to the group's total: ``value - last`` normally, ``value`` when the
    value went down (a reset, as Prometheus' ``rate()`` reads it), and ``value`` for the
    first point of a series never seen (or forgotten after ``idle_timeout``): a counter that
    appears is taken to have counted from zero. Hence, while no input resets, the total
    equals the sum of the inputs' current values, and it never decreases.

    Points older than the series' last point, NaN and negative values are refused
    (``observe`` returns False); staleness markers are ignored (the series' state stays, so
    a target that flaps does not count its value twice). ``flush(now_ms)`` emits the total
    of every group that received a point since the last flush, stamped ``now_ms``; a group
    whose inputs all went idle is forgotten and emits one staleness marker.

    Batches: ``group_id(group)`` gives a small int for a group (creating it if needed), valid
    while the group holds state and reused once ``flush``/``close`` forgets it, so callers
    must not keep one across a ``flush`` or ``close``; ``observe_many(gids, series,
    timestamps_ms, values)`` feeds the points in order exactly as ``observe`` would and
    returns what ``observe`` would have returned for each. Series are compared as given;
    the C-backed ``CumulativeMerger`` maps them to uint64 keys (an int is its own key).
    Not thread-safe: one owner calls it.
    """

    def __init__(self, *, config: MergeConfig | None = None) -> None:
        self._idle_ms = (config or MergeConfig()).idle_timeout_ms
        self._groups: dict[Hashable, _Group] = {}
        self._ids = _GroupIds()

    def group_id(self, group: Hashable) -> int:
        """A small non-negative id for ``group``, valid until the next flush or close."""
        return self._ids.id(group)

    def observe_many(self, gids: npt.NDArray[np.int32], series: npt.NDArray[np.uint64],
                     timestamps_ms: npt.NDArray[np.int64],
                     values: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """``observe`` for each point in order (groups by ``group_id``); accepted per point."""
        return _observe_each(self.observe, self._ids, gids, series, timestamps_ms, values)

    def observe(self, group: Hashable, series: Hashable, timestamp_ms: int,
                value: float) -> bool:
        """Add one point of ``series`` (an input) to ``group``; False when refused."""
        if math.isnan(value) or value < 0:
            return False
        state = self._groups.get(group)
        if state is None:
            state = self._groups[group] = _Group()
        prev = state.inputs.get(series)
        if prev is None:
            state.inputs[series] = _Input(value, timestamp_ms)
            increase = value
        elif timestamp_ms < prev.last_ts:
            return False
        else:
            increase = value - prev.last_value if value >= prev.last_value else value
            prev.last_value, prev.last_ts = value, timestamp_ms
        state.total += increase
        state.dirty = True
        return True

    def flush(self, now_ms: int) -> list[MergedPoint]:
        """The totals of groups updated since the last flush; forgets idle inputs."""
        out: list[MergedPoint] = []
        horizon = now_ms - self._idle_ms
        for group, state in list(self._groups.items()):
            if state.dirty:
                out.append(MergedPoint(group, now_ms, state.total))
                state.dirty = False
                continue
            idle = [s for s, i in state.inputs.items() if i.last_ts < horizon]
            for s in idle:
                del state.inputs[s]
            if not state.inputs:
                del self._groups[group]
                out.append(MergedPoint(group, now_ms, STALE_NAN))
        self._ids.retain(self._groups)
        return out

    def seed(self, group: Hashable, series: Hashable, timestamp_ms: int, value: float) -> None:
        """Start following ``series`` in ``group`` from ``value`` without adding it: only its
        increases from now on count (a series moved here from another output series)."""
        state = self._groups.get(group)
        if state is None:
            state = self._groups[group] = _Group()
        state.inputs[series] = _Input(value, timestamp_ms)

    def close(self, now_ms: int) -> list[MergedPoint]:
        """Flush, then end every group with a staleness marker and forget all state (the
        policy that owned the groups is gone)."""
        out = self.flush(now_ms)
        out.extend(MergedPoint(g, now_ms, STALE_NAN) for g in self._groups)
        self._groups.clear()
        self._ids.retain(self._groups)
        return out

    def total(self, group: Hashable) -> float | None:
        """The current total of ``group``, or None when it has no state."""
        state = self._groups.get(group)
        return None if state is None else state.total

    def __len__(self) -> int:
        """How many input series the merger holds state for."""
        return sum(len(g.inputs) for g in self._groups.values())


if MERGE_STATE == "c":

    class _CCumulativeMerger(_CumulativeCore):
        """``_PyCumulativeMerger``'s contract, state in C hash tables (``_mergecore.c``).

        ``group_id``, ``observe_many``, ``flush``, ``close``, ``total`` and ``len()`` are
        the C methods; ``observe`` and ``seed`` map their series to uint64 keys first.
        """

        def __init__(self, *, config: MergeConfig | None = None) -> None:
            super().__init__((config or MergeConfig()).idle_timeout_ms, MergedPoint)
            self._keys = _SeriesKeys()

        def observe(self, group: Hashable, series: Hashable, timestamp_ms: int,
                    value: float) -> bool:
            """Add one point of ``series`` (an input) to ``group``; False when refused."""
            return self._observe_one(group, self._keys(series), timestamp_ms, value)

        def seed(self, group: Hashable, series: Hashable, timestamp_ms: int,
                 value: float) -> None:
            """Start following ``series`` in ``group`` from ``value`` without adding it."""
            self._seed(group, self._keys(series), timestamp_ms, value)


# Type checkers see the reference (the contract); at run time the C-backed class when built.
if TYPE_CHECKING:
    CumulativeMerger = _PyCumulativeMerger
elif MERGE_STATE == "c":
    CumulativeMerger = _CCumulativeMerger
else:
    CumulativeMerger = _PyCumulativeMerger


class DeltaMerger:
    """Merges delta counters: the sum of every point received per group per flush window.

    Deltas carry no state across windows: ``flush(now_ms)`` emits each group that received
    a point since the last flush with the sum of those points, stamped ``now_ms``, and
    forgets it. NaN (staleness markers included) is refused. A resent point is counted
    again: de-duplication belongs to the receiver, before merging.
    """

    def __init__(self) -> None:
        self._sums: dict[Hashable, float] = {}

    def observe(self, group: Hashable, series: Hashable, timestamp_ms: int,
                value: float) -> bool:
        """Add one delta point to ``group``'s window; ``series``/``timestamp_ms`` unused."""
        if math.isnan(value):
            return False
        self._sums[group] = self._sums.get(group, 0.0) + value
        return True

    def flush(self, now_ms: int) -> list[MergedPoint]:
        """Each group's sum over the window that ends now, then an empty window."""
        out = [MergedPoint(g, now_ms, v) for g, v in self._sums.items()]
        self._sums = {}
        return out
