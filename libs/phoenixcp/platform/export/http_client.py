"""A small HTTP/1.1 client that POSTs bodies to one URL: the remote-write exporter's.

aiohttp's client costs ~3x the CPU of this one per 30 KB POST (ADR 0011), over 10% of the
relay's CPU. This is an asyncio ``Protocol`` per connection and llhttp (``httptools``) for
the responses, and nothing else.

What it does: ``POST`` with ``Content-Length`` to one ``http://`` or ``https://`` URL, over
at most ``max_connections`` keep-alive connections (callers beyond wait, first come first
served); one total timeout per request, covering the wait for a connection, connecting,
sending and the whole response; responses framed by ``Content-Length``, chunked, or by the
server closing the connection; error bodies kept up to ``max_body`` bytes. A connection is
reused only after a complete response that allows it (HTTP/1.1, no ``Connection: close``);
after a parse error, a timeout, a cancellation, a cut or an over-long body it is closed, never
reused in an unknown state.

Stale connections and the one retry: a pooled connection that the server closes while it is
idle is dropped as soon as the close is seen. When the close crosses a request instead (the
server's FIN was on its way as we wrote), the request fails on a connection that served a
response before, with no byte of a response back: only then it is sent once more, on a new
connection. The server may have processed the first copy all the same (stored it, then
crashed before answering): the usual caveat of repeating a non-idempotent method. It suits
remote-write, which is idempotent per sample timestamp (the same series, timestamp and
value again changes nothing), and the export worker repeats whole requests after any
RETRYABLE outcome anyway.

Not supported, on purpose: redirects (a 3xx is returned as any status), proxies (no
``*_PROXY`` variables are read), cookies, HTTP/2, ``Expect: 100-continue``, request bodies
other than ``bytes``. Response bodies are not decompressed, except by
:meth:`HttpResponse.text` for an error text.

:class:`HttpResponse` and the exceptions (a tree of :class:`HttpClientError`, each an
:class:`~phoenixcp.errors.Unavailable`) are defined in ``_http_message`` and exported here.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections import deque
from collections.abc import Mapping
from datetime import timedelta
from typing import Final
from urllib.parse import quote, unquote, urlsplit

import httptools

from phoenixcp.platform.export._http_message import (
    ClientClosed,
    ConnectError,
    ConnectionClosed,
    HttpClientError,
    HttpResponse,
    ProtocolError,
    RequestTimeout,
)

__all__ = [
    "ClientClosed",
    "ConnectError",
    "ConnectionClosed",
    "HttpClient",
    "HttpClientError",
    "HttpResponse",
    "ProtocolError",
    "RequestTimeout",
]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
#: The client frames each request itself; a configured value would corrupt the stream.
_FRAMING_HEADERS: Final = frozenset({"content-length", "transfer-encoding"})


class _Stale(Exception):
    """A reused connection ended before any response byte: the one case worth a retry."""


def _header_lines(headers: Mapping[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        if not name or any(c in name for c in "\r\n\0: ") or any(c in value for c in "\r\n\0"):
            raise ValueError(f"invalid HTTP header {name!r}: {value!r}")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("utf-8")


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request in flight at a time, its response parsed by
    llhttp as bytes arrive. Completes (or fails) the future that :meth:`send` returns."""

    __slots__ = ("_body", "_body_size", "_client", "_got_bytes", "_headers", "_headers_done",
                 "_loop", "_parser", "_status", "_transport", "_truncated", "_waiter",
                 "idle_since", "keep_alive", "reused")

    def __init__(self, client: HttpClient) -> None:
        self._client = client
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._got_bytes = False
        self._headers_done = False
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._truncated = False
        #: True once a response came back on it: a reused connection may be stale.
        self.reused = False
        self.keep_alive = False
        self.idle_since = 0.0

    @property
    def usable(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def send(self, data: bytes) -> asyncio.Future[HttpResponse]:
        """Write one request; the future gets its response."""
        waiter = self._waiter = self._loop.create_future()
        self._got_bytes = self._headers_done = self._truncated = False
        self.keep_alive = False
        self._reset_message()
        if not self.usable:  # ended between the pool's check and now: write() would drop it
            waiter.set_exception(_Stale() if self.reused else ConnectionClosed(
                "the server closed the connection before the request"))
            return waiter
        assert self._transport is not None
        self._transport.write(data)
        return waiter

    def abort(self, exc: BaseException | None = None) -> None:
        """Close at once; a request in flight fails with ``exc``."""
        if exc is not None:
            self._fail(exc)
        if self._transport is not None:
            self._transport.abort()

    def _reset_message(self) -> None:
        self._status = 0
        self._headers = []
        self._body = []
        self._body_size = 0

    def _fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def _complete(self, keep_alive: bool) -> None:
        assert self._waiter is not None and self._transport is not None
        # A response before the whole request was written (an early 413, say) leaves the
        # rest of our body queued: the server would read it as the next request.
        self.keep_alive = (keep_alive and not self._truncated
                           and not self._transport.get_write_buffer_size())
        self.reused = True
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._waiter.set_result(HttpResponse(self._status, self._headers, body,
                                             self._truncated))

    def _in_flight(self) -> bool:
        return self._waiter is not None and not self._waiter.done()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if not self._in_flight():  # bytes nobody asked for: the stream's state is unknown
            self.abort()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("the server switched protocols"))
            self.abort()
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"malformed response: {exc}"))
            self.abort()

    def eof_received(self) -> bool:
        self._ended(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)
        self._client._lost(self)

    def _ended(self, exc: Exception | None) -> None:
        if not self._in_flight():
            return
        if self._headers_done and self._delimited_by_close():
            self._complete(keep_alive=False)
        elif self.reused and not self._got_bytes:
            self._fail(_Stale())
        else:
            where = "during the response" if self._got_bytes else "before responding"
            self._fail(ConnectionClosed(f"the server closed the connection {where}"
                                        + (f": {exc}" if exc else "")))

    def _delimited_by_close(self) -> bool:
        """True when the response has neither a length nor chunks: its body ends at EOF."""
        if self._status < 200 or self._status in (204, 304):
            return False
        for name, value in self._headers:
            name = name.lower()
            if name == b"content-length" or (name == b"transfer-encoding"
                                             and b"chunked" in value.lower()):
                return False
        return True

    # llhttp callbacks (httptools)

    def on_message_begin(self) -> None:
        if not self._in_flight():
            self.abort()  # a second response to one request

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        if not self._in_flight():
            return
        self._body_size += len(body)
        limit = self._client.max_body
        if self._body_size <= limit:
            self._body.append(body)
            return
        # Stop here: keep what fits, and close rather than drain an unbounded body.
        self._body.append(body[:len(body) - (self._body_size - limit)])
        self._truncated = True
        self._complete(keep_alive=False)
        self.abort()

    def on_message_complete(self) -> None:
        if not self._in_flight():
            return
        if self._status < 200:  # an interim 1xx (100 Continue, 103): the real one follows
            self._headers_done = False
            self._reset_message()
            return
        # should_keep_alive: HTTP/1.1 without Connection: close (or 1.0 with keep-alive,
        # which we do not trust either). Read it now: llhttp clears its flags after this.
        self._complete(self._parser.should_keep_alive()
                       and self._parser.get_http_version() == "1.1")


