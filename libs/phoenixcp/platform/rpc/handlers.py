"""Wrapping a gRPC method handler so that code runs around every call, of any kind.

gRPC's asyncio interceptors only see the method name; to act on a call's context (its peer,
its status) an interceptor must wrap the handler itself. :func:`wrap_handler` does that once
for all four kinds (unary/streaming in and out) and for sync or async behaviours, so each
interceptor only writes its ``guard``: an async context manager entered around the call.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

__all__ = ["Guard", "GuardInterceptor", "wrap_handler"]

Guard = Callable[[grpc.aio.ServicerContext[Any, Any]], AbstractAsyncContextManager[None]]
"""Entered around one call with its context; may abort the call (``context.abort`` raises)."""


async def _resolve(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


async def _iterate(result: Any) -> AsyncIterator[Any]:
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        result = await _resolve(result)
        if result is not None:
            for item in result:
                yield item


def wrap_handler(handler: grpc.RpcMethodHandler[Any, Any], guard: Guard) -> Any:
    """A handler equal to ``handler`` but with every call run inside ``guard(context)``."""
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    behavior: Any
    if handler.unary_unary or handler.stream_unary:
        behavior = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with guard(context):
                return await _resolve(behavior(request, context))

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary, **codec)
        return grpc.stream_unary_rpc_method_handler(unary, **codec)

    behavior = handler.unary_stream or handler.stream_stream

    async def streaming(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async with guard(context):
            async for item in _iterate(behavior(request, context)):
                yield item

    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **codec)
    return grpc.stream_stream_rpc_method_handler(streaming, **codec)


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that runs ``guard_for(method)`` around each call of that method.

    Subclasses implement :meth:`guard_for`; returning None leaves the method untouched.
    """

    def guard_for(self, method: str) -> Guard | None:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None:
            return None  # gRPC answers UNIMPLEMENTED for unknown methods; nothing to guard
        guard = self.guard_for(details.method)
        return handler if guard is None else wrap_handler(handler, guard)
