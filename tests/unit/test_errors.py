"""Each Phoenix error maps to one status code with its message, and __all__ is honest."""

from __future__ import annotations

import grpc
import pytest

from phoenixcp import errors
from phoenixcp.platform.rpc import status_for

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidArgument("bad regex"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("no such policy"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("exists"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.Conflict("revision moved"), grpc.StatusCode.ABORTED),
        (errors.NotLeader("ask 10.0.0.1:7000", leader="10.0.0.1:7000"),
         grpc.StatusCode.FAILED_PRECONDITION),
        (errors.PermissionDenied("no"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.Unavailable("etcd away"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_status_codes(exc: errors.PhoenixError, code: grpc.StatusCode) -> None:
    assert status_for(exc) == (code, str(exc))


def test_resource_exhausted_says_when_to_retry() -> None:
    code, message = status_for(errors.ResourceExhausted("queue full", retry_after=2))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message == "queue full (retry after 2s)"


def test_all_lists_every_public_error() -> None:
    public = {name for name, value in vars(errors).items()
              if isinstance(value, type) and issubclass(value, errors.PhoenixError)}
    assert public == set(errors.__all__)
    for name in errors.__all__:
        assert name in (errors.__doc__ or ""), f"{name} is missing from the tree in errors.py"