class HttpClient:
    """POSTs to one URL over a pool of keep-alive HTTP/1.1 connections.

    Nothing connects at construction. Concurrency: one event loop; :meth:`post` may be awaited
    concurrently, and holds one connection at a time. A cancelled ``post`` closes its
    connection. :meth:`close` is idempotent. ``https://`` verifies the server against
    ``ssl_context`` (the system's roots when None, as aiohttp does), sending the URL's host as
    SNI and checking it; pass a context with a client certificate for mTLS. ``headers`` are
    sent with every request, after ``Host`` (which a ``Host`` entry replaces); credentials in
    the URL become ``Authorization: Basic``. Raises ``ValueError`` for a URL or header it
    cannot send.
    """

    def __init__(self, url: str, *, max_connections: int = 16,
                 timeout: timedelta = timedelta(seconds=30),
                 headers: Mapping[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None, max_body: int = 64 * 1024,
                 keepalive_expiry: timedelta = timedelta(seconds=15)) -> None:
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        if ssl_context is not None and parts.scheme != "https":
            raise ValueError(f"an ssl_context needs an https:// URL, not {url!r}")
        if max_connections < 1 or max_body < 0:
            raise ValueError("max_connections must be positive and max_body not negative")
        self._host = parts.hostname.encode("idna").decode("ascii")
        self._port = parts.port or _DEFAULT_PORTS[parts.scheme]
        self._https = parts.scheme == "https"
        self._ssl = ssl_context
        self._origin = f"{self._host}:{self._port}"
        self.max_connections = max_connections
        self.max_body = max_body
        self._timeout = timeout.total_seconds()
        self._expiry = keepalive_expiry.total_seconds()
        self._prefix = self._request_prefix(parts.path, parts.query, parts.username,
                                            parts.password, headers or {})
        self._idle: list[_Connection] = []  # most recently used last
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._open: set[_Connection] = set()
        self._slots = 0  # connections open or being opened, idle ones included
        self._closed = False

    def _request_prefix(self, path: str, query: str, user: str | None, password: str | None,
                        headers: Mapping[str, str]) -> bytes:
        target = quote(path or "/", safe="/%:@!$&'()*+,;=-._~") + (f"?{query}" if query else "")
        host = f"[{self._host}]" if ":" in self._host else self._host
        if self._port != _DEFAULT_PORTS["https" if self._https else "http"]:
            host = f"{host}:{self._port}"
        fixed = {"Host": host}
        configured = {name.lower() for name in headers}
        if configured & _FRAMING_HEADERS:
            raise ValueError(f"headers: the client sets {sorted(_FRAMING_HEADERS)} itself")
        if "host" in configured:
            del fixed["Host"]
        tail = {} if "accept" in configured else {"Accept": "*/*"}
        if user is not None and "authorization" not in configured:
            token = f"{unquote(user)}:{unquote(password or '')}".encode("latin-1")
            tail["Authorization"] = f"Basic {base64.b64encode(token).decode('ascii')}"
        return (f"POST {target} HTTP/1.1\r\n".encode("ascii") + _header_lines(fixed)
                + _header_lines(headers) + _header_lines(tail))

    async def post(self, body: bytes, *, headers: Mapping[str, str] | None = None
                   ) -> HttpResponse:
        """POST ``body`` with the client's headers and ``headers``; the response, whatever its
        status. Raises :class:`HttpClientError` (see the module) or ``ValueError`` for a
        header that cannot be sent."""
        head = self._prefix + (_header_lines(headers) if headers else b"")
        data = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    return await self._exchange(data, fresh=False)
                except _Stale:
                    return await self._exchange(data, fresh=True)
        except TimeoutError as exc:
            if isinstance(exc, HttpClientError):
                raise
            raise RequestTimeout(f"no complete response from {self._origin} within "
                                 f"{self._timeout:g} s") from exc

    async def _exchange(self, data: bytes, *, fresh: bool) -> HttpResponse:
        conn = await self._acquire(fresh=fresh)
        try:
            response = await conn.send(data)
        except BaseException:
            self._release(conn, reusable=False)
            raise
        self._release(conn, reusable=conn.keep_alive)
        return response

    async def close(self) -> None:
        """Close every connection; requests in flight and waiting fail with ClientClosed."""
        if self._closed:
            return
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ClientClosed("the HTTP client was closed"))
        for conn in list(self._open):
            conn.abort(ClientClosed("the HTTP client was closed"))
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing

    # The pool. Invariant: callers wait only while no connection is idle.

    async def _acquire(self, *, fresh: bool) -> _Connection:
        if self._closed:
            raise ClientClosed("the HTTP client was closed")
        now = time.monotonic()
        while self._idle and not fresh:
            conn = self._idle.pop()
            if conn.usable and now - conn.idle_since < self._expiry:
                return conn
            conn.abort()
            self._slots -= 1
        if fresh and self._idle and self._slots >= self.max_connections:
            self._idle.pop(0).abort()  # the oldest idle one makes room for a new one
            self._slots -= 1
        if self._slots < self.max_connections:
            self._slots += 1
        else:
            waiter: asyncio.Future[_Connection | None] = (
                asyncio.get_running_loop().create_future())
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._put_back(waiter.result())  # handed over as we were cancelled
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise
            if handed is not None:
                if not fresh and handed.usable:
                    return handed
                handed.abort()  # keep its slot, open a new connection in it
        try:
            return await self._connect()
        except BaseException:
            self._free_slot()
            raise

    def _put_back(self, conn: _Connection | None) -> None:
        if conn is None:
            self._free_slot()
        else:
            self._release(conn, reusable=True)

    def _hand_over(self, conn: _Connection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _free_slot(self) -> None:
        if not self._hand_over(None):
            self._slots -= 1

    def _release(self, conn: _Connection, *, reusable: bool) -> None:
        if reusable and conn.usable and not self._closed:
            if not self._hand_over(conn):
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
        else:
            conn.abort()
            if not self._closed:
                self._free_slot()

    def _lost(self, conn: _Connection) -> None:
        """A connection ended (called by it); an idle one gives its slot back."""
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
            self._free_slot()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if self._https:
            if self._ssl is None:
                self._ssl = _default_ssl_context()
            context = self._ssl
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self), self._host, self._port, ssl=context,
                server_hostname=self._host.rstrip(".") if context else None)
        except ssl.SSLError as exc:
            raise ConnectError(f"TLS handshake with {self._origin} failed: {exc}") from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {self._origin}: {exc}") from exc
        if self._closed:
            conn.abort()
            raise ClientClosed("the HTTP client was closed")
        self._open.add(conn)
        return conn


def _default_ssl_context() -> ssl.SSLContext:
    # What aiohttp uses by default: the system's roots, hostname checked, ALPN http/1.1.
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context
