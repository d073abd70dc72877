"""The etcd boundary: library errors become Phoenix errors; endpoints become a gRPC target."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from etcd3aio import EtcdConnectionError, EtcdPermissionDeniedError

from phoenixcp import errors
from phoenixcp.platform import coord
from phoenixcp.platform.coord.etcd import RevisionCompacted, _channel_target, _translated
from phoenixcp.platform.coord.watching import Backoff

pytestmark = pytest.mark.unit


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (EtcdConnectionError("KV.Range failed after 3 attempts: UNAVAILABLE"), errors.Unavailable),
        (TimeoutError(), errors.Unavailable),
        (EtcdPermissionDeniedError("no"), errors.PermissionDenied),
        (rpc_error(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"),
         errors.NotFound),
        (rpc_error(grpc.StatusCode.OUT_OF_RANGE, "mvcc: required revision has been compacted"),
         RevisionCompacted),
        (rpc_error(grpc.StatusCode.OUT_OF_RANGE, "mvcc: required revision is a future revision"),
         errors.InvalidArgument),
        (rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space "
                   "exceeded"), errors.ResourceExhausted),
        (rpc_error(grpc.StatusCode.INTERNAL, "boom"), errors.Unavailable),
    ],
)
def test_errors_are_translated_at_the_boundary(
    raised: Exception, expected: type[errors.PhoenixError]
) -> None:
    with pytest.raises(expected) as caught, _translated("range b'/x'", "127.0.0.1:2379"):
        raise raised
    assert caught.value.__cause__ is raised
    assert isinstance(caught.value, errors.PhoenixError)


def test_a_compacted_revision_is_a_conflict() -> None:
    assert issubclass(RevisionCompacted, errors.Conflict)


async def test_endpoints_become_one_target() -> None:
    assert await _channel_target(["127.0.0.1:2379", "10.0.0.2:2379"]) == (
        "ipv4:127.0.0.1:2379,10.0.0.2:2379")
    assert await _channel_target(["[::1]:2379"]) == "ipv6:[::1]:2379"
    assert await _channel_target(["etcd-0.etcd:2379"]) == "dns:///etcd-0.etcd:2379"
    assert (await _channel_target(["localhost:2379", "127.0.0.2:2379"])).startswith(
        "ipv4:127.0.0.1:2379")


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(first=0.1, cap=0.5)
    assert [backoff.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next() == 0.1


def test_all_names_the_public_api() -> None:
    public = {name for name in vars(coord) if not name.startswith("_")}
    modules = {"election", "etcd", "leader_only", "lease", "membership", "memory", "metrics",
               "ports", "prefix_watch", "store", "watching"}
    assert set(coord.__all__) == public - modules
