"""What one pipeline replica observed of one tenant in one reporting window.

The policy engine (:mod:`phoenixcp.core.policy.engine`) fills these while it works and hands
them out when a window closes; the window reporter (:mod:`phoenixcp.platform.telemetry`)
turns them into sketches and ``WindowReport`` messages. Plain values: no sketches here, so
the engine's per-batch work stays on arrays and the per-window work is proportional to the
number of distinct series, not of points.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np
import numpy.typing as npt

from phoenixcp.core.batch import LabelSet
from phoenixcp.core.policy.model import MetricKind, PriorityClass

__all__ = ["MetricSnapshot", "PointTally", "PolicyTally", "SeriesColumns", "SeriesSeen",
           "TenantSnapshot"]


@dataclass(slots=True)
class PointTally:
    """Point counts (``PointCounts`` in telemetry.proto). ``merged`` counts points folded
    into an aggregate or top-K ``other`` group, ``overflowed`` those folded into a cap's
    overflow series, ``emitted`` the points the merged groups produced."""

    received: int = 0
    accepted: int = 0
    dropped: int = 0
    merged: int = 0
    overflowed: int = 0
    emitted: int = 0

    def add(self, other: PointTally) -> None:
        self.received += other.received
        self.accepted += other.accepted
        self.dropped += other.dropped
        self.merged += other.merged
        self.overflowed += other.overflowed
        self.emitted += other.emitted


@dataclass(slots=True)
class PolicyTally:
    """One policy's effect on one metric in the window (dry-run policies too)."""

    policy_id: str
    dry_run: bool
    matched_points: int = 0
    matched_series: int = 0
    changed_points: int = 0
    output_series: int = 0


@dataclass(frozen=True, slots=True)
class SeriesSeen:
    """One distinct input series of the window: its key, labels (``__name__`` included,
    sorted by name), how many points it sent, its last value and its priority class."""

    key: int
    labels: LabelSet
    points: int
    last_value: float
    priority: PriorityClass = PriorityClass.MEDIUM


_PRIORITY = {int(p): p for p in PriorityClass}  # PriorityClass(n) costs a microsecond


class SeriesColumns(Sequence[SeriesSeen]):
    """Series as columns: a read-only sequence of :class:`SeriesSeen` that makes each one
    only when it is read. The window close hands a metric's sample over in this form (no
    object per series); the window report reads the columns.

    ``keys``, ``points``, ``last_values`` and ``priorities`` (``PriorityClass`` values) are
    arrays, ``labels`` a list, all of one length. Immutable by convention.
    """

    __slots__ = ("keys", "labels", "last_values", "points", "priorities")

    def __init__(self, keys: npt.NDArray[np.uint64], labels: Sequence[LabelSet],
                 points: npt.NDArray[np.int64], last_values: npt.NDArray[np.float64],
                 priorities: npt.NDArray[np.int8]) -> None:
        if not len(keys) == len(labels) == len(points) == len(last_values) == len(priorities):
            raise ValueError("series columns differ in length")
        self.keys = keys
        self.labels = labels
        self.points = points
        self.last_values = last_values
        self.priorities = priorities

    @classmethod
    def of(cls, series: Sequence[SeriesSeen]) -> SeriesColumns:
        """The columns of ``series``."""
        if isinstance(series, SeriesColumns):
            return series
        n = len(series)
        return cls(np.fromiter((s.key for s in series), dtype=np.uint64, count=n),
                   [s.labels for s in series],
                   np.fromiter((s.points for s in series), dtype=np.int64, count=n),
                   np.fromiter((s.last_value for s in series), dtype=np.float64, count=n),
                   np.fromiter((s.priority for s in series), dtype=np.int8, count=n))

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, index: int) -> SeriesSeen: ...

    @overload
    def __getitem__(self, index: slice) -> SeriesColumns: ...

    def __getitem__(self, index: int | slice) -> SeriesSeen | SeriesColumns:
        if isinstance(index, slice):
            return SeriesColumns(self.keys[index], self.labels[index], self.points[index],
                                 self.last_values[index], self.priorities[index])
        return SeriesSeen(int(self.keys[index]), self.labels[index], int(self.points[index]),
                          float(self.last_values[index]),
                          _PRIORITY[int(self.priorities[index])])

    def __iter__(self) -> Iterator[SeriesSeen]:
        for key, labels, points, value, priority in zip(
                self.keys.tolist(), self.labels, self.points.tolist(),
                self.last_values.tolist(), self.priorities.tolist(), strict=True):
            yield SeriesSeen(key, labels, points, value, _PRIORITY[priority])

    def __repr__(self) -> str:
        return f"SeriesColumns({list(self)!r})"


@dataclass(frozen=True, slots=True)
class MetricSnapshot:
    """One metric's window: its distinct input series, and per profile (the active one
    and every shadow one) the distinct output series keys it produced or would have.

    ``series`` holds the series with the smallest keys (a bottom-k sample, k = 256 by
    default; every series when there are fewer; from the window close, ascending by key as
    :class:`SeriesColumns`), ``input_keys`` every distinct key and
    ``label_pairs`` every distinct ``(name, value)`` label pair of the window; a snapshot
    built by hand may leave the last two empty, and then ``series`` is taken as complete."""

    name: str
    kind: MetricKind
    series: Sequence[SeriesSeen]
    outputs: dict[str, npt.NDArray[np.uint64]]
    """Profile name → distinct output series keys (uint64), active profile included."""
    counts: PointTally
    policies: tuple[PolicyTally, ...] = ()
    output_points: dict[str, int] = field(default_factory=dict)
    """Profile name → output points it emitted (or would have); absent profiles count 0."""
    input_keys: npt.NDArray[np.uint64] = field(
        default_factory=lambda: np.empty(0, dtype=np.uint64))
    label_pairs: frozenset[tuple[str, str]] = frozenset()

    @property
    def all_keys(self) -> npt.NDArray[np.uint64]:
        """Every distinct input key (from ``series`` when ``input_keys`` was left empty)."""
        if len(self.input_keys) or not self.series:
            return self.input_keys
        return SeriesColumns.of(self.series).keys

    @property
    def all_label_pairs(self) -> frozenset[tuple[str, str]]:
        if self.label_pairs or not self.series:
            return self.label_pairs
        return frozenset().union(*[s.labels for s in self.series])


@dataclass(frozen=True, slots=True)
class TenantSnapshot:
    """One tenant's window on one replica. Times are unix milliseconds."""

    tenant: str
    replica_id: str
    start_ms: int
    end_ms: int
    active_profile: str
    replica_count: int
    metrics: tuple[MetricSnapshot, ...]
    counts: PointTally
    batch_latency_seconds: npt.NDArray[np.float64] = field(
        default_factory=lambda: np.empty(0, dtype=np.float64))
    """Receive → durably queued, one value per batch."""
    rejected_policies: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = ()
    """``(tenant, policy id, ((field, description), ...))`` of policies this replica refuses."""
