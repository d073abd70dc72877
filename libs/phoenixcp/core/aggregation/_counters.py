"""Counter mergers: cumulative counters (and histogram series) and delta counters."""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import NamedTuple

from phoenixcp.core.series import STALE_NAN

__all__ = ["CumulativeMerger", "DeltaMerger", "MergeConfig", "MergedPoint"]


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


@dataclass(slots=True)
class _Input:
    last_value: float
    last_ts: int


@dataclass(slots=True)
class _Group:
    total: float = 0.0
    dirty: bool = False
    inputs: dict[Hashable, _Input] = field(default_factory=dict)


class CumulativeMerger:
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
    """

    def __init__(self, *, config: MergeConfig | None = None) -> None:
        self._idle_ms = (config or MergeConfig()).idle_timeout_ms
        self._groups: dict[Hashable, _Group] = {}

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
        return out

    def total(self, group: Hashable) -> float | None:
        """The current total of ``group``, or None when it has no state."""
        state = self._groups.get(group)
        return None if state is None else state.total

    def __len__(self) -> int:
        """How many input series the merger holds state for."""
        return sum(len(g.inputs) for g in self._groups.values())


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
