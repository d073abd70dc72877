"""The Prometheus ``/metrics`` endpoint every service serves, with ``/healthz`` and ``/readyz``.

Each service process has its own :class:`prometheus_client.CollectorRegistry`, so tests that
start several services in one process do not share counters. Served by Phoenix's own HTTP/1.1
server (:mod:`phoenixcp.platform.http`), which also keeps aiohttp (~14 MiB of RSS) out of the
services. ``HEAD`` is answered as ``GET`` without the body; another method gets 405.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from phoenixcp.platform.http import HttpRequest, HttpResponse, HttpServer

__all__ = ["MetricsServer"]

_OK = HttpResponse.text(200, "ok\n")
_READY = HttpResponse.text(200, "ready\n")
_NOT_READY = HttpResponse.text(503, "not ready: waiting for dependencies\n")


class MetricsServer:
    """Serves ``registry`` over HTTP. ``start`` binds; ``shutdown`` is idempotent."""

    def __init__(
        self, *, registry: CollectorRegistry, host: str, port: int, ready: Callable[[], bool]
    ) -> None:
        self._registry = registry
        self._ready = ready
        pages = {"/metrics": self._metrics, "/healthz": self._healthz, "/readyz": self._readyz}
        self._server = HttpServer({(method, path): handler for path, handler in pages.items()
                                   for method in ("GET", "HEAD")}, host=host, port=port)
        self.bound_port: int | None = None

    async def start(self) -> int:
        """Bind and serve in the background; return the bound port."""
        self.bound_port = await self._server.start()
        return self.bound_port

    async def shutdown(self) -> None:
        await self._server.shutdown()

    async def _metrics(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, generate_latest(self._registry),
                            content_type=CONTENT_TYPE_LATEST)

    async def _healthz(self, request: HttpRequest) -> HttpResponse:
        return _OK

    async def _readyz(self, request: HttpRequest) -> HttpResponse:
        return _READY if self._ready() else _NOT_READY
