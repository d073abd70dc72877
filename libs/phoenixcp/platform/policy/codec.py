"""``Policy`` and ``Profile`` protobufs to the pure model (:mod:`phoenixcp.core.policy.model`)
and back, validating on the way in.

Decoding finds every violation, not only the first: :class:`PolicyRejected` (an
:class:`~phoenixcp.errors.InvalidArgument`) carries them all as :class:`Violation`\\ s, each with
the dotted path of the field (``policies[2].aggregate.without[0]``, relative to the message
decoded, after ``field_prefix``) and what is wrong and what is allowed. ``UNSPECIFIED`` enum
values take the defaults state.proto documents, as do unset durations; an enum number this
build does not know is refused, since applying a policy whose meaning is unknown would change
data nobody asked to change. ``origin`` and ``origin_ref`` are provenance and not decoded.

Pure functions; the API and the etcd watcher use the same ones, so a policy refused by the
API is refused by every replica too.
"""

from __future__ import annotations

from datetime import UTC, datetime

from phoenixcp.api.phoenix.v1 import common_pb2, state_pb2
from phoenixcp.core.policy.model import (
    Action,
    MetricKind,
    MetricSelector,
    PolicyInvalid,
    PolicyMode,
    PolicySpec,
    ProfileSpec,
)
from phoenixcp.core.series import metric_name_problem
from phoenixcp.platform.policy._actions import ACTIONS
from phoenixcp.platform.policy._checks import (
    ID_PATTERN,
    Found,
    PolicyRejected,
    Violation,
    check_regex,
    decode_matchers,
    enum_value,
    id_problem,
    tenant_problem,
)
from phoenixcp.platform.policy._encode import policy_to_proto, profile_to_proto

__all__ = [
    "ID_PATTERN",
    "PolicyRejected",
    "Violation",
    "id_problem",
    "policy_from_proto",
    "policy_to_proto",
    "profile_from_proto",
    "profile_to_proto",
    "tenant_problem",
]


def _selector(found: Found, pb: common_pb2.MetricSelector) -> MetricSelector | None:
    name = regex = ""
    which = pb.WhichOneof("metric")
    if which == "metric_name":
        name = pb.metric_name
        problem = metric_name_problem(name)
        found.check("match.metric_name", problem and
                    f"{problem}; leave match.metric unset to match every metric")
    elif which == "metric_name_regex":
        regex = pb.metric_name_regex
        if not regex:
            found.add("match.metric_name_regex",
                      "the pattern is empty and would match no metric; leave match.metric unset "
                      "to match every metric")
        else:
            check_regex(found, "match.metric_name_regex", regex)
    matchers = decode_matchers(found, "match.matchers", pb.matchers)
    kind = enum_value(found, "match.metric_type", pb.metric_type, MetricKind, MetricKind.ANY,
                      common_pb2.MetricType, "METRIC_TYPE_", "metric type")
    if found.items or matchers is None or kind is None:
        return None
    return MetricSelector(metric_name=name, metric_name_regex=regex, matchers=matchers,
                          kind=kind)


def _expire_time(found: Found, pb: state_pb2.Policy) -> datetime | None:
    if not pb.HasField("expire_time"):
        return None
    try:
        return pb.expire_time.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        found.add("expire_time", "is out of range; give a time between 0001-01-01 and "
                                 "9999-12-31, or leave it unset for no expiry")
        return None


def _policy(found: Found, pb: state_pb2.Policy, *, embedded: bool) -> PolicySpec | None:
    before = len(found.items)
    found.check("id", id_problem(pb.id))
    if not embedded:
        found.check("tenant", tenant_problem(pb.tenant))
    match = _selector(found, pb.match)
    mode = enum_value(found, "mode", pb.mode, PolicyMode, PolicyMode.ENFORCE, state_pb2.PolicyMode,
                      "POLICY_MODE_", "mode")
    expire = _expire_time(found, pb)
    which = pb.WhichOneof("action")
    action: Action | None = None
    if which is None:
        found.add("action", "no action is set; set exactly one of drop, aggregate, cap, top_k "
                            "or classify")
    else:
        try:
            action = ACTIONS[which](found, getattr(pb, which))
        except PolicyInvalid as exc:  # only when a check above missed a rule of the model
            if len(found.items) == before:
                found.add(exc.field, exc.description)
    if len(found.items) > before or action is None or match is None or mode is None:
        return None
    try:
        return PolicySpec(id=pb.id, action=action, match=match, mode=mode, order=pb.order,
                          tenant="" if embedded else pb.tenant, expire_time=expire,
                          author=pb.author, reason=pb.reason, description=pb.description)
    except PolicyInvalid as exc:
        found.add(exc.field, exc.description)
        return None


def policy_from_proto(pb: state_pb2.Policy, *, field_prefix: str = "") -> PolicySpec:
    """The validated model of a tenant's ``Policy`` (its ``tenant`` must be valid too).

    Raises :class:`PolicyRejected` listing every violation; field paths are relative to
    ``pb`` and start with ``field_prefix`` (e.g. ``"policy."`` for ``ApplyPolicyRequest``).
    """
    found = Found(field_prefix)
    spec = _policy(found, pb, embedded=False)
    found.raise_any()
    assert spec is not None
    return spec


def profile_from_proto(pb: state_pb2.Profile, *, field_prefix: str = "") -> ProfileSpec:
    """The validated model of a ``Profile``; its policies' ``tenant`` fields are ignored.

    Raises :class:`PolicyRejected` listing every violation (``policies[2].cap.max_series``).
    """
    found = Found(field_prefix)
    found.check("name", id_problem(pb.name, "profile name"))
    policies: list[PolicySpec] = []
    first_use: dict[str, int] = {}
    for i, policy in enumerate(pb.policies):
        inner = Found(f"{field_prefix}policies[{i}].")
        spec = _policy(inner, policy, embedded=True)
        found.items.extend(inner.items)
        if spec is not None:
            policies.append(spec)
        if policy.id and policy.id in first_use:
            found.add(f"policies[{i}].id", f"{policy.id!r} is the id of "
                      f"policies[{first_use[policy.id]}] too; ids must be unique in a profile")
        else:
            first_use[policy.id] = i
    found.raise_any()
    try:
        return ProfileSpec(name=pb.name, policies=tuple(policies), description=pb.description,
                           exporter=pb.exporter)
    except PolicyInvalid as exc:
        raise PolicyRejected([Violation(field_prefix + exc.field, exc.description)]) from None
