"""A small HTTP/1.1 server for the data path: ``asyncio.Protocol`` + httptools (llhttp, in C).

ADR 0010 says why (aiohttp's per-request cost) and what is left out. The contract:

- Routes are exact ``(method, path)`` pairs (the path as sent, not percent-decoded; the query
  string does not take part); a handler is ``async handler(request) -> HttpResponse``. Another
  method on a known path gets 405 with ``Allow``, an unknown path 404. A handler that raises
  gets 500 with a generic message, logged once with the traceback; the server keeps serving.
- Keep-alive (HTTP/1.1 by default, HTTP/1.0 with ``Connection: keep-alive``), ``Connection:
  close``, pipelining: one request at a time per connection, answered in order. Reading pauses
  when input arrives while a request is being answered, and while the peer does not read.
- Bodies by Content-Length or chunked (llhttp decodes the chunks), at most ``max_body_bytes``:
  a larger Content-Length gets 413 before the body is read (instead of ``100 Continue`` when
  the client asked for one), a chunked body 413 once it passes the limit.
- At most ``max_headers`` header lines and ``max_header_bytes`` of headers (431) or of request
  target (414). What llhttp cannot parse gets 400, an ``Expect`` other than ``100-continue``
  417, a request not received within ``request_timeout`` 408. After any of these refusals the
  connection closes, lingering (``write_eof``, then reading and dropping for up to ``linger``)
  so the client reads the answer rather than a reset. A connection idle for
  ``keepalive_timeout`` (``request_timeout`` before its first request) is closed.
- Not served: HTTP/2 (the preface gets 400; ``Upgrade: h2c`` is ignored, the request answered
  as HTTP/1.1 and the connection closed; an upgrade request with a body gets 400), protocol
  upgrades, trailers (dropped), streaming bodies (a handler gets the whole body).
- Every answer has ``Date``, and ``Content-Length`` unless its status forbids one (1xx, 204,
  304). A HEAD request gets the headers without the body.
- TLS through ``ssl_context``; ``HttpRequest.ssl_object`` gives the peer's certificate.

Concurrency: one event loop. ``HttpServer.shutdown`` is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from datetime import timedelta
from email.utils import formatdate
from time import monotonic

from phoenixcp.errors import StartupError
from phoenixcp.platform.http._connection import Connection, ServerState
from phoenixcp.platform.http._message import (
    HttpHandler,
    HttpLimits,
    HttpRequest,
    HttpResponse,
)

__all__ = ["HttpHandler", "HttpLimits", "HttpRequest", "HttpResponse", "HttpServer"]

log = logging.getLogger("phoenixcp.platform.http")


class HttpServer:
    """Serves ``routes`` (``{("POST", "/api/v1/write"): handler, ...}``) on ``host:port``.

    ``start`` binds (port 0: a free one) and returns the port; ``shutdown`` is idempotent.
    Also an async context manager.
    """

    def __init__(self, routes: Mapping[tuple[str, str], HttpHandler], *, host: str, port: int,
                 ssl_context: ssl.SSLContext | None = None,
                 limits: HttpLimits | None = None) -> None:
        self._state = ServerState(routes, limits or HttpLimits())
        self._host, self._port, self._ssl = host, port, ssl_context
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._stopping: asyncio.Future[None] | None = None
        self.bound_port: int | None = None

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    async def start(self) -> int:
        """Bind and serve in the background; the bound port."""
        if self._server is not None:
            raise StartupError("HttpServer.start was called twice")
        state = self._state
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: Connection(state), self._host, self._port, ssl=self._ssl,
                reuse_address=True, backlog=1024)
        except OSError as exc:
            raise StartupError(f"HTTP: cannot listen on {self._host}:{self._port}: {exc}") \
                from exc
        self._sweep()
        self.bound_port = int(self._server.sockets[0].getsockname()[1])
        return self.bound_port

    async def shutdown(self, grace: timedelta = timedelta(seconds=60)) -> None:
        """Stop accepting, close idle connections, let the requests received finish for up to
        ``grace`` (their answers say ``Connection: close``), then abort what is left.
        Idempotent; a second call waits for the first."""
        if self._server is None:
            return
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace.total_seconds()))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float) -> None:
        assert self._server is not None
        state = self._state
        self._server.close()
        state.stopping = True
        state.all_closed = asyncio.get_running_loop().create_future()
        for connection in list(state.connections):
            connection.drain()
        if state.connections:
            try:
                await asyncio.wait_for(asyncio.shield(state.all_closed), grace)
            except TimeoutError:
                log.warning("HTTP requests still open after the shutdown grace; aborting them",
                            extra={"fields": {"connections": len(state.connections),
                                              "grace_s": grace}})
        tasks = [task for task in (c.abort() for c in list(state.connections)) if task]
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self._server.wait_closed()

    def _sweep(self) -> None:
        # One timer per server, none per connection or request: connections set deadlines
        # against the clock read here, and this checks them.
        state = self._state
        state.now = now = monotonic()
        state.date = b"Date: " + formatdate(usegmt=True).encode() + b"\r\n"
        for connection in list(state.connections):
            connection.tick(now)
        shortest = min(state.keepalive, state.request_timeout, state.linger)
        self._sweeper = asyncio.get_running_loop().call_later(
            max(0.01, min(1.0, shortest / 4)), self._sweep)
