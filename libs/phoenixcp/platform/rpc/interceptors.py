"""Server interceptors every Phoenix service installs: error mapping and request metrics.

One interceptor wraps each RPC's behaviour (unary or streaming, sync or async) so that:

* a :class:`~phoenixcp.errors.PhoenixError` becomes its status code with its message;
* ``NotImplementedError`` (what the generated base servicers raise) becomes UNIMPLEMENTED
  with a message naming the method;
* any other exception becomes INTERNAL with an error id that is also in the service log;
* every call is counted and timed in Prometheus, labelled by service, method and code;
* every call runs in an OpenTelemetry server span (the API only: without an SDK configured it
  costs next to nothing), continuing the caller's trace from its ``traceparent`` metadata.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from opentelemetry import propagate, trace
from prometheus_client import CollectorRegistry, Counter, Histogram

from phoenixcp.errors import PhoenixError
from phoenixcp.platform.rpc.errors import (
    ERROR_DETAIL_KEY,
    error_detail,
    status_for,
    unimplemented_detail,
)
from phoenixcp.platform.rpc.handlers import Guard, GuardInterceptor

__all__ = ["RpcMetrics", "StatusInterceptor"]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)


class RpcMetrics:
    """Request counters and latency histogram, named as go-grpc-prometheus names them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter(
            "phoenix_grpc_server_started_total", "RPCs started on the server.",
            ["grpc_service", "grpc_method"], registry=registry,
        )
        self.handled = Counter(
            "phoenix_grpc_server_handled_total", "RPCs completed, by status code.",
            ["grpc_service", "grpc_method", "grpc_code"], registry=registry,
        )
        self.seconds = Histogram(
            "phoenix_grpc_server_handling_seconds", "Time from RPC start to its status.",
            ["grpc_service", "grpc_method"], registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )


class _Call:
    """Bookkeeping for one RPC: turns its outcome into a status and records the metrics."""

    def __init__(self, method: str, metrics: RpcMetrics) -> None:
        self.method = method
        service, _, name = method.lstrip("/").partition("/")
        self._labels = (service, name)
        self._metrics = metrics
        self._start = time.perf_counter()
        metrics.started.labels(*self._labels).inc()

    async def fail(
        self, exc: BaseException, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Abort the RPC with the status ``exc`` stands for (``context.abort`` raises)."""
        trailers: tuple[tuple[str, bytes], ...] = ()
        if isinstance(exc, PhoenixError):
            code, message = status_for(exc)
            trailers = ((ERROR_DETAIL_KEY, error_detail(exc).SerializeToString()),)
        elif isinstance(exc, NotImplementedError):
            code = grpc.StatusCode.UNIMPLEMENTED
            message = f"{self.method} is not implemented in this version of Phoenix"
            trailers = ((ERROR_DETAIL_KEY, unimplemented_detail(message).SerializeToString()),)
        else:
            error_id = uuid.uuid4().hex[:12]
            log.error(
                "unhandled error in %s", self.method, exc_info=exc,
                extra={"fields": {"error_id": error_id, "method": self.method}},
            )
            code = grpc.StatusCode.INTERNAL
            message = (f"internal error in {self.method} (error id {error_id}); "
                       "the service log has the details under this id")
        await context.abort(code, message, trailing_metadata=trailers)

    @staticmethod
    def code_value(context: grpc.aio.ServicerContext[Any, Any]) -> int:
        code = context.code() or grpc.StatusCode.OK
        return int(code.value[0]) if isinstance(code, grpc.StatusCode) else int(code)

    def done(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        code = context.code() or grpc.StatusCode.OK
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        self._metrics.handled.labels(*self._labels, name).inc()
        self._metrics.seconds.labels(*self._labels).observe(time.perf_counter() - self._start)


class StatusInterceptor(GuardInterceptor):
    """Maps exceptions to statuses and records request metrics for every RPC."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    def guard_for(self, method: str) -> Guard:
        metrics = self._metrics

        @asynccontextmanager
        async def guard(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
            call = _Call(method, metrics)
            carrier = {k: v for k, v in (context.invocation_metadata() or ())
                       if isinstance(v, str)}
            with _tracer.start_as_current_span(
                method.lstrip("/"), context=propagate.extract(carrier),
                kind=trace.SpanKind.SERVER, attributes={"rpc.system": "grpc"},
            ) as span:
                try:
                    yield
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:  # every error becomes a status
                    span.record_exception(exc)
                    await call.fail(exc, context)
                finally:
                    call.done(context)
                    span.set_attribute("rpc.grpc.status_code", call.code_value(context))

        return guard
