"""Policies and profiles as pure values: what the pipeline applies, independent of protobuf.

These mirror ``Policy``, ``Profile`` and ``MetricSelector`` in ``protos/phoenix/v1`` (the
adapter in :mod:`phoenixcp.platform.policy` converts and validates); the engine in
:mod:`phoenixcp.core.policy.engine` compiles them. Every value is frozen and hashable, so a
policy's identity across profile switches is its value (see :attr:`PolicySpec.fingerprint`).

Construction validates: a bad regex, a cap of 0, ``by`` and ``without`` together or an invalid
label name raise :class:`PolicyInvalid` naming the field and what is allowed.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from phoenixcp.core.aggregation import GaugeFunction
from phoenixcp.core.series import METRIC_NAME_LABEL, label_name_problem

__all__ = [
    "Action",
    "Aggregate",
    "Cap",
    "CapScope",
    "Classify",
    "Drop",
    "LabelMatcher",
    "MatchOp",
    "MetricKind",
    "MetricSelector",
    "PolicyInvalid",
    "PolicyMode",
    "PolicySpec",
    "PriorityClass",
    "PriorityRollup",
    "PriorityRule",
    "ProfileSpec",
    "TopK",
    "TopKRanking",
]

_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}\Z")
ID_PATTERN = "^[a-z0-9][a-z0-9._-]{0,62}$"
_UNREMOVABLE = frozenset({METRIC_NAME_LABEL, "le", "quantile"})


class PolicyInvalid(ValueError):
    """A policy or profile that cannot be applied; ``field`` is its dotted path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class MatchOp(enum.Enum):
    """``=``, ``!=``, ``=~``, ``!~`` as in a PromQL selector (``MatchOperator``)."""

    EQUAL = 1
    NOT_EQUAL = 2
    REGEX = 3
    NOT_REGEX = 4


class MetricKind(enum.Enum):
    """The metric type a selector may require (``MetricType`` in common.proto)."""

    ANY = 0
    UNKNOWN = 1
    COUNTER = 2
    GAUGE = 3
    HISTOGRAM = 4
    EXPONENTIAL_HISTOGRAM = 5
    SUMMARY = 6


class PolicyMode(enum.Enum):
    ENFORCE = 1
    DRY_RUN = 2


class PriorityClass(enum.IntEnum):
    """Lower value, higher priority. CRITICAL series are never changed by any policy."""

    CRITICAL = 1
    HIGH = 2
    MEDIUM = 3
    LOW = 4


class CapScope(enum.Enum):
    PER_METRIC = 1
    PER_TENANT = 2


class TopKRanking(enum.Enum):
    AUTO = 1
    RATE = 2
    VALUE = 3
    POINTS = 4


