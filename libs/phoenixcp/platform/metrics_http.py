"""The Prometheus ``/metrics`` endpoint every service serves, with ``/healthz`` and ``/readyz``.

Each service process has its own :class:`prometheus_client.CollectorRegistry`, so tests that
start several services in one process do not share counters.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["MetricsServer", "serve_app"]


async def serve_app(app: web.Application, *, host: str, port: int,
                    ssl_context: ssl.SSLContext | None = None,
                    auto_decompress: bool = True) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0: a free port); the runner and the bound port.

    Shared by every HTTP listener of Phoenix; stop it with ``await runner.cleanup()``. With
    ``auto_decompress=False`` handlers get request bodies as sent (``Content-Encoding`` intact).
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           auto_decompress=auto_decompress)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    return runner, int(sockets[0].getsockname()[1]) if sockets else port


class MetricsServer:
    """Serves ``registry`` over HTTP. ``run`` binds; ``shutdown`` is idempotent."""

    def __init__(
        self, *, registry: CollectorRegistry, host: str, port: int, ready: Callable[[], bool]
    ) -> None:
        self._registry = registry
        self._host, self._port = host, port
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def start(self) -> int:
        """Bind and serve in the background; return the bound port."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner, self.bound_port = await serve_app(app, host=self._host, port=self._port)
        return self.bound_port

    async def shutdown(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: waiting for dependencies\n")
