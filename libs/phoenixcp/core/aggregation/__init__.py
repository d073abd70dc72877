"""Merge semantics for series that become one: aggregation (``by``/``without``) and caps.

Pure and synchronous; the pipeline decides *which* series merge (a :class:`LabelReduction`,
a :class:`SeriesCap`) and feeds their points to a merger of the right kind:

================================  ==========================================================
metric type                       merger
================================  ==========================================================
cumulative counter, histogram     :class:`CumulativeMerger` (running total of increases;
``_bucket``/``_sum``/``_count``   monotonic across input resets and churn)
delta counter                     :class:`DeltaMerger` (sum per flush window)
gauge, summary quantile           :class:`GaugeMerger` (sum, avg, min, max, last)
================================  ==========================================================

Every merger has ``observe(group, series, timestamp_ms, value) -> bool`` and
``flush(now_ms) -> list[MergedPoint]``. docs/adr/0007-merge-semantics.md explains why.
:class:`CumulativeMerger` and :class:`GaugeMerger` also take whole batches:
``group_id(group) -> int`` (not to be kept across a ``flush``/``close``) and
``observe_many(gids, series, timestamps_ms, values) -> bool array``; their state lives in C
hash tables (``_mergecore``, docs/adr/0009-merge-state-in-c.md) when the extension is built.
None of these classes is thread-safe: one owner (one replica's policy stage) calls them.
"""

from phoenixcp.core.aggregation._cap import CapConfig, SeriesCap
from phoenixcp.core.aggregation._counters import (
    CumulativeMerger,
    DeltaMerger,
    MergeConfig,
    MergedPoint,
)
from phoenixcp.core.aggregation._gauges import GaugeFunction, GaugeMerger
from phoenixcp.core.aggregation._labels import (
    OVERFLOW_LABEL,
    REPLICA_LABEL,
    LabelReduction,
    overflow_labels,
)

__all__ = [
    "OVERFLOW_LABEL",
    "REPLICA_LABEL",
    "CapConfig",
    "CumulativeMerger",
    "DeltaMerger",
    "GaugeFunction",
    "GaugeMerger",
    "LabelReduction",
    "MergeConfig",
    "MergedPoint",
    "SeriesCap",
    "overflow_labels",
]
