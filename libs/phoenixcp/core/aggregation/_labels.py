"""Which output series an input series merges into: label reduction and the overflow series."""

from __future__ import annotations

from dataclasses import dataclass

from phoenixcp.core.batch import LabelSet
from phoenixcp.core.series import METRIC_NAME_LABEL, label_name_problem

__all__ = ["OVERFLOW_LABEL", "REPLICA_LABEL", "LabelReduction", "overflow_labels"]

OVERFLOW_LABEL = "otel_metric_overflow"
"""Set to ``"true"`` on a cap's overflow series (the OpenTelemetry SDK's convention)."""
REPLICA_LABEL = "phoenix_replica"
"""Names the pipeline replica that produced a merged series, so replicas never overwrite
each other's partial results in the backend (see ADR 0007)."""

_UNREMOVABLE = frozenset({METRIC_NAME_LABEL, "le", "quantile"})


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelReduction:
    """Keep only ``by`` labels, or remove ``without`` labels; exactly one is non-empty.

    The metric name, ``le`` (histogram buckets) and ``quantile`` (summaries) are always kept,
    so buckets of one histogram never merge into each other. Construction raises ValueError
    with a message naming the problem (both or neither given, an invalid label name, an
    attempt to remove ``le``/``quantile``).
    """

    by: tuple[str, ...] = ()
    without: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.by) == bool(self.without):
            raise ValueError("exactly one of `by` and `without` must be non-empty")
        for name in self.by + self.without:
            problem = label_name_problem(name)
            if problem is not None:
                raise ValueError(problem)
        kept = _UNREMOVABLE.intersection(self.without)
        if kept:
            raise ValueError(f"label(s) {sorted(kept)} cannot be removed by `without`")

    @property
    def keep(self) -> frozenset[str]:
        """With ``by``: every label name that stays (``le``, ``quantile`` and the name too)."""
        return _UNREMOVABLE.union(self.by)

    @property
    def drop(self) -> frozenset[str]:
        """With ``without``: the label names removed."""
        return frozenset(self.without)

    def apply(self, labels: LabelSet) -> LabelSet:
        """The output label set of a series: sorted by name, empty values left out."""
        if self.by:
            keep = _UNREMOVABLE.union(self.by)
            out = [(n, v) for n, v in labels if n in keep and v]
        else:
            drop = frozenset(self.without)
            out = [(n, v) for n, v in labels if n not in drop and v]
        return tuple(sorted(out))


def overflow_labels(metric_name: str, replica: str) -> LabelSet:
    """The label set of a metric's overflow series on one replica (sorted by name)."""
    return tuple(sorted(((METRIC_NAME_LABEL, metric_name), (OVERFLOW_LABEL, "true"),
                         (REPLICA_LABEL, replica))))
