"""Decoding the ``action`` oneof of a ``Policy``: one function per action kind, each
recording its violations in a :class:`~._checks.Found` and returning the model action."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from phoenixcp.api.phoenix.v1 import common_pb2, state_pb2
from phoenixcp.core.aggregation import GaugeFunction
from phoenixcp.core.policy.model import (
    Action,
    Aggregate,
    Cap,
    CapScope,
    Classify,
    Drop,
    PriorityClass,
    PriorityRollup,
    PriorityRule,
    TopK,
    TopKRanking,
)
from phoenixcp.core.series import METRIC_NAME_LABEL, label_name_problem
from phoenixcp.platform.policy._checks import (
    SECOND,
    Found,
    check_labels,
    decode_duration,
    decode_gauge,
    decode_matchers,
    decode_priority,
    enum_value,
)

__all__ = ["ACTIONS"]

_UNREMOVABLE = {METRIC_NAME_LABEL: "the metric name", "le": "histogram buckets",
                "quantile": "summary quantiles"}


def _aggregate(found: Found, pb: state_pb2.AggregateAction) -> Action:
    if pb.by and pb.without:
        found.add("aggregate", "give `by` (the labels to keep) or `without` (the labels to "
                               "remove), not both")
    elif not pb.by and not pb.without:
        found.add("aggregate", "give `by` (the labels to keep) or `without` (the labels to "
                               "remove)")
    check_labels(found, "aggregate.by", pb.by)
    for i, name in enumerate(pb.without):
        if name in _UNREMOVABLE:
            found.add(f"aggregate.without[{i}]",
                      f"{name!r} cannot be removed: it identifies {_UNREMOVABLE[name]}")
        else:
            found.check(f"aggregate.without[{i}]", label_name_problem(name))
    gauge = decode_gauge(found, "aggregate.gauge_function", pb.gauge_function)
    flush = decode_duration(found, "aggregate.flush_interval", pb, "flush_interval",
                            timedelta(seconds=15), SECOND)
    return Aggregate(by=tuple(pb.by), without=tuple(pb.without),
                     gauge_function=gauge or GaugeFunction.SUM, flush_interval=flush)


def _cap(found: Found, pb: state_pb2.SeriesCapAction) -> Action:
    if pb.max_series < 1:
        found.add("cap.max_series", "must be at least 1, got 0 (to remove a metric, use a drop "
                                    "policy)")
    scope = enum_value(found, "cap.scope", pb.scope, CapScope, CapScope.PER_METRIC,
                       state_pb2.CapScope, "CAP_SCOPE_", "cap scope")
    idle = decode_duration(found, "cap.idle_timeout", pb, "idle_timeout", timedelta(minutes=10),
                           SECOND)
    gauge = decode_gauge(found, "cap.gauge_function", pb.gauge_function)
    return Cap(max_series=max(pb.max_series, 1), scope=scope or CapScope.PER_METRIC,
               idle_timeout=idle, gauge_function=gauge or GaugeFunction.SUM)


def _top_k(found: Found, pb: state_pb2.TopKAction) -> Action:
    if pb.k < 1:
        found.add("top_k.k", "must be at least 1, got 0 (to remove a metric, use a drop policy)")
    ranking = enum_value(found, "top_k.ranking", pb.ranking, TopKRanking, TopKRanking.AUTO,
                         state_pb2.TopKRanking, "TOP_K_RANKING_", "ranking")
    window = decode_duration(found, "top_k.ranking_window", pb, "ranking_window",
                             timedelta(minutes=5), SECOND)
    check_labels(found, "top_k.partition_by", pb.partition_by)
    other = pb.other_label or "phoenix_top_k"
    found.check("top_k.other_label", label_name_problem(other))
    # proto3 cannot tell 0 from unset: 0 means the documented default.
    hysteresis = pb.hysteresis or 0.1
    if not 0.0 <= hysteresis < 10.0:
        found.add("top_k.hysteresis", f"must be a fraction in [0, 10), e.g. 0.1 for 10%, got "
                                      f"{pb.hysteresis!r}")
    gauge = decode_gauge(found, "top_k.gauge_function", pb.gauge_function)
    return TopK(k=max(pb.k, 1), ranking=ranking or TopKRanking.AUTO, ranking_window=window,
                partition_by=tuple(pb.partition_by), other_label=other,
                hysteresis=hysteresis, gauge_function=gauge or GaugeFunction.SUM)


def _rollup(found: Found, at: str, pb: state_pb2.PriorityRollup) -> PriorityRollup | None:
    cls: PriorityClass | None = None
    if pb.priority_class == common_pb2.PRIORITY_CLASS_UNSPECIFIED:
        # Rolling up "unset" would silently mean MEDIUM, the class most series have.
        found.add(f"{at}.priority_class", "the class to roll up is not set; use HIGH, MEDIUM "
                                          "or LOW")
    else:
        cls = decode_priority(found, f"{at}.priority_class", pb.priority_class)
    if cls is PriorityClass.CRITICAL:
        found.add(f"{at}.priority_class", "CRITICAL series are never rolled up; use HIGH, "
                                          "MEDIUM or LOW")
        cls = None
    if not pb.others_label:
        found.add(f"{at}.others_label", "give the label whose value becomes `others`, e.g. "
                                        "process_executable_name")
    ok = found.check(f"{at}.others_label",
                     label_name_problem(pb.others_label) if pb.others_label else None)
    without = check_labels(found, f"{at}.without", pb.without)
    gauge = decode_gauge(found, f"{at}.gauge_function", pb.gauge_function)
    if cls is None or gauge is None or not pb.others_label or not ok:
        return None
    return PriorityRollup(cls, pb.others_label, without, gauge)


def _classify(found: Found, pb: state_pb2.ClassifyAction) -> Action:
    rules: list[PriorityRule] = []
    for i, rule in enumerate(pb.rules):
        cls = decode_priority(found, f"classify.rules[{i}].priority_class", rule.priority_class)
        matchers = decode_matchers(found, f"classify.rules[{i}].matchers", rule.matchers)
        if cls is not None and matchers is not None:
            rules.append(PriorityRule(cls, matchers))
    default = decode_priority(found, "classify.default_class", pb.default_class)
    rollups: list[PriorityRollup] = []
    seen: dict[PriorityClass, int] = {}
    for i, pb_rollup in enumerate(pb.rollups):
        rollup = _rollup(found, f"classify.rollups[{i}]", pb_rollup)
        if rollup is None:
            continue
        if rollup.priority_class in seen:
            found.add(f"classify.rollups[{i}].priority_class",
                      f"{rollup.priority_class.name} is rolled up by "
                      f"classify.rollups[{seen[rollup.priority_class]}] already; at most one "
                      "roll-up per class")
        else:
            seen[rollup.priority_class] = i
            rollups.append(rollup)
    return Classify(rules=tuple(rules), default_class=default or PriorityClass.MEDIUM,
                    rollups=tuple(rollups))


ACTIONS: Mapping[str, Callable[[Found, Any], Action]] = {
    "drop": lambda found, pb: Drop(),
    "aggregate": _aggregate,
    "cap": _cap,
    "top_k": _top_k,
    "classify": _classify,
}


