"""Gauge merger: one function (sum, avg, min, max, last) over the inputs' latest values.

``GaugeMerger`` is ``_PyGaugeMerger``'s contract with its state in the ``_mergecore`` C
extension (docs/adr/0009-merge-state-in-c.md); where the extension is not built it *is*
``_PyGaugeMerger``, the reference implementation.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from phoenixcp.core.aggregation._counters import (
    MERGE_STATE,
    MergeConfig,
    MergedPoint,
    _GroupIds,
    _observe_each,
    _SeriesKeys,
)
from phoenixcp.core.series import STALE_NAN, is_stale_marker

if MERGE_STATE == "c":
    from phoenixcp.core.aggregation._mergecore import GaugeCore as _GaugeCore

__all__ = ["GaugeFunction", "GaugeMerger"]


class GaugeFunction(enum.Enum):
    """How merged gauge values are combined (``GaugeFunction`` in state.proto)."""

    SUM = 1
    AVG = 2
    MIN = 3
    MAX = 4
    LAST = 5


@dataclass(slots=True)
class _Latest:
    value: float
    ts: int
    seq: int


@dataclass(slots=True)
class _Group:
    dirty: bool = False
    emitted: bool = False
    inputs: dict[Hashable, _Latest] = field(default_factory=dict)


_HUGE = 2.0**1000
_SCALE = 2.0**-64
_UNSCALE = 2.0**64


def _exact_sum(values: list[float]) -> float:
    """``math.fsum`` (exact, correctly rounded, independent of order), made total.

    ``math.fsum`` raises on ``inf`` plus ``-inf`` and when a partial sum overflows, and the
    data path must not. Here infinities give their sum (NaN for both signs), and when
    ``len * max|v| >= 2**1000`` (a partial sum could overflow, whatever the order) the sum
    is that of the values scaled by ``2**-64``, scaled back. ``_mergecore.c`` does the same,
    bit for bit.
    """
    if any(math.isinf(v) for v in values):
        signs = {v > 0 for v in values if math.isinf(v)}
        return math.nan if len(signs) == 2 else (math.inf if True in signs else -math.inf)
    if max(map(abs, values), default=0.0) * len(values) >= _HUGE:
        return math.fsum(v * _SCALE for v in values) * _UNSCALE
    return math.fsum(values)


class _PyGaugeMerger:
    """Merges gauges: ``function`` over the latest value of every live input of a group.

    An input is live from its first point until its staleness marker or until it has been
    silent for ``idle_timeout``; inputs need not report in every window, so a sum over
    slow-reporting inputs does not flap. ``LAST`` is the value with the greatest timestamp
    (ties: the one received last). Points older than the input's latest are refused, as is
    NaN other than the staleness marker.

    ``flush(now_ms)`` emits, stamped ``now_ms``, every group that received a point (or lost
    an input to a staleness marker) since the last flush; a group left with no live input is
    forgotten and, if it was ever emitted, emits one staleness marker.

    ``group_id`` and ``observe_many`` work as for ``CumulativeMerger`` (ids are not to be
    kept across a ``flush`` or ``close``). Not thread-safe: one owner calls it.
    """

    def __init__(self, *, function: GaugeFunction = GaugeFunction.SUM,
                 config: MergeConfig | None = None) -> None:
        self.function = function
        self._idle_ms = (config or MergeConfig()).idle_timeout_ms
        self._groups: dict[Hashable, _Group] = {}
        self._seq = 0
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
        """Record ``series``' latest value in ``group``; False when refused."""
        state = self._groups.get(group)
        if is_stale_marker(value):
            if state is not None and state.inputs.pop(series, None) is not None:
                state.dirty = True
                return True
            return False
        if math.isnan(value):
            return False
        if state is None:
            state = self._groups[group] = _Group()
        prev = state.inputs.get(series)
        if prev is not None and timestamp_ms < prev.ts:
            return False
        self._seq += 1
        state.inputs[series] = _Latest(value, timestamp_ms, self._seq)
        state.dirty = True
        return True

    def flush(self, now_ms: int) -> list[MergedPoint]:
        """The merged value of groups that changed since the last flush."""
        out: list[MergedPoint] = []
        horizon = now_ms - self._idle_ms
        for group, state in list(self._groups.items()):
            idle = [s for s, i in state.inputs.items() if i.ts < horizon]
            for s in idle:
                del state.inputs[s]
            if not state.inputs:
                del self._groups[group]
                if state.emitted:
                    out.append(MergedPoint(group, now_ms, STALE_NAN))
            elif state.dirty or idle:
                out.append(MergedPoint(group, now_ms, self._combine(state)))
                state.emitted = True
            state.dirty = False
        self._ids.retain(self._groups)
        return out

    def close(self, now_ms: int) -> list[MergedPoint]:
        """Flush, then end every group with a staleness marker and forget all state."""
        out = self.flush(now_ms)
        out.extend(MergedPoint(g, now_ms, STALE_NAN) for g in self._groups)
        self._groups.clear()
        self._ids.retain(self._groups)
        return out

    def __len__(self) -> int:
        """How many live input series the merger holds state for."""
        return sum(len(g.inputs) for g in self._groups.values())

    def _combine(self, state: _Group) -> float:
        latest = state.inputs.values()
        match self.function:
            case GaugeFunction.SUM:
                return _exact_sum([i.value for i in latest])
            case GaugeFunction.AVG:
                return _exact_sum([i.value for i in latest]) / len(state.inputs)
            case GaugeFunction.MIN:
                return min(i.value for i in latest)
            case GaugeFunction.MAX:
                return max(i.value for i in latest)
            case GaugeFunction.LAST:
                return max(latest, key=lambda i: (i.ts, i.seq)).value


if MERGE_STATE == "c":

    class _CGaugeMerger(_GaugeCore):
        """``_PyGaugeMerger``'s contract, state in C hash tables (``_mergecore.c``).

        ``group_id``, ``observe_many``, ``flush``, ``close`` and ``len()`` are the C
        methods; ``observe`` maps its series to a uint64 key first. The one difference: a
        MIN or MAX over tied ``0.0`` and ``-0.0`` is ``-0.0`` (MIN) or ``0.0`` (MAX) here,
        whatever the order, where the reference returns the first of them.
        """

        def __init__(self, *, function: GaugeFunction = GaugeFunction.SUM,
                     config: MergeConfig | None = None) -> None:
            super().__init__((config or MergeConfig()).idle_timeout_ms, MergedPoint,
                             function.value)
            self._function = function
            self._keys = _SeriesKeys()

        @property
        def function(self) -> GaugeFunction:
            return self._function

        @function.setter
        def function(self, function: GaugeFunction) -> None:
            self._set_function(function.value)
            self._function = function

        def observe(self, group: Hashable, series: Hashable, timestamp_ms: int,
                    value: float) -> bool:
            """Record ``series``' latest value in ``group``; False when refused."""
            return self._observe_one(group, self._keys(series), timestamp_ms, value)


# Type checkers see the reference (the contract); at run time the C-backed class when built.
if TYPE_CHECKING:
    GaugeMerger = _PyGaugeMerger
elif MERGE_STATE == "c":
    GaugeMerger = _CGaugeMerger
else:
    GaugeMerger = _PyGaugeMerger
