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
    ranked: dict[int, dict[Hashable, None]] = field(default_factory=dict)
    """Admitted series of a class below the best (in admission order), by class: whom a
    newcomer of a better class may push out."""


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

    Priority classes (``priority``, lower is more important; common.proto's PriorityClass):
    when the scope is full, a newcomer of a better class than some admitted series pushes the
    most recently admitted series of the worst such class into overflow and takes its place
    ("lower classes go first"). The caller learns of it from :meth:`take_evicted` and must
    hand the evicted series over to overflow from its last value (its next point seeds the
    overflow total rather than adding to it), so totals stay exact.
    """

    def __init__(self, *, config: CapConfig) -> None:
        self.config = config
        self._idle_ms = int(config.idle_timeout / timedelta(milliseconds=1))
        self._scopes: dict[Hashable, _Scope] = {}
        self._evicted: list[tuple[Hashable, Hashable]] = []

    def admit(self, scope: Hashable, series: Hashable, now_ms: int,
              priority: int | None = None) -> bool:
        """True when ``series`` keeps its own output series, False when it overflows.
        ``priority`` None: no classification is in play (first come, first served)."""
        state = self._scopes.get(scope)
        if state is None:
            state = self._scopes[scope] = _Scope()
        if series in state.admitted:
            state.admitted[series] = now_ms
            return True
        if series in state.overflowed:
            state.overflowed[series] = now_ms
            return False
        if len(state.admitted) >= self.config.max_series and (
                priority is None or not self._evict(scope, state, priority, now_ms)):
            state.overflowed[series] = now_ms
            return False
        state.admitted[series] = now_ms
        if priority is not None and priority > 1:  # the best class is never pushed out
            state.ranked.setdefault(priority, {})[series] = None
        return True

    def _evict(self, scope: Hashable, state: _Scope, priority: int, now_ms: int) -> bool:
        """Push the latest admitted series of the worst class below ``priority`` into
        overflow; False when there is none."""
        for cls in sorted((c for c in state.ranked if c > priority), reverse=True):
            members = state.ranked[cls]
            while members:  # members that went idle are dropped here, lazily
                victim, _ = members.popitem()
                if victim in state.admitted:
                    break
            else:
                continue
            break
        else:
            return False
        del state.admitted[victim]
        state.overflowed[victim] = now_ms
        self._evicted.append((scope, victim))
        return True

    def take_evicted(self) -> list[tuple[Hashable, Hashable]]:
        """``(scope, series)`` pushed into overflow by better-class newcomers since the last
        call (the caller re-routes them)."""
        out, self._evicted = self._evicted, []
        return out

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
            if sum(map(len, state.ranked.values())) > 2 * len(state.admitted) + 64:
                state.ranked = {c: {s: None for s in m if s in state.admitted}
                                for c, m in state.ranked.items()}
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
