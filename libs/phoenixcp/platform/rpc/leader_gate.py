"""Leader-only RPCs: a follower answers FAILED_PRECONDITION naming the leader's address."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from phoenixcp.platform.rpc.handlers import Guard, GuardInterceptor

__all__ = ["LeaderGateInterceptor"]


class LeaderGateInterceptor(GuardInterceptor):
    """Calls ``require_leader`` (which raises ``NotLeader``) before each leader-only RPC.

    ``methods`` are full method paths, ``/phoenix.v1.ChaosEngineerService/StartExperiment``.
    Install it after the status interceptor, which turns ``NotLeader`` into its status.
    """

    def __init__(self, *, methods: Iterable[str], require_leader: Callable[[], None]) -> None:
        self._methods = frozenset(methods)
        self._require_leader = require_leader

    def guard_for(self, method: str) -> Guard | None:
        if method not in self._methods:
            return None
        require = self._require_leader

        @asynccontextmanager
        async def guard(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
            require()
            yield

        return guard