def _regex(path: str, pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise PolicyInvalid(path, f"invalid regular expression {pattern!r}: {exc}") from None


def _label_names(path: str, names: tuple[str, ...]) -> None:
    for i, name in enumerate(names):
        problem = label_name_problem(name)
        if problem is not None:
            raise PolicyInvalid(f"{path}[{i}]", problem)


@dataclass(frozen=True, slots=True)
class LabelMatcher:
    """One label condition; an absent label has the empty value (PromQL)."""

    name: str
    op: MatchOp
    value: str
    _re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op in (MatchOp.REGEX, MatchOp.NOT_REGEX):
            object.__setattr__(self, "_re", _regex("value", self.value))

    def matches(self, value: str) -> bool:
        """Whether a series whose label has ``value`` ("" when absent) satisfies this."""
        match self.op:
            case MatchOp.EQUAL:
                return value == self.value
            case MatchOp.NOT_EQUAL:
                return value != self.value
            case MatchOp.REGEX:
                assert self._re is not None
                return self._re.fullmatch(value) is not None
            case MatchOp.NOT_REGEX:
                assert self._re is not None
                return self._re.fullmatch(value) is None


@dataclass(frozen=True, slots=True)
class MetricSelector:
    """Which series a policy applies to; every given condition must hold, empty matches all."""

    metric_name: str = ""
    metric_name_regex: str = ""
    matchers: tuple[LabelMatcher, ...] = ()
    kind: MetricKind = MetricKind.ANY
    _re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.metric_name and self.metric_name_regex:
            raise PolicyInvalid("match", "give metric_name or metric_name_regex, not both")
        if self.metric_name_regex:
            object.__setattr__(self, "_re", _regex("match.metric_name_regex",
                                                   self.metric_name_regex))
        for i, matcher in enumerate(self.matchers):
            problem = label_name_problem(matcher.name)
            if problem is not None:
                raise PolicyInvalid(f"match.matchers[{i}].name", problem)

    def matches_name(self, name: str) -> bool:
        if self.metric_name:
            return name == self.metric_name
        if self._re is not None:
            return self._re.fullmatch(name) is not None
        return True

    def matches_labels(self, labels: dict[str, str]) -> bool:
        """Whether the label conditions hold (name and type are checked apart)."""
        return all(m.matches(labels.get(m.name, "")) for m in self.matchers)

    def matches(self, name: str, labels: dict[str, str], kind: MetricKind) -> bool:
        """Whether the series ``labels`` (``__name__`` included) of metric ``name`` matches."""
        if self.kind is not MetricKind.ANY and kind is not self.kind:
            return False
        if not self.matches_name(name):
            return False
        return all(m.matches(labels.get(m.name, "")) for m in self.matchers)


@dataclass(frozen=True, slots=True)
class Drop:
    """Drop matching series (counted per policy)."""


@dataclass(frozen=True, slots=True)
class Aggregate:
    """Merge series that become identical once ``without`` labels go (or only ``by`` stay)."""

    by: tuple[str, ...] = ()
    without: tuple[str, ...] = ()
    gauge_function: GaugeFunction = GaugeFunction.SUM
    flush_interval: timedelta = timedelta(seconds=15)

    def __post_init__(self) -> None:
        if self.by and self.without:
            raise PolicyInvalid("aggregate", "give `by` or `without`, not both")
        if not self.by and not self.without:
            raise PolicyInvalid("aggregate", "give the labels to keep (`by`) or to remove "
                                             "(`without`)")
        _label_names("aggregate.by", self.by)
        _label_names("aggregate.without", self.without)
        kept = _UNREMOVABLE.intersection(self.without)
        if kept:
            raise PolicyInvalid("aggregate.without",
                                f"{sorted(kept)} cannot be removed: they identify the metric, "
                                "its histogram buckets or its quantiles")
        if self.flush_interval < timedelta(seconds=1):
            raise PolicyInvalid("aggregate.flush_interval",
                                f"must be at least 1s, got {self.flush_interval}")


@dataclass(frozen=True, slots=True)
class Cap:
    """At most ``max_series`` own series per metric (or tenant) on this replica; the rest
    merge into one overflow series per metric."""

    max_series: int
    scope: CapScope = CapScope.PER_METRIC
    idle_timeout: timedelta = timedelta(minutes=10)
    gauge_function: GaugeFunction = GaugeFunction.SUM

    def __post_init__(self) -> None:
        if self.max_series < 1:
            raise PolicyInvalid("cap.max_series",
                                f"must be at least 1, got {self.max_series} (to remove a "
                                "metric, use a drop policy)")
        if self.idle_timeout <= timedelta(0):
            raise PolicyInvalid("cap.idle_timeout", "must be positive")


@dataclass(frozen=True, slots=True)
class TopK:
    """Keep the K heaviest series per metric (per ``partition_by`` group); merge the rest
    into an ``other`` series."""

    k: int
    ranking: TopKRanking = TopKRanking.AUTO
    ranking_window: timedelta = timedelta(minutes=5)
    partition_by: tuple[str, ...] = ()
    other_label: str = "phoenix_top_k"
    hysteresis: float = 0.1
    gauge_function: GaugeFunction = GaugeFunction.SUM

    def __post_init__(self) -> None:
        if self.k < 1:
            raise PolicyInvalid("top_k.k", f"must be at least 1, got {self.k}")
        _label_names("top_k.partition_by", self.partition_by)
        problem = label_name_problem(self.other_label)
        if problem is not None:
            raise PolicyInvalid("top_k.other_label", problem)
        if not 0.0 <= self.hysteresis < 10.0:
            raise PolicyInvalid("top_k.hysteresis",
                                f"must be in [0, 10), got {self.hysteresis}")
        if self.ranking_window < timedelta(seconds=1):
            raise PolicyInvalid("top_k.ranking_window", "must be at least 1s")


@dataclass(frozen=True, slots=True)
class PriorityRule:
    priority_class: PriorityClass
    matchers: tuple[LabelMatcher, ...]


@dataclass(frozen=True, slots=True)
class PriorityRollup:
    priority_class: PriorityClass
    others_label: str
    without: tuple[str, ...] = ()
    gauge_function: GaugeFunction = GaugeFunction.SUM

    def __post_init__(self) -> None:
        if self.priority_class is PriorityClass.CRITICAL:
            raise PolicyInvalid("classify.rollups.priority_class",
                                "CRITICAL series are never rolled up")
        problem = label_name_problem(self.others_label)
        if problem is not None:
            raise PolicyInvalid("classify.rollups.others_label", problem)
        _label_names("classify.rollups.without", self.without)


@dataclass(frozen=True, slots=True)
class Classify:
    """Priority classes by label rules (first match wins), and optional class roll-ups."""

    rules: tuple[PriorityRule, ...] = ()
    default_class: PriorityClass = PriorityClass.MEDIUM
    rollups: tuple[PriorityRollup, ...] = ()

    def __post_init__(self) -> None:
        seen = [r.priority_class for r in self.rollups]
        if len(seen) != len(set(seen)):
            raise PolicyInvalid("classify.rollups", "at most one roll-up per class")

    def classify(self, labels: dict[str, str]) -> PriorityClass:
        for rule in self.rules:
            if all(m.matches(labels.get(m.name, "")) for m in rule.matchers):
                return rule.priority_class
        return self.default_class


Action = Drop | Aggregate | Cap | TopK | Classify

ACTION_ORDER: dict[type, int] = {Classify: 0, Drop: 1, Aggregate: 2, TopK: 3, Cap: 4}
"""Action kinds run in this order, so caps count merged series (``Policy.order`` in
state.proto)."""


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """One policy: which series, what action, in which mode, until when, and who and why."""

    id: str
    action: Action
    match: MetricSelector = MetricSelector()
    mode: PolicyMode = PolicyMode.ENFORCE
    order: int = 0
    tenant: str = ""
    expire_time: datetime | None = None
    author: str = ""
    reason: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if _ID.match(self.id) is None:
            raise PolicyInvalid("id", f"{self.id!r} does not match {ID_PATTERN}")

    @property
    def enforced(self) -> bool:
        return self.mode is PolicyMode.ENFORCE

    def expired(self, now: datetime) -> bool:
        return self.expire_time is not None and now >= self.expire_time

    @property
    def fingerprint(self) -> tuple[object, ...]:
        """What decides the output: two policies with equal fingerprints merge into the same
        groups, so merge state survives a profile switch that keeps the policy."""
        return (self.id, self.action, self.match, self.mode)

    def sort_key(self) -> tuple[int, int, str]:
        return (ACTION_ORDER[type(self.action)], self.order, self.id)


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    """A named set of policies that can be made active per tenant."""

    name: str
    policies: tuple[PolicySpec, ...] = ()
    description: str = ""
    exporter: str = ""

    def __post_init__(self) -> None:
        if _ID.match(self.name) is None:
            raise PolicyInvalid("name", f"{self.name!r} does not match {ID_PATTERN}")
        ids = [p.id for p in self.policies]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise PolicyInvalid("policies", f"policy ids must be unique, repeated: {dupes}")
