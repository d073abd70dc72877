"""One process's connection to etcd, with etcd3aio's errors translated at this boundary.

Every call has a deadline (``EtcdConfig.dial_timeout``) so a blackholed etcd cannot hang a
caller, and raises only :mod:`phoenixcp.errors`: :class:`Unavailable` (retry later),
:class:`NotFound` (e.g. a lease that expired), :class:`PermissionDenied`,
:class:`InvalidArgument`, :class:`ResourceExhausted` (etcd's space quota).

The connection is built from etcd3aio's service classes on a channel it creates itself rather
than through ``Etcd3Client``, which offers no way to set gRPC's reconnect backoff: its default
grows to 120 s, so after a long etcd outage the client would stay away for minutes after etcd
returns. Watches are single streams without etcd3aio's built-in reconnect, because that
reconnect resumes from the ``header.revision`` of the *created* response and can skip events a
catching-up watch had not delivered yet; :mod:`.watching` resumes from the last delivered
event instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Final, NoReturn

import grpc
import grpc.aio

# etcd3aio 0.3 exposes the generated etcd messages only through this module (it has __all__);
# we need Compare for mod-revision and lease comparisons and the raw Watch stub.
from etcd3aio._protobuf import (
    Compare,
    WatchCreateRequest,
    WatchRequest,
    WatchStub,
)
from etcd3aio.errors import (
    EtcdConnectionError,
    EtcdError,
    EtcdPermissionDeniedError,
    EtcdTransientError,
    EtcdUnauthenticatedError,
)
from etcd3aio.kv import KVService, prefix_range_end
from etcd3aio.lease import LeaseService

from phoenixcp.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PhoenixError,
    ResourceExhausted,
    Unavailable,
)
from phoenixcp.platform.config import EtcdConfig, parse_host_port

__all__ = ["EtcdConnection", "RevisionCompacted", "prefix_end"]

_log = logging.getLogger(__name__)

_CHANNEL_OPTIONS: Final[list[tuple[str, Any]]] = [
    ("grpc.lb_policy_name", "round_robin"),
    # etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Come back within about a second of etcd returning, however long it was away.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


class RevisionCompacted(Conflict):
    """A read or watch asked for a revision etcd has compacted away (internal to coord)."""

    def __init__(self, message: str, *, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


def _rpc_error(exc: grpc.aio.AioRpcError, what: str) -> PhoenixError:
    code, detail = exc.code(), exc.details() or exc.code().name
    message = f"etcd {what}: {detail}"
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(message)
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return PermissionDenied(message)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(message)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(message)
    if code == grpc.StatusCode.OUT_OF_RANGE:
        # etcd: "required revision has been compacted" or "... is a future revision"
        if "compacted" in detail:
            return RevisionCompacted(message)
        return InvalidArgument(message)
    return Unavailable(message)


@contextlib.contextmanager
def _translated(what: str, endpoints: str) -> Iterator[None]:
    """Re-raise etcd3aio's and grpc's exceptions as :mod:`phoenixcp.errors`."""
    try:
        yield
    except (EtcdConnectionError, EtcdTransientError) as exc:
        raise Unavailable(f"etcd at {endpoints} does not answer ({what}): {exc}") from exc
    except TimeoutError as exc:
        raise Unavailable(f"etcd at {endpoints} did not answer {what} in time") from exc
    except (EtcdPermissionDeniedError, EtcdUnauthenticatedError) as exc:
        raise PermissionDenied(f"etcd refused {what}: {exc}") from exc
    except grpc.aio.AioRpcError as exc:
        raise _rpc_error(exc, what) from exc
    except (EtcdError, grpc.aio.UsageError) as exc:
        raise Unavailable(f"etcd {what} failed: {exc}") from exc


def prefix_end(prefix: bytes) -> bytes:
    """The exclusive end of the key range holding every key that starts with ``prefix``."""
    return prefix_range_end(prefix)


async def _channel_target(endpoints: Sequence[str]) -> str:
    """A gRPC target for all endpoints: ``ipv4:``/``ipv6:`` address lists; one host name is
    left to gRPC's resolver (re-resolved on reconnect), several are resolved once, now."""
    v4: list[str] = []
    v6: list[str] = []
    loop = asyncio.get_running_loop()
    if len(endpoints) == 1:
        host, port = parse_host_port(endpoints[0])
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)
            host = ""
        if host:
            return f"dns:///{host}:{port}"
    for endpoint in endpoints:
        host, port = parse_host_port(endpoint)
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise Unavailable(f"etcd endpoint {endpoint}: cannot resolve it: {exc}") from exc
            addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        for address in dict.fromkeys(addresses):
            if address.version == 4:
                v4.append(f"{address}:{port}")
            else:
                v6.append(f"[{address}]:{port}")
    # One scheme per target: prefer IPv4 (etcd's default listen), fall back to IPv6.
    return f"ipv4:{','.join(v4)}" if v4 else f"ipv6:{','.join(v6)}"


