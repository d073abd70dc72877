"""The five profiles Phoenix ships: ``full``, ``conservative``, ``balanced``, ``aggressive``
and ``experimental``, from no change at all to top-K only.

They are generic, because Phoenix cannot know a user's labels: every profile but ``full``
starts with the same priority classification (``critical-series``), which marks as CRITICAL
what alerting depends on (``up``, ``ALERTS``, SLO and recording-rule series, and anything the
user labels ``phoenix_priority="critical"``), so no later policy of the profile changes it.
The stronger profiles then merge away labels that identify one request or one user, and cap
each metric ever tighter; caps and top-K fold what they cut into an overflow or ``other``
series, so totals stay exact. docs/profiles.md is the user-facing description.

Pure values; :mod:`phoenixcp.platform.policy.store` writes them to etcd at start-up, create
only, so an operator's change to a built-in profile is never overwritten.
"""

from __future__ import annotations

from phoenixcp.core.policy.model import (
    Aggregate,
    Cap,
    Classify,
    LabelMatcher,
    MatchOp,
    PolicySpec,
    PriorityClass,
    PriorityRollup,
    PriorityRule,
    ProfileSpec,
    TopK,
)

__all__ = [
    "BUILTIN_PROFILES",
    "BUILTIN_PROFILE_NAMES",
    "CRITICAL_METRIC_NAMES",
    "DEFAULT_PROFILE",
    "PER_REQUEST_LABELS",
    "PRIORITY_LABEL",
    "builtin_profile",
]

DEFAULT_PROFILE = "full"
"""What applies when no active-profile pointer exists: no policy at all."""

PRIORITY_LABEL = "phoenix_priority"
"""Label by which users classify their own series: ``critical``, ``high``, ``low``."""

CRITICAL_METRIC_NAMES = r"up|ALERTS|ALERTS_FOR_STATE|.*_slo_.*|.+:.+"
"""Scrape health, alert state, SLO series and recording-rule output (``level:metric:ops``)."""

PER_REQUEST_LABELS = ("user_id", "session_id", "request_id", "trace_id", "span_id",
                      "correlation_id", "transaction_id")
"""Labels whose values name one request or one user: unbounded, never worth a series each."""

_PER_CLIENT_LABELS = ("client_ip", "client_address", "remote_addr", "peer_address",
                      "net_sock_peer_addr", "url_full", "http_url", "http_target")
"""Per-caller addresses and raw URLs (query strings included): unbounded in practice."""

_PROCESS_IDENTITY = ("process_pid", "process_parent_pid", "process_command",
                     "process_command_line", "process_command_args", "process_owner")


def _classify(*, rollups: tuple[PriorityRollup, ...] = ()) -> PolicySpec:
    rules = (
        PriorityRule(PriorityClass.CRITICAL,
                     (LabelMatcher(PRIORITY_LABEL, MatchOp.EQUAL, "critical"),)),
        PriorityRule(PriorityClass.CRITICAL,
                     (LabelMatcher("__name__", MatchOp.REGEX, CRITICAL_METRIC_NAMES),)),
        PriorityRule(PriorityClass.HIGH, (LabelMatcher(PRIORITY_LABEL, MatchOp.EQUAL, "high"),)),
        PriorityRule(PriorityClass.LOW, (LabelMatcher(PRIORITY_LABEL, MatchOp.EQUAL, "low"),)),
    )
    return PolicySpec(
        id="critical-series",
        action=Classify(rules=rules, default_class=PriorityClass.MEDIUM, rollups=rollups),
        description=(f'CRITICAL (never changed): {PRIORITY_LABEL}="critical" and metric names '
                     f'matching {CRITICAL_METRIC_NAMES}; HIGH/LOW: {PRIORITY_LABEL}="high"/"low"; '
                     "everything else MEDIUM."),
    )


def _cap(max_series: int) -> PolicySpec:
    return PolicySpec(
        id="cap-per-metric",
        action=Cap(max_series=max_series),
        description=(f"At most {max_series} series per metric on each replica; the rest merge "
                     'into one otel_metric_overflow="true" series, so totals stay exact.'),
    )


def _aggregate(labels: tuple[str, ...]) -> PolicySpec:
    return PolicySpec(
        id="merge-per-request-labels",
        action=Aggregate(without=labels),
        description=(f"Remove {', '.join(labels)} and sum the series that become identical "
                     "(counters stay monotonic). Series without these labels are unchanged."),
    )


_FULL = ProfileSpec(
    name="full",
    description="Full fidelity: no policy; every series is forwarded as received.",
)

_CONSERVATIVE = ProfileSpec(
    name="conservative",
    policies=(_classify(), _cap(20_000)),
    description=("Explosion guard only: classifies critical series and caps every metric at "
                 "20,000 series per replica (overflow merged, totals exact). Normal metrics "
                 "pass unchanged."),
)

_BALANCED = ProfileSpec(
    name="balanced",
    policies=(_classify(), _aggregate(PER_REQUEST_LABELS), _cap(5_000)),
    description=("Removes per-request labels (user_id, session_id, request_id, trace_id, "
                 "span_id, ...) by summing, and caps every metric at 5,000 series per "
                 "replica. Critical series are never changed."),
)

_AGGRESSIVE = ProfileSpec(
    name="aggressive",
    policies=(
        _classify(rollups=(PriorityRollup(PriorityClass.LOW,
                                          others_label="process_executable_name",
                                          without=_PROCESS_IDENTITY),)),
        _aggregate(PER_REQUEST_LABELS + _PER_CLIENT_LABELS),
        _cap(1_000),
    ),
    description=("Balanced, plus per-client addresses and raw URLs removed, LOW series "
                 "rolled up (process_executable_name=\"others\", per host), and every metric "
                 "capped at 1,000 series per replica. Critical series are never changed."),
)

_EXPERIMENTAL = ProfileSpec(
    name="experimental",
    policies=(
        _classify(),
        PolicySpec(
            id="top-k-per-metric",
            action=TopK(k=100),
            description=("Keep the 100 heaviest series of each metric (rate for counters, "
                         'value for gauges); merge the rest into phoenix_top_k="other".'),
        ),
    ),
    description=("Top-K: the 100 heaviest series per metric per replica, the rest merged into "
                 "one other series. Compare it first: window reports carry its output "
                 "cardinality (shadow accounting) while another profile is active."),
)

BUILTIN_PROFILES: tuple[ProfileSpec, ...] = (
    _FULL, _CONSERVATIVE, _BALANCED, _AGGRESSIVE, _EXPERIMENTAL,
)
"""From least to most aggressive (the cost-optimizer's default ladder), then experimental."""

BUILTIN_PROFILE_NAMES = frozenset(p.name for p in BUILTIN_PROFILES)


def builtin_profile(name: str) -> ProfileSpec | None:
    """The shipped profile called ``name``, or None."""
    return next((p for p in BUILTIN_PROFILES if p.name == name), None)
