"""Gauge merger: one function (sum, avg, min, max, last) over the inputs' latest values."""

from __future__ import annotations

import enum
import math
from collections.abc import Hashable
from dataclasses import dataclass, field

from phoenixcp.core.aggregation._counters import MergeConfig, MergedPoint
from phoenixcp.core.series import STALE_NAN, is_stale_marker

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


class GaugeMerger:
    """Merges gauges: ``function`` over the latest value of every live input of a group.

    An input is live from its first point until its staleness marker or until it has been
    silent for ``idle_timeout``; inputs need not report in every window, so a sum over
    slow-reporting inputs does not flap. ``LAST`` is the value with the greatest timestamp
    (ties: the one received last). Points older than the input's latest are refused, as is
    NaN other than the staleness marker.

    ``flush(now_ms)`` emits, stamped ``now_ms``, every group that received a point (or lost
    an input to a staleness marker) since the last flush; a group left with no live input is
    forgotten and, if it was ever emitted, emits one staleness marker.
    """

    def __init__(self, *, function: GaugeFunction = GaugeFunction.SUM,
                 config: MergeConfig | None = None) -> None:
        self.function = function
        self._idle_ms = (config or MergeConfig()).idle_timeout_ms
        self._groups: dict[Hashable, _Group] = {}
        self._seq = 0

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
        return out

    def close(self, now_ms: int) -> list[MergedPoint]:
        """Flush, then end every group with a staleness marker and forget all state."""
        out = self.flush(now_ms)
        out.extend(MergedPoint(g, now_ms, STALE_NAN) for g in self._groups)
        self._groups.clear()
        return out

    def _combine(self, state: _Group) -> float:
        latest = state.inputs.values()
        match self.function:
            case GaugeFunction.SUM:
                return math.fsum(i.value for i in latest)
            case GaugeFunction.AVG:
                return math.fsum(i.value for i in latest) / len(state.inputs)
            case GaugeFunction.MIN:
                return min(i.value for i in latest)
            case GaugeFunction.MAX:
                return max(i.value for i in latest)
            case GaugeFunction.LAST:
                return max(latest, key=lambda i: (i.ts, i.seq)).value
