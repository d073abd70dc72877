"""The checks the codec runs on each field: they record every :class:`Violation` found in a
:class:`Found` instead of stopping at the first, and return what they could decode."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from google.protobuf import duration_pb2

from phoenixcp.api.phoenix.v1 import common_pb2, state_pb2
from phoenixcp.core.aggregation import GaugeFunction
from phoenixcp.core.durations import format_duration
from phoenixcp.core.policy.model import LabelMatcher, MatchOp, PriorityClass
from phoenixcp.core.series import label_name_problem
from phoenixcp.errors import InvalidArgument
from phoenixcp.platform.ingest.tenancy import TENANT_PATTERN
from phoenixcp.platform.policy._regex import regex_problem

__all__ = [
    "ID_PATTERN",
    "SECOND",
    "Found",
    "PolicyRejected",
    "Violation",
    "check_labels",
    "check_regex",
    "decode_duration",
    "decode_gauge",
    "decode_matchers",
    "decode_priority",
    "enum_value",
    "id_problem",
    "tenant_problem",
]

E = TypeVar("E", bound=enum.Enum)

ID_PATTERN = "^[a-z0-9][a-z0-9._-]{0,62}$"
_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}\Z")
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
SECOND = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Violation:
    """One invalid field (``FieldViolation`` in common.proto)."""

    field: str
    description: str


class PolicyRejected(InvalidArgument):
    """A policy or profile that cannot be applied; ``violations`` lists every problem found.

    ``field`` is the first violation's, and the message names each one, so the single-field
    error mapping of :mod:`phoenixcp.platform.rpc.errors` still tells a person everything.
    """

    def __init__(self, violations: Sequence[Violation]) -> None:
        if not violations:
            raise ValueError("PolicyRejected needs at least one violation")
        parts = [f"{v.field}: {v.description}" for v in violations]
        message = parts[0] if len(parts) == 1 else f"{len(parts)} problems: " + "; ".join(parts)
        super().__init__(message, field=violations[0].field)
        self.violations = tuple(violations)


def id_problem(value: str, what: str = "id") -> str | None:
    """Why ``value`` cannot be a policy id or profile name, or None."""
    if _ID.match(value) is not None:
        return None
    wrong = f"{what} {value[:80]!r} is not valid" if value else f"{what} is required"
    return (f"{wrong}; use 1 to 63 characters of a-z, 0-9, '.', '_' and '-', starting with a "
            f"letter or digit ({ID_PATTERN})")


def tenant_problem(value: str) -> str | None:
    """Why ``value`` cannot be a tenant name, or None."""
    if _TENANT.match(value) is not None:
        return None
    wrong = f"tenant {value[:80]!r} is not valid" if value else "tenant is required"
    return f"{wrong}; tenant names match {TENANT_PATTERN}"


class Found:
    """The violations found so far, and the path prefix of the message being decoded."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.items: list[Violation] = []

    def add(self, path: str, description: str) -> None:
        self.items.append(Violation(self.prefix + path, description))

    def check(self, path: str, problem: str | None) -> bool:
        if problem is not None:
            self.add(path, problem)
        return problem is None

    def raise_any(self) -> None:
        if self.items:
            raise PolicyRejected(self.items)


def enum_choices(pb_enum: Any, strip: str) -> str:
    names: list[str] = [n.removeprefix(strip) for n in pb_enum.keys()
                        if not n.endswith("_UNSPECIFIED")]
    return ", ".join(names[:-1]) + " or " + names[-1]


def enum_value(found: Found, path: str, value: int, target: type[E], default: E | None,
               pb_enum: Any, strip: str, what: str) -> E | None:
    """The model enum member for proto enum number ``value``; UNSPECIFIED gives ``default``
    (None there: it must be set)."""
    choices = enum_choices(pb_enum, strip)
    if value == 0:
        if default is None:
            found.add(path, f"{what} is not set; use {choices}")
        return default
    try:
        return target(value)
    except ValueError:
        unset = "" if default is None else f", or leave it unset for {default.name}"
        found.add(path, f"unknown {what} {value}; use {choices}{unset}")
        return None


def decode_gauge(found: Found, path: str, value: int) -> GaugeFunction | None:
    return enum_value(found, path, value, GaugeFunction, GaugeFunction.SUM,
                      state_pb2.GaugeFunction, "GAUGE_FUNCTION_", "gauge function")


def decode_priority(found: Found, path: str, value: int,
                    default: PriorityClass | None = PriorityClass.MEDIUM) -> PriorityClass | None:
    return enum_value(found, path, value, PriorityClass, default, common_pb2.PriorityClass,
                      "PRIORITY_CLASS_", "priority class")


def show_duration(value: timedelta) -> str:
    return "-" + format_duration(-value) if value < timedelta(0) else format_duration(value)


def decode_duration(found: Found, path: str, parent: Any, name: str, default: timedelta,
                    minimum: timedelta) -> timedelta:
    if not parent.HasField(name):
        return default
    raw: duration_pb2.Duration = getattr(parent, name)
    value = raw.ToTimedelta()
    if value < minimum:
        found.add(path, f"must be at least {show_duration(minimum)}, got {show_duration(value)} "
                        f"(leave it unset for {show_duration(default)})")
    return value


def check_labels(found: Found, path: str, names: Sequence[str]) -> tuple[str, ...]:
    for i, name in enumerate(names):
        found.check(f"{path}[{i}]", label_name_problem(name))
    return tuple(names)


def check_regex(found: Found, path: str, pattern: str) -> bool:
    return found.check(path, regex_problem(pattern))


_OPS = {common_pb2.MATCH_OPERATOR_REGEX, common_pb2.MATCH_OPERATOR_NOT_REGEX}


def decode_matchers(found: Found, path: str,
                    pbs: Sequence[common_pb2.LabelMatcher]) -> tuple[LabelMatcher, ...] | None:
    out: list[LabelMatcher] = []
    for i, pb in enumerate(pbs):
        at = f"{path}[{i}]"
        ok = found.check(f"{at}.name", label_name_problem(pb.name))
        op = enum_value(found, f"{at}.operator", pb.operator, MatchOp, None,
                        common_pb2.MatchOperator, "MATCH_OPERATOR_", "operator")
        if pb.operator in _OPS:
            ok = check_regex(found, f"{at}.value", pb.value) and ok
        if ok and op is not None:
            out.append(LabelMatcher(pb.name, op, pb.value))
    return tuple(out) if len(out) == len(pbs) else None


