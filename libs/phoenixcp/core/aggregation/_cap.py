"""Series cap with overflow: which series keep their own output series and which merge."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta

__all__ = ["CapConfig", "SeriesCap"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CapConfig:
    """At most ``max_series`` own series per scope (a metric, or a tenant); a series that
    receives no point for ``idle_timeout`` frees its place."""

    max_series: int
    idle_timeout: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        if self.max_series < 1:
            raise ValueError(f"max_series must be at least 1, got {self.max_series}")
        if self.idle_timeout <= timedelta(0):
            raise ValueError(f"idle_timeout must be positive, got {self.idle_timeout}")


@dataclass(slots=True)
class _Scope:
    admitted: dict[Hashable, int] = field(default_factory=dict)
    overflowed: dict[Hashable, int] = field(default_factory=dict)


class SeriesCap:
    """Routes each series to its own output series or to its scope's overflow series.

    First come, first served (as the OpenTelemetry SDK): the first ``max_series`` series of
    a scope are admitted; later ones overflow. Both decisions are sticky while the series
    keeps receiving points: an admitted series is never demoted, and an overflowed series
    stays in overflow even when a place frees up, because moving it would add its whole
    cumulative value to a new output series while the overflow total still holds it (the
    metric's sum would count it twice). A series silent for ``idle_timeout`` (measured on
    the ``now_ms`` the caller passes) is forgotten by :meth:`expire` and routed afresh.

    The caller sends an overflowed series' points to a merger (see
    :class:`~phoenixcp.core.aggregation.CumulativeMerger`) under the overflow group, so the
    metric's total stays exact. Keeping the *important* series is top-K's job, not this one.
    """

    def __init__(self, *, config: CapConfig) -> None:
        self.config = config
        self._idle_ms = int(config.idle_timeout / timedelta(milliseconds=1))
        self._scopes: dict[Hashable, _Scope] = {}

    def admit(self, scope: Hashable, series: Hashable, now_ms: int) -> bool:
        """True when ``series`` keeps its own output series, False when it overflows."""
        state = self._scopes.get(scope)
        if state is None:
            state = self._scopes[scope] = _Scope()
        if series in state.admitted:
            state.admitted[series] = now_ms
            return True
        if series not in state.overflowed and len(state.admitted) < self.config.max_series:
            state.admitted[series] = now_ms
            return True
        state.overflowed[series] = now_ms
        return False

    def touch(self, scope: Hashable, series: Iterable[Hashable], now_ms: int) -> None:
        """Mark ``series`` (already admitted or overflowed) as alive at ``now_ms``, keeping
        their decisions; series the cap does not hold are ignored."""
        state = self._scopes.get(scope)
        if state is None:
            return
        admitted, overflowed = state.admitted, state.overflowed
        for s in series:
            if s in admitted:
                admitted[s] = now_ms
            elif s in overflowed:
                overflowed[s] = now_ms

    def expire(self, now_ms: int) -> int:
        """Forget series silent for ``idle_timeout``; returns how many were forgotten."""
        horizon = now_ms - self._idle_ms
        forgotten = 0
        for scope, state in list(self._scopes.items()):
            for table in (state.admitted, state.overflowed):
                idle = [s for s, seen in table.items() if seen < horizon]
                for s in idle:
                    del table[s]
                forgotten += len(idle)
            if not state.admitted and not state.overflowed:
                del self._scopes[scope]
        return forgotten

    def admitted_count(self, scope: Hashable) -> int:
        """How many series of ``scope`` hold an own place now."""
        state = self._scopes.get(scope)
        return 0 if state is None else len(state.admitted)

    def overflowed_count(self, scope: Hashable) -> int:
        """How many series of ``scope`` are routed to its overflow series now."""
        state = self._scopes.get(scope)
        return 0 if state is None else len(state.overflowed)
