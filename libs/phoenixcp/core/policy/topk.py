"""Top-K with ``other``: which series of a metric keep their own output series.

One :class:`TopKSet` per (policy, metric, partition). Membership is decided at first sight
(a series takes a free place among the K, else it goes to ``other``) and revised only when a
ranking window ends: a challenger replaces the weakest kept series only when it outweighs it
by the hysteresis fraction, so the kept set does not churn. Weights are accumulated per
window in a bounded table (Space-Saving's idea: when the table is full, the lightest entries
are evicted and a newcomer inherits the evicted floor as its error bound), so memory stays
O(capacity) under a series bomb.

Moves and totals (ADR 0008): a series demoted to ``other`` is *handed over* — the ``other``
merger follows it from its last value, so only its later increases count; a promoted series'
next point still feeds ``other`` and its own raw series starts there (``rate()`` ignores a
series' first point). Either way ``sum(rate())`` over the metric stays exact. A demoted series
is never promoted again (its raw series would resume with increases ``other`` already
counted); it stays in ``other`` until it goes idle. Pure and single-threaded.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

from phoenixcp.core.policy.model import TopK, TopKRanking

__all__ = ["TopKSet"]


@dataclass(slots=True)
class TopKSet:
    """The kept set and the current window's weights of one top-K scope."""

    action: TopK
    cumulative: bool
    capacity: int = 0
    kept: dict[Hashable, None] = field(default_factory=dict)
    weights: dict[Hashable, float] = field(default_factory=dict)
    last: dict[Hashable, float] = field(default_factory=dict)
    floor: float = 0.0
    retired: dict[Hashable, None] = field(default_factory=dict)
    """Series demoted once: never promoted again (their raw series would resume with the
    increases ``other`` already counted)."""

    def __post_init__(self) -> None:
        self.capacity = max(4 * self.action.k, 1024)

    def place(self, identity: Hashable) -> bool:
        """Whether ``identity`` is (now) kept; a new series takes a free place if any."""
        if identity in self.kept:
            return True
        if len(self.kept) < self.action.k:
            self.kept[identity] = None
            return True
        return False

    def weigh(self, identity: Hashable, series: Hashable, value: float) -> None:
        """Add one point of input ``series`` (of output ``identity``) to the ranking."""
        if math.isnan(value):
            return
        ranking = self.action.ranking
        if ranking is TopKRanking.AUTO:
            ranking = TopKRanking.RATE if self.cumulative else TopKRanking.VALUE
        if ranking is TopKRanking.POINTS:
            weight = 1.0
        elif ranking is TopKRanking.VALUE:
            self.weights[identity] = abs(value)
            self._bound()
            return
        else:
            previous = self.last.get(series)
            self.last[series] = value
            weight = 0.0 if previous is None else (
                value - previous if value >= previous else value)
        self.weights[identity] = self.weights.get(identity, self.floor) + weight
        self._bound()

    def _bound(self) -> None:
        if len(self.weights) <= 2 * self.capacity:
            return
        ranked = sorted(self.weights.items(), key=lambda kv: kv[1], reverse=True)
        keep = dict(ranked[: self.capacity])
        for identity in self.kept:  # kept series stay ranked
            if identity not in keep and identity in self.weights:
                keep[identity] = self.weights[identity]
        self.floor = ranked[self.capacity][1]
        self.weights = keep
        if len(self.last) > 4 * self.capacity:
            self.last.clear()

    def rerank(self) -> tuple[list[Hashable], list[Hashable]]:
        """End a ranking window: ``(promoted, demoted)`` identities, then fresh weights."""
        w = self.weights
        challengers = sorted((i for i in w if i not in self.kept and i not in self.retired),
                             key=lambda i: w[i], reverse=True)
        incumbents = sorted(self.kept, key=lambda i: w.get(i, 0.0))
        promoted: list[Hashable] = []
        demoted: list[Hashable] = []
        for challenger, incumbent in zip(challengers, incumbents, strict=False):
            if w[challenger] <= w.get(incumbent, 0.0) * (1.0 + self.action.hysteresis):
                break
            if w[challenger] <= 0.0:
                break
            promoted.append(challenger)
            demoted.append(incumbent)
        for incumbent in demoted:
            del self.kept[incumbent]
            self.retired[incumbent] = None
        while len(self.retired) > self.capacity:
            del self.retired[next(iter(self.retired))]
        for challenger in promoted:
            self.kept[challenger] = None
        self.weights = {}
        self.floor = 0.0
        return promoted, demoted
