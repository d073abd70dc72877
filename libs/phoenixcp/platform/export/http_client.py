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
:class:`~phoenixcp.errors.Unavailable`) are defined in ``_http_message`` and exported here;
one connection's protocol is ``_http_connection``, the pool is here.
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

from phoenixcp.platform.export._http_connection import Connection, Stale
from phoenixcp.platform.export._http_message import (
    ClientClosed,
    ConnectError,
    ConnectionClosed,
    HttpClientError,
    HttpResponse,
    ProtocolError,
    RequestTimeout,
)
from phoenixcp.platform.redact import redacted_endpoint

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


def _header_lines(headers: Mapping[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        if not name or any(c in name for c in "\r\n\0: ") or any(c in value for c in "\r\n\0"):
            raise ValueError(f"invalid HTTP header {name!r}: {value!r}")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("utf-8")


class HttpClient:
    """POSTs to one URL over a pool of keep-alive HTTP/1.1 connections.

    Nothing connects at construction. Concurrency: one event loop; :meth:`post` may be awaited
    concurrently, and holds one connection at a time. A cancelled ``post`` closes its
    connection. :meth:`close` is idempotent. ``https://`` verifies the server against
    ``ssl_context`` (the system's roots when None, as aiohttp does), sending
    ``server_hostname`` (default: the URL's host) as SNI and checking the certificate for it
    (``Host`` stays the URL's); pass a context with a client certificate for mTLS. ``headers``
    are sent with every request, after ``Host`` (which a ``Host`` entry replaces); credentials
    in the URL become ``Authorization: Basic``; no message, here or in the exceptions, shows
    their password. Raises ``ValueError`` for a URL or header it cannot send.
    """

    def __init__(self, url: str, *, max_connections: int = 16,
                 timeout: timedelta = timedelta(seconds=30),
                 headers: Mapping[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 max_body: int = 64 * 1024,
                 keepalive_expiry: timedelta = timedelta(seconds=15)) -> None:
        parts = urlsplit(url)
        shown = redacted_endpoint(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"{shown!r} is not an http:// or https:// URL with a host")
        if (ssl_context is not None or server_hostname) and parts.scheme != "https":
            raise ValueError(f"ssl_context and server_hostname need an https:// URL, not "
                             f"{shown!r}")
        if max_connections < 1 or max_body < 0:
            raise ValueError("max_connections must be positive and max_body not negative")
        try:
            port = parts.port
        except ValueError:  # urllib's message quotes the "port": part of a password, maybe
            raise ValueError(f"{shown!r}: its port is not a number from 0 to 65535 (in a "
                             "password, / ? and # must be percent-encoded: %2F %3F %23)"
                             ) from None
        self._host = parts.hostname.encode("idna").decode("ascii")
        self._port = port or _DEFAULT_PORTS[parts.scheme]
        self._https = parts.scheme == "https"
        self._ssl = ssl_context
        self._server_hostname = server_hostname or self._host.rstrip(".")
        self._origin = f"{self._host}:{self._port}"
        self.max_connections = max_connections
        self.max_body = max_body
        self._timeout = timeout.total_seconds()
        self._expiry = keepalive_expiry.total_seconds()
        self._prefix = self._request_prefix(shown, parts.path, parts.query, parts.username,
                                            parts.password, headers or {})
        self._idle: list[Connection] = []  # most recently used last
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._open: set[Connection] = set()
        self._slots = 0  # connections open or being opened, idle ones included
        self._closed = False

    def _request_prefix(self, shown: str, path: str, query: str, user: str | None,
                        password: str | None, headers: Mapping[str, str]) -> bytes:
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
            try:
                token = f"{unquote(user)}:{unquote(password or '')}".encode("latin-1")
            except UnicodeEncodeError:  # whose message quotes the character
                raise ValueError(f"{shown!r}: Basic credentials are Latin-1; the user name "
                                 "or password has a character that is not") from None
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
                except Stale:
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

    async def _acquire(self, *, fresh: bool) -> Connection:
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
            waiter: asyncio.Future[Connection | None] = (
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

    def _put_back(self, conn: Connection | None) -> None:
        if conn is None:
            self._free_slot()
        else:
            self._release(conn, reusable=True)

    def _hand_over(self, conn: Connection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _free_slot(self) -> None:
        if not self._hand_over(None):
            self._slots -= 1

    def _release(self, conn: Connection, *, reusable: bool) -> None:
        if reusable and conn.usable and not self._closed:
            if not self._hand_over(conn):
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
        else:
            conn.abort()
            if not self._closed:
                self._free_slot()

    def _lost(self, conn: Connection) -> None:
        """A connection ended (called by it); an idle one gives its slot back."""
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
            self._free_slot()

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        context = None
        if self._https:
            if self._ssl is None:
                self._ssl = _default_ssl_context()
            context = self._ssl
        try:
            _, conn = await loop.create_connection(
                lambda: Connection(self), self._host, self._port, ssl=context,
                server_hostname=self._server_hostname if context else None)
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
