"""One keep-alive connection of ``HttpClient`` (see ``http_client``): an asyncio ``Protocol``
whose responses llhttp (``httptools``) parses as bytes arrive."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from phoenixcp.platform.export._http_message import (
    ConnectionClosed,
    HttpResponse,
    ProtocolError,
)

if TYPE_CHECKING:
    from phoenixcp.platform.export.http_client import HttpClient

__all__ = ["Connection", "Stale"]


class Stale(Exception):
    """A reused connection ended before any response byte: the one case worth a retry."""


class Connection(asyncio.Protocol):
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
            waiter.set_exception(Stale() if self.reused else ConnectionClosed(
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
            self._fail(Stale())
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
