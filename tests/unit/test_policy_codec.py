"""The policy codec: every bad input is refused with the field path and an actionable
message; valid protos become the model, with state.proto's defaults for unset values."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from phoenixcp.api.phoenix.v1 import common_pb2, state_pb2
from phoenixcp.core.aggregation import GaugeFunction
from phoenixcp.core.policy.model import (
    Aggregate,
    Cap,
    CapScope,
    Classify,
    Drop,
    MatchOp,
    MetricKind,
    PolicyMode,
    PriorityClass,
    TopK,
    TopKRanking,
)
from phoenixcp.core.policy.profiles import BUILTIN_PROFILES
from phoenixcp.errors import InvalidArgument
from phoenixcp.platform.policy.codec import (
    PolicyRejected,
    Violation,
    policy_from_proto,
    policy_to_proto,
    profile_from_proto,
    profile_to_proto,
)

pytestmark = pytest.mark.unit

RE2 = "use RE2 syntax, fully anchored as in PromQL (e.g. api_.* or GET|POST)"
GAUGE, SCOPE = state_pb2.GaugeFunction.ValueType, state_pb2.CapScope.ValueType
RANKING = state_pb2.TopKRanking.ValueType
ID_RULE = ("use 1 to 63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or "
           "digit (^[a-z0-9][a-z0-9._-]{0,62}$)")


def policy(**fields: object) -> state_pb2.Policy:
    base: dict[str, object] = {"id": "p1", "tenant": "acme"}
    base.update(fields)
    if not any(k in base for k in ("drop", "aggregate", "cap", "top_k", "classify", "none")):
        base["drop"] = state_pb2.DropAction()
    base.pop("none", None)
    return state_pb2.Policy(**base)  # type: ignore[arg-type]


def matcher(name: str = "job", op: int = common_pb2.MATCH_OPERATOR_EQUAL,
            value: str = "x") -> common_pb2.LabelMatcher:
    return common_pb2.LabelMatcher(name=name, operator=op, value=value)  # type: ignore[arg-type]


def selector(**fields: object) -> common_pb2.MetricSelector:
    return common_pb2.MetricSelector(**fields)  # type: ignore[arg-type]


def with_duration(pb: state_pb2.Policy, path: str, value: timedelta) -> state_pb2.Policy:
    action, name = path.split(".")
    getattr(getattr(pb, action), name).FromTimedelta(value)
    return pb


def rollup(cls: int, label: str = "process_executable_name") -> state_pb2.PriorityRollup:
    return state_pb2.PriorityRollup(priority_class=cls, others_label=label)  # type: ignore[arg-type]


BAD: list[tuple[str, Callable[[], state_pb2.Policy], str, str]] = [
    ("no action", lambda: policy(none=True), "action",
     "no action is set; set exactly one of drop, aggregate, cap, top_k or classify"),
    ("bad id", lambda: policy(id="Drop_Users"), "id",
     f"id 'Drop_Users' is not valid; {ID_RULE}"),
    ("empty id", lambda: policy(id=""), "id", f"id is required; {ID_RULE}"),
    ("bad tenant", lambda: policy(tenant="acme/x"), "tenant",
     "tenant 'acme/x' is not valid; tenant names match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"),
    ("invalid label regex",
     lambda: policy(match=selector(matchers=[matcher("path", common_pb2.MATCH_OPERATOR_REGEX,
                                                     "api/(v1")])),
     "match.matchers[0].value",
     "'api/(v1' is not a valid regular expression (missing ), unterminated subpattern at "
     f"position 4); {RE2}"),
    ("python-only regex",
     lambda: policy(match=selector(matchers=[matcher("path", common_pb2.MATCH_OPERATOR_NOT_REGEX,
                                                     "(?!health).*")])),
     "match.matchers[0].value",
     f"'(?!health).*' uses a lookahead (?!...), which RE2 does not support; {RE2}, without "
     "lookaround, backreferences or atomic groups"),
    ("backreference",
     lambda: policy(match=selector(metric_name_regex=r"(a)\1")), "match.metric_name_regex",
     f"'(a)\\\\1' uses a backreference (\\1), which RE2 does not support; {RE2}, without "
     "lookaround, backreferences or atomic groups"),
    ("invalid metric name regex", lambda: policy(match=selector(metric_name_regex="http_(")),
     "match.metric_name_regex",
     "'http_(' is not a valid regular expression (missing ), unterminated subpattern at "
     f"position 5); {RE2}"),
    ("empty metric name regex", lambda: policy(match=selector(metric_name_regex="")),
     "match.metric_name_regex",
     "the pattern is empty and would match no metric; leave match.metric unset to match every "
     "metric"),
    ("invalid metric name", lambda: policy(match=selector(metric_name="http-requests")),
     "match.metric_name",
     "metric name 'http-requests' does not match ^[a-zA-Z_:][a-zA-Z0-9_:]*$; leave "
     "match.metric unset to match every metric"),
    ("unknown metric type", lambda: policy(match=selector(metric_type=42)), "match.metric_type",
     "unknown metric type 42; use UNKNOWN, COUNTER, GAUGE, HISTOGRAM, EXPONENTIAL_HISTOGRAM or "
     "SUMMARY, or leave it unset for ANY"),
    ("unspecified operator", lambda: policy(match=selector(matchers=[matcher(op=0)])),
     "match.matchers[0].operator",
     "operator is not set; use EQUAL, NOT_EQUAL, REGEX or NOT_REGEX"),
    ("unknown operator", lambda: policy(match=selector(matchers=[matcher(op=9)])),
     "match.matchers[0].operator",
     "unknown operator 9; use EQUAL, NOT_EQUAL, REGEX or NOT_REGEX"),
    ("matcher label name", lambda: policy(match=selector(matchers=[matcher(name="team name")])),
     "match.matchers[0].name", "label name 'team name' does not match ^[a-zA-Z_][a-zA-Z0-9_]*$"),
    ("reserved label name", lambda: policy(match=selector(matchers=[matcher(name="__tenant")])),
     "match.matchers[0].name",
     "label name '__tenant' is reserved: names starting with __ are internal"),
    ("unknown mode", lambda: policy(mode=3), "mode",
     "unknown mode 3; use ENFORCE or DRY_RUN, or leave it unset for ENFORCE"),
    ("by and without", lambda: policy(aggregate=state_pb2.AggregateAction(
        by=["job"], without=["user_id"])), "aggregate",
     "give `by` (the labels to keep) or `without` (the labels to remove), not both"),
    ("neither by nor without", lambda: policy(aggregate=state_pb2.AggregateAction()),
     "aggregate", "give `by` (the labels to keep) or `without` (the labels to remove)"),
    ("bad label in without", lambda: policy(aggregate=state_pb2.AggregateAction(
        without=["user_id", "user-id"])), "aggregate.without[1]",
     "label name 'user-id' does not match ^[a-zA-Z_][a-zA-Z0-9_]*$"),
    ("bad label in by", lambda: policy(aggregate=state_pb2.AggregateAction(by=["9lives"])),
     "aggregate.by[0]", "label name '9lives' does not match ^[a-zA-Z_][a-zA-Z0-9_]*$"),
    ("without le", lambda: policy(aggregate=state_pb2.AggregateAction(without=["le"])),
     "aggregate.without[0]", "'le' cannot be removed: it identifies histogram buckets"),
    ("unknown gauge function", lambda: policy(aggregate=state_pb2.AggregateAction(
        without=["pod"], gauge_function=GAUGE(6))), "aggregate.gauge_function",
     "unknown gauge function 6; use SUM, AVG, MIN, MAX or LAST, or leave it unset for SUM"),
    ("flush interval too small", lambda: with_duration(policy(
        aggregate=state_pb2.AggregateAction(without=["pod"])), "aggregate.flush_interval",
        timedelta(milliseconds=500)), "aggregate.flush_interval",
     "must be at least 1s, got 500ms (leave it unset for 15s)"),
    ("negative flush interval", lambda: with_duration(policy(
        aggregate=state_pb2.AggregateAction(without=["pod"])), "aggregate.flush_interval",
        timedelta(seconds=-5)), "aggregate.flush_interval",
     "must be at least 1s, got -5s (leave it unset for 15s)"),
    ("cap of 0", lambda: policy(cap=state_pb2.SeriesCapAction()), "cap.max_series",
     "must be at least 1, got 0 (to remove a metric, use a drop policy)"),
    ("unknown cap scope",
     lambda: policy(cap=state_pb2.SeriesCapAction(max_series=5, scope=SCOPE(3))),
     "cap.scope",
     "unknown cap scope 3; use PER_METRIC or PER_TENANT, or leave it unset for PER_METRIC"),
    ("idle timeout negative", lambda: with_duration(policy(
        cap=state_pb2.SeriesCapAction(max_series=5)), "cap.idle_timeout", timedelta(minutes=-1)),
     "cap.idle_timeout", "must be at least 1s, got -1m (leave it unset for 10m)"),
    ("k of 0", lambda: policy(top_k=state_pb2.TopKAction()), "top_k.k",
     "must be at least 1, got 0 (to remove a metric, use a drop policy)"),
    ("unknown ranking", lambda: policy(top_k=state_pb2.TopKAction(k=5, ranking=RANKING(5))),
     "top_k.ranking",
     "unknown ranking 5; use AUTO, RATE, VALUE or POINTS, or leave it unset for AUTO"),
    ("ranking window too small", lambda: with_duration(policy(
        top_k=state_pb2.TopKAction(k=5)), "top_k.ranking_window", timedelta(0, 0, 1)),
     "top_k.ranking_window", "must be at least 1s, got 0ms (leave it unset for 5m)"),
    ("bad partition label", lambda: policy(top_k=state_pb2.TopKAction(
        k=5, partition_by=["namespace", "k8s.pod"])), "top_k.partition_by[1]",
     "label name 'k8s.pod' does not match ^[a-zA-Z_][a-zA-Z0-9_]*$"),
    ("bad other label", lambda: policy(top_k=state_pb2.TopKAction(k=5, other_label="other!")),
     "top_k.other_label", "label name 'other!' does not match ^[a-zA-Z_][a-zA-Z0-9_]*$"),
    ("negative hysteresis", lambda: policy(top_k=state_pb2.TopKAction(k=5, hysteresis=-0.5)),
     "top_k.hysteresis", "must be a fraction in [0, 10), e.g. 0.1 for 10%, got -0.5"),
    ("unknown rule class", lambda: policy(classify=state_pb2.ClassifyAction(
        rules=[state_pb2.PriorityRule(priority_class=7, matchers=[matcher()])])),  # type: ignore[arg-type]
     "classify.rules[0].priority_class",
     "unknown priority class 7; use CRITICAL, HIGH, MEDIUM or LOW, or leave it unset for MEDIUM"),
    ("bad rule regex", lambda: policy(classify=state_pb2.ClassifyAction(
        rules=[state_pb2.PriorityRule(priority_class=1, matchers=[  # type: ignore[arg-type]
            matcher(), matcher("exe", common_pb2.MATCH_OPERATOR_REGEX, "*sshd")])])),
     "classify.rules[0].matchers[1].value",
     "'*sshd' is not a valid regular expression (nothing to repeat at position 0); " + RE2),
    ("unknown default class", lambda: policy(classify=state_pb2.ClassifyAction(
        default_class=5)), "classify.default_class",  # type: ignore[arg-type]
     "unknown priority class 5; use CRITICAL, HIGH, MEDIUM or LOW, or leave it unset for MEDIUM"),
    ("critical roll-up", lambda: policy(classify=state_pb2.ClassifyAction(rollups=[rollup(1)])),
     "classify.rollups[0].priority_class",
     "CRITICAL series are never rolled up; use HIGH, MEDIUM or LOW"),
    ("unset roll-up class", lambda: policy(classify=state_pb2.ClassifyAction(
        rollups=[rollup(0)])), "classify.rollups[0].priority_class",
     "the class to roll up is not set; use HIGH, MEDIUM or LOW"),
    ("roll-up without label", lambda: policy(classify=state_pb2.ClassifyAction(
        rollups=[rollup(4, "")])), "classify.rollups[0].others_label",
     "give the label whose value becomes `others`, e.g. process_executable_name"),
    ("two roll-ups of a class", lambda: policy(classify=state_pb2.ClassifyAction(
        rollups=[rollup(4), rollup(3), rollup(4)])), "classify.rollups[2].priority_class",
     "LOW is rolled up by classify.rollups[0] already; at most one roll-up per class"),
    ("expire time out of range", lambda: policy(expire_time={"seconds": 2**40}), "expire_time",
     "is out of range; give a time between 0001-01-01 and 9999-12-31, or leave it unset for "
     "no expiry"),
]


@pytest.mark.parametrize(("build", "field", "message"), [c[1:] for c in BAD],
                         ids=[c[0] for c in BAD])
def test_bad_policy_is_refused_with_field_and_message(
        build: Callable[[], state_pb2.Policy], field: str, message: str) -> None:
    with pytest.raises(PolicyRejected) as caught:
        policy_from_proto(build())
    assert caught.value.violations == (Violation(field, message),)
    assert caught.value.field == field
    assert str(caught.value) == f"{field}: {message}"
    assert isinstance(caught.value, InvalidArgument)


def test_every_violation_is_reported_with_prefix() -> None:
    bad = policy(id="", aggregate=state_pb2.AggregateAction(by=["a b"], without=["le"]))
    with pytest.raises(PolicyRejected) as caught:
        policy_from_proto(bad, field_prefix="policy.")
    assert [v.field for v in caught.value.violations] == [
        "policy.id", "policy.aggregate", "policy.aggregate.by[0]", "policy.aggregate.without[0]"]
    assert str(caught.value).startswith("4 problems: policy.id: id is required;")


def test_profile_paths_name_the_policy_and_duplicate_ids() -> None:
    pb = state_pb2.Profile(name="mine", policies=[
        policy(id="a"), policy(id="b", cap=state_pb2.SeriesCapAction()),
        policy(id="c", aggregate=state_pb2.AggregateAction(without=["user_id", "le"])),
        policy(id="a", tenant="ignored/in/profiles"),
    ])
    with pytest.raises(PolicyRejected) as caught:
        profile_from_proto(pb)
    assert caught.value.violations == (
        Violation("policies[1].cap.max_series",
                  "must be at least 1, got 0 (to remove a metric, use a drop policy)"),
        Violation("policies[2].aggregate.without[1]",
                  "'le' cannot be removed: it identifies histogram buckets"),
        Violation("policies[3].id", "'a' is the id of policies[0] too; ids must be unique in a "
                                    "profile"),
    )


def test_bad_profile_name() -> None:
    with pytest.raises(PolicyRejected) as caught:
        profile_from_proto(state_pb2.Profile(name="My Profile"))
    assert caught.value.violations == (
        Violation("name", f"profile name 'My Profile' is not valid; {ID_RULE}"),)


def test_unspecified_values_take_the_documented_defaults() -> None:
    spec = policy_from_proto(policy(
        match=selector(matchers=[matcher("path", common_pb2.MATCH_OPERATOR_REGEX, "api/.*")]),
        aggregate=state_pb2.AggregateAction(without=["user_id"])))
    assert spec.mode is PolicyMode.ENFORCE and spec.match.kind is MetricKind.ANY
    assert spec.match.matchers[0].op is MatchOp.REGEX
    assert spec.action == Aggregate(without=("user_id",), gauge_function=GaugeFunction.SUM,
                                    flush_interval=timedelta(seconds=15))
    cap = policy_from_proto(policy(cap=state_pb2.SeriesCapAction(max_series=3))).action
    assert cap == Cap(3, CapScope.PER_METRIC, timedelta(minutes=10), GaugeFunction.SUM)
    top = policy_from_proto(policy(top_k=state_pb2.TopKAction(k=7))).action
    assert top == TopK(7, TopKRanking.AUTO, timedelta(minutes=5), (), "phoenix_top_k", 0.1)
    classify = policy_from_proto(policy(classify=state_pb2.ClassifyAction(
        rules=[state_pb2.PriorityRule(matchers=[matcher()])]))).action
    assert isinstance(classify, Classify)
    assert classify.default_class is PriorityClass.MEDIUM
    assert classify.rules[0].priority_class is PriorityClass.MEDIUM
    assert policy_from_proto(policy()).action == Drop()


def test_fields_carry_over() -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    pb = policy(mode=state_pb2.POLICY_MODE_DRY_RUN, order=-3, author="ana", reason="TICKET-1",
                description="d", match=selector(metric_name="http_requests_total",
                                                metric_type=common_pb2.METRIC_TYPE_COUNTER))
    pb.expire_time.FromDatetime(when)
    spec = policy_from_proto(pb)
    assert (spec.tenant, spec.mode, spec.order, spec.author, spec.reason, spec.expire_time) == (
        "acme", PolicyMode.DRY_RUN, -3, "ana", "TICKET-1", when)
    assert spec.match.metric_name == "http_requests_total"
    assert spec.match.kind is MetricKind.COUNTER
    assert policy_from_proto(policy_to_proto(spec)) == spec


def test_profile_ignores_the_tenant_of_its_policies() -> None:
    spec = profile_from_proto(state_pb2.Profile(name="p", policies=[policy(tenant="")]))
    assert spec.policies[0].tenant == ""


@pytest.mark.parametrize("profile", BUILTIN_PROFILES, ids=lambda p: p.name)
def test_builtin_profiles_survive_the_round_trip(profile: object) -> None:
    pb = profile_to_proto(profile)  # type: ignore[arg-type]
    assert profile_from_proto(pb) == profile


def test_package_exports_match_all() -> None:
    import phoenixcp.platform.policy as package

    public = {n for n in vars(package) if not n.startswith("_")} - {
        "codec", "keys", "metrics", "store", "view", "watcher"}
    assert public == set(package.__all__)
