"""Leader-only RPCs: a follower answers FAILED_PRECONDITION naming the leader's address."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from phoenixcp.platform.rpc.handlers import wrap_handler

__all__ = ["LeaderGateInterceptor"]


class LeaderGateInterceptor(grpc.aio.ServerInterceptor):
    """Calls ``require_leader`` (which raises ``NotLeader``) before each leader-only RPC.

    ``methods`` are full method paths, ``/phoenix.v1.ChaosEngineerService/StartExperiment``.
    Install it after the status interceptor, which turns ``NotLeader`` into its status.
    """

    def __init__(self, *, methods: Iterable[str], require_leader: Callable[[], None]) -> None:
        self._methods = frozenset(methods)
        self._require_leader = require_leader

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None or details.method not in self._methods:
            return handler
        require = self._require_leader

        @asynccontextmanager
        async def guard(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
            require()
            yield

        return wrap_handler(handler, guard)  # type: ignore[no-any-return]