class EtcdConnection:
    """The process's etcd client: one gRPC channel shared by the election and every store.

    Safe to use from many tasks of one event loop at once. ``close()`` is idempotent; calls
    after it raise :class:`Unavailable`. Mutations are sent once (a retried transaction could
    report a lost compare for a write that landed); reads retry transient errors.
    """

    def __init__(self, *, channel: grpc.aio.Channel, endpoints: str, timeout: float) -> None:
        self._channel: grpc.aio.Channel | None = channel
        self.endpoints = endpoints
        self.timeout = timeout
        self._kv = KVService(channel)
        self._lease = LeaseService(channel)
        self._watch = WatchStub(channel)

    @classmethod
    async def open(cls, config: EtcdConfig) -> EtcdConnection:
        """Create the channel (no round trip: etcd may come up later; calls then succeed)."""
        target = await _channel_target(config.endpoints)
        channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        return cls(
            channel=channel,
            endpoints=",".join(config.endpoints),
            timeout=config.dial_timeout.total_seconds(),
        )

    async def close(self) -> None:
        """Close the channel; open watches and calls in flight end with Unavailable."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    @property
    def closed(self) -> bool:
        return self._channel is None

    def _check_open(self, what: str) -> None:
        if self._channel is None:
            raise Unavailable(f"etcd {what}: the connection to {self.endpoints} is closed")

    # -- KV ---------------------------------------------------------------------------------

    async def range(
        self, key: bytes, *, range_end: bytes | None = None, revision: int = 0, limit: int = 0,
        keys_only: bool = False,
    ) -> Any:
        """etcd Range: ``key``, or ``[key, range_end)``; at ``revision`` (0: the latest)."""
        self._check_open("range")
        with _translated(f"range {key!r}", self.endpoints):
            return await self._kv.get(
                key, range_end=range_end, revision=revision, limit=limit, keys_only=keys_only,
                timeout=self.timeout,
            )

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> Any:
        self._check_open("put")
        with _translated(f"put {key!r}", self.endpoints):
            return await self._kv.put(key, value, lease=lease, timeout=self.timeout, max_attempts=1)

    async def delete(self, key: bytes) -> Any:
        self._check_open("delete")
        with _translated(f"delete {key!r}", self.endpoints):
            return await self._kv.delete(key, timeout=self.timeout, max_attempts=1)

    async def txn(
        self, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()
    ) -> Any:
        """An atomic compare-and-swap; ``succeeded`` says which branch ran."""
        self._check_open("txn")
        with _translated("transaction", self.endpoints):
            return await self._kv.txn(
                compare, success, failure, timeout=self.timeout, max_attempts=1
            )

    async def compact(self, revision: int) -> None:
        """Drop history before ``revision`` (operators and tests; Phoenix never compacts)."""
        self._check_open("compact")
        with _translated(f"compact {revision}", self.endpoints):
            await self._kv.compact(revision, physical=True, timeout=self.timeout)

    # -- transaction parts ---------------------------------------------------------------------

    @staticmethod
    def compare_create(key: bytes, revision: int) -> Any:
        return KVService.txn_compare_create_revision(key, revision)

    @staticmethod
    def compare_mod(key: bytes, revision: int) -> Any:
        return Compare(result=Compare.EQUAL, target=Compare.MOD, key=key, mod_revision=revision)

    @staticmethod
    def compare_lease(key: bytes, lease_id: int) -> Any:
        return Compare(result=Compare.EQUAL, target=Compare.LEASE, key=key, lease=lease_id)

    @staticmethod
    def op_put(key: bytes, value: bytes, *, lease: int = 0) -> Any:
        return KVService.txn_op_put(key, value, lease=lease)

    @staticmethod
    def op_get(key: bytes) -> Any:
        return KVService.txn_op_get(key)

    @staticmethod
    def op_delete(key: bytes) -> Any:
        return KVService.txn_op_delete(key)

    # -- leases ---------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (id, TTL etcd granted, in whole seconds)."""
        self._check_open("lease grant")
        with _translated("lease grant", self.endpoints):
            resp = await self._lease.grant(ttl, timeout=self.timeout, max_attempts=1)
        return int(resp.ID), int(resp.TTL)

    async def keep_alive_once(self, lease_id: int, *, timeout: float) -> int:
        """Renew ``lease_id`` once; the TTL etcd now counts down from, <= 0 when it is gone."""
        self._check_open("lease keep-alive")
        with _translated(f"keep-alive of lease {lease_id}", self.endpoints):
            call = self._lease.keep_alive(lease_id)
            try:
                async with asyncio.timeout(timeout):
                    response: Any = await call.read()
            finally:
                call.cancel()
        if response is grpc.aio.EOF:
            raise Unavailable(f"etcd at {self.endpoints} ended the keep-alive of lease {lease_id}")
        return int(response.TTL)

    async def revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        """Revoke ``lease_id`` (its keys are deleted at once); an unknown lease is fine."""
        self._check_open("lease revoke")
        try:
            with _translated(f"revoke of lease {lease_id}", self.endpoints):
                await self._lease.revoke(
                    lease_id, timeout=timeout or self.timeout, max_attempts=1
                )
        except NotFound:
            pass

    # -- watches ----------------------------------------------------------------------------------

    async def watch_stream(
        self, key: bytes, *, prefix: bool, start_revision: int
    ) -> AsyncIterator[Any]:
        """One watch stream's responses; ends by raising :class:`Unavailable` on disconnect.

        No reconnect here: the caller resumes from the revision it last delivered.
        """
        self._check_open("watch")
        create = WatchCreateRequest(
            key=key,
            range_end=prefix_range_end(key) if prefix else b"",
            start_revision=start_revision,
            progress_notify=True,
        )

        finished = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield WatchRequest(create_request=create)
            await finished.wait()  # closing the request side early would end the watch

        call = self._watch.Watch(requests())
        try:
            with _translated(f"watch {key!r}", self.endpoints):
                async for response in call:
                    yield response
            _raise_closed(self.endpoints)
        finally:
            finished.set()
            call.cancel()


def _raise_closed(endpoints: str) -> NoReturn:
    raise Unavailable(f"etcd at {endpoints} closed the watch stream")
