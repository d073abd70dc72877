"""The model back to protobuf: ``PolicySpec`` to ``Policy``, ``ProfileSpec`` to ``Profile``.

Every field is written explicitly, defaults included, so a stored built-in profile shows what
it does. ``policy_from_proto(policy_to_proto(p)) == p`` for every valid ``p`` except a top-K
``hysteresis`` of exactly 0, which proto3 cannot tell from "unset" (the default, 0.1).
"""

from __future__ import annotations

from datetime import timedelta

from google.protobuf import duration_pb2

from phoenixcp.api.phoenix.v1 import common_pb2, state_pb2
from phoenixcp.core.policy.model import (
    Action,
    Aggregate,
    Cap,
    Classify,
    Drop,
    LabelMatcher,
    MetricSelector,
    PolicySpec,
    ProfileSpec,
    TopK,
)

__all__ = ["policy_to_proto", "profile_to_proto"]

# The model's enums share the proto enums' numbers.
_OP = common_pb2.MatchOperator.ValueType
_KIND = common_pb2.MetricType.ValueType
_CLASS = common_pb2.PriorityClass.ValueType
_GAUGE = state_pb2.GaugeFunction.ValueType


def _duration(value: timedelta) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(value)
    return out


def _matchers(matchers: tuple[LabelMatcher, ...]) -> list[common_pb2.LabelMatcher]:
    return [common_pb2.LabelMatcher(name=m.name, operator=_OP(m.op.value),
                                    value=m.value)
            for m in matchers]


def _selector(match: MetricSelector) -> common_pb2.MetricSelector:
    out = common_pb2.MetricSelector(matchers=_matchers(match.matchers),
                                    metric_type=_KIND(match.kind.value))
    if match.metric_name:
        out.metric_name = match.metric_name
    elif match.metric_name_regex:
        out.metric_name_regex = match.metric_name_regex
    return out


def _set_action(out: state_pb2.Policy, action: Action) -> None:
    match action:
        case Drop():
            out.drop.SetInParent()
        case Aggregate():
            out.aggregate.by.extend(action.by)
            out.aggregate.without.extend(action.without)
            out.aggregate.gauge_function = _GAUGE(action.gauge_function.value)
            out.aggregate.flush_interval.CopyFrom(_duration(action.flush_interval))
        case Cap():
            out.cap.max_series = action.max_series
            out.cap.scope = state_pb2.CapScope.ValueType(action.scope.value)
            out.cap.idle_timeout.CopyFrom(_duration(action.idle_timeout))
            out.cap.gauge_function = _GAUGE(action.gauge_function.value)
        case TopK():
            top = out.top_k
            top.k = action.k
            top.ranking = state_pb2.TopKRanking.ValueType(action.ranking.value)
            top.ranking_window.CopyFrom(_duration(action.ranking_window))
            top.partition_by.extend(action.partition_by)
            top.other_label = action.other_label
            top.hysteresis = action.hysteresis
            top.gauge_function = _GAUGE(action.gauge_function.value)
        case Classify():
            out.classify.SetInParent()
            for rule in action.rules:
                out.classify.rules.add(priority_class=_CLASS(rule.priority_class),
                                       matchers=_matchers(rule.matchers))
            out.classify.default_class = _CLASS(action.default_class)
            for rollup in action.rollups:
                out.classify.rollups.add(
                    priority_class=_CLASS(rollup.priority_class),
                    others_label=rollup.others_label, without=rollup.without,
                    gauge_function=_GAUGE(rollup.gauge_function.value),
                )


def policy_to_proto(spec: PolicySpec) -> state_pb2.Policy:
    """``spec`` as a ``Policy`` message (server-set fields left unset)."""
    out = state_pb2.Policy(
        id=spec.id, tenant=spec.tenant, description=spec.description,
        match=_selector(spec.match), mode=state_pb2.PolicyMode.ValueType(spec.mode.value),
        order=spec.order, author=spec.author, reason=spec.reason,
    )
    if spec.expire_time is not None:
        out.expire_time.FromDatetime(spec.expire_time)
    _set_action(out, spec.action)
    return out


def profile_to_proto(spec: ProfileSpec) -> state_pb2.Profile:
    """``spec`` as a ``Profile`` message (server-set fields left unset)."""
    return state_pb2.Profile(name=spec.name, description=spec.description,
                             policies=[policy_to_proto(p) for p in spec.policies],
                             exporter=spec.exporter)
