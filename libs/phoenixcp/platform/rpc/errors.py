"""The one mapping from Phoenix errors to gRPC statuses and ``ErrorDetail`` trailers.

Every refused RPC carries a status code with a message a person can act on and, in the
trailing metadata key ``phoenix-error-bin``, a serialised ``phoenix.v1.ErrorDetail`` that
programs can branch on (see "Errors" in protos/phoenix/v1/common.proto).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import grpc

from phoenixcp import errors
from phoenixcp.api.phoenix.v1 import common_pb2

__all__ = ["ERROR_DETAIL_KEY", "error_detail", "status_for", "unimplemented_detail"]

ERROR_DETAIL_KEY = "phoenix-error-bin"

_R = common_pb2.ErrorReason
_CODES: tuple[tuple[type[errors.PhoenixError], grpc.StatusCode, Any], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, _R.ERROR_REASON_VALIDATION_FAILED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND, _R.ERROR_REASON_NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, _R.ERROR_REASON_ALREADY_EXISTS),
    (errors.Conflict, grpc.StatusCode.ABORTED, _R.ERROR_REASON_GENERATION_MISMATCH),
    (errors.NotLeader, grpc.StatusCode.FAILED_PRECONDITION, _R.ERROR_REASON_NOT_LEADER),
    (errors.LeadershipLost, grpc.StatusCode.FAILED_PRECONDITION, _R.ERROR_REASON_NOT_LEADER),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED,
     _R.ERROR_REASON_PERMISSION_DENIED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, _R.ERROR_REASON_QUEUE_FULL),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE, _R.ERROR_REASON_DEPENDENCY_UNAVAILABLE),
    (errors.ConfigError, grpc.StatusCode.FAILED_PRECONDITION, _R.ERROR_REASON_UNSPECIFIED),
)


class _FieldViolation(Protocol):
    """What an error's ``violations`` hold (e.g. ``phoenixcp.platform.policy.Violation``)."""

    @property
    def field(self) -> str: ...

    @property
    def description(self) -> str: ...


def _lookup(exc: errors.PhoenixError) -> tuple[grpc.StatusCode, Any]:
    for kind, code, reason in _CODES:
        if isinstance(exc, kind):
            return code, reason
    return grpc.StatusCode.INTERNAL, _R.ERROR_REASON_UNSPECIFIED


def status_for(exc: errors.PhoenixError) -> tuple[grpc.StatusCode, str]:
    """The status code and the message a caller gets for ``exc``."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, errors.ResourceExhausted) and exc.retry_after is not None:
        message = f"{message} (retry after {exc.retry_after:g}s)"
    return _lookup(exc)[0], message


def error_detail(exc: errors.PhoenixError) -> common_pb2.ErrorDetail:
    """The machine-readable ``ErrorDetail`` for ``exc``.

    An InvalidArgument that carries ``violations`` (a sequence of objects with ``field`` and
    ``description``, as ``PolicyRejected`` does) lists every one of them; otherwise its
    ``field``, if any, is the one violation, described by the whole message.
    """
    detail = common_pb2.ErrorDetail(reason=_lookup(exc)[1], message=status_for(exc)[1])
    if isinstance(exc, errors.InvalidArgument):
        violations: Sequence[_FieldViolation] = getattr(exc, "violations", None) or ()
        for violation in violations:
            detail.violations.add(field=violation.field, description=violation.description)
        if not violations and exc.field:
            detail.violations.add(field=exc.field, description=str(exc))
    if isinstance(exc, errors.NotLeader) and exc.leader:
        detail.leader.address = exc.leader
    if isinstance(exc, errors.ResourceExhausted) and exc.retry_after is not None:
        detail.retry_after.FromMilliseconds(round(exc.retry_after * 1000))
    return detail


def unimplemented_detail(message: str) -> common_pb2.ErrorDetail:
    return common_pb2.ErrorDetail(reason=_R.ERROR_REASON_NOT_IMPLEMENTED, message=message)
