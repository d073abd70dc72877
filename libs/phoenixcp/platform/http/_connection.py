"""One HTTP/1.1 connection of ``HttpServer``: an ``asyncio.Protocol`` that llhttp (httptools)
calls back from ``feed_data``, and what the connections of one server share.

The request path is llhttp's callbacks (one Python call per header), one ``HttpRequest``, one
task for the handler and one ``transport.write``. It reads no clock but ``monotonic_ns`` once
(the request's receive time) and arms no timer: deadlines are compared, by the server's
sweeper, with the clock the sweeper reads.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Mapping
from time import monotonic, monotonic_ns
from typing import cast

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
    parse_url,
)

from phoenixcp.platform.http._message import (
    HttpHandler,
    HttpLimits,
    HttpRequest,
    HttpResponse,
)

__all__ = ["Connection", "ServerState"]

log = logging.getLogger("phoenixcp.platform.http")


class ServerState:
    """Routes, limits, the sweeper's clock and ``Date`` line, and the open connections of one
    server. ``stopping`` (set by the server) makes connections close once they have answered;
    ``all_closed`` resolves when the last one goes."""

    def __init__(self, routes: Mapping[tuple[str, str], HttpHandler], limits: HttpLimits) -> None:
        self.limits = limits
        self.routes: dict[bytes, dict[bytes, HttpHandler]] = {}
        for (method, path), handler in routes.items():
            self.routes.setdefault(path.encode("latin-1"), {})[method.upper().encode()] = handler
        self.not_allowed = {
            path: _answer_with(HttpResponse.text(405, "405: Method Not Allowed", headers={
                "Allow": ", ".join(sorted(m.decode() for m in methods))}))
            for path, methods in self.routes.items()}
        self.keepalive = limits.keepalive_timeout.total_seconds()
        self.request_timeout = limits.request_timeout.total_seconds()
        self.linger = limits.linger.total_seconds()
        self.connections: set[Connection] = set()
        self.stopping = False
        self.all_closed: asyncio.Future[None] | None = None
        self.now = monotonic()
        self.date = b""

    def forget(self, connection: Connection) -> None:
        """A connection is closed and answers nothing more."""
        self.connections.discard(connection)
        if not self.connections and self.all_closed is not None and not self.all_closed.done():
            self.all_closed.set_result(None)


def _answer_with(response: HttpResponse) -> HttpHandler:
    async def answer(request: HttpRequest) -> HttpResponse:
        return response
    return answer


class _Refusal(Exception):
    """Raised in a parser callback: answer with ``status`` and ``message``, then close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.response = HttpResponse.text(status, message + "\n")


_NOT_FOUND = _answer_with(HttpResponse.text(404, "404: Not Found"))
_INTERNAL_ERROR = HttpResponse.text(
    500, "500: Internal Server Error: the request was not processed; the server logged why\n")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_END = b"\r\n"
_END_KEEP_ALIVE = b"Connection: keep-alive\r\n\r\n"  # HTTP/1.0 clients need to be told
_END_CLOSE = b"Connection: close\r\n\r\n"


class Connection(asyncio.Protocol):
    """One client connection: llhttp calls the ``on_*`` methods from ``feed_data``."""

    __slots__ = (
        "_body", "_body_size", "_busy", "_closed", "_continue", "_deadline", "_draining",
        "_head_raw", "_head_size", "_headers", "_ignore_input", "_in_head", "_in_message",
        "_keep_alive", "_limits", "_lingering", "_n_headers", "_parser", "_queue", "_read_paused",
        "_received_ns", "_ssl_object", "_state", "_task", "_transport", "_url", "_write_deadline",
        "_write_paused")

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._limits = state.limits
        self._parser = HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._ssl_object: ssl.SSLObject | None = None
        self._queue: deque[tuple[HttpRequest, HttpHandler] | _Refusal] = deque()
        self._task: asyncio.Task[None] | None = None
        self._body: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}
        self._url = b""
        self._body_size = self._n_headers = self._head_size = self._head_raw = 0
        self._received_ns = 0
        self._keep_alive = True
        self._busy = self._closed = self._continue = self._draining = False
        self._in_head = self._in_message = self._lingering = self._ignore_input = False
        self._read_paused = self._write_paused = False
        self._deadline = state.now + state.request_timeout
        self._write_deadline = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._ssl_object = transport.get_extra_info("ssl_object")
        self._state.connections.add(self)
        if self._state.stopping:  # accepted as shutdown began
            self.drain()

    def data_received(self, data: bytes) -> None:
        if self._ignore_input:
            return
        try:
            self._parser.feed_data(data)
        except HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, _Refusal):
                log.error("HTTP request parsing failed", exc_info=cause)
                cause = _Refusal(500, "500: Internal Server Error")
            self._refuse(cause)
            return
        except HttpParserUpgrade:
            self._ignore_input = True  # what follows is not HTTP/1.1: answer, then close
        except HttpParserError as exc:
            self._refuse(_Refusal(400, f"400: Bad Request: {exc}"))
            return
        if self._in_head:
            # llhttp hands a header line over only when it is complete: bound what it buffers
            # (counting whole reads after the one that began the request, which we cannot
            # split: the bound is max_header_bytes plus one read).
            if self._head_raw < 0:
                self._head_raw = 0
            else:
                self._head_raw += len(data)
                if self._head_raw > self._limits.max_header_bytes:
                    self._refuse(_Refusal(431, "431: Request Header Fields Too Large: over "
                                          f"{self._limits.max_header_bytes} bytes"))
                    return
        if self._busy and (self._queue or self._in_message):
            # Input beyond the request being answered: stop reading until it is answered.
            # Not pausing for the request itself saves two epoll_ctl calls per request.
            self._pause()

    def eof_received(self) -> bool | None:
        if self._lingering or not (self._busy or self._queue):
            return False  # the transport closes itself
        self._ignore_input = self._draining = True  # answer what came, then close
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = self._ignore_input = True
        self._queue.clear()
        if not self._busy:
            self._state.forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._write_deadline = self._state.now + self._state.request_timeout
        self._pause()

    def resume_writing(self) -> None:
        self._write_paused = False
        if not (self._busy or self._queue):
            self._resume()

    # llhttp callbacks, in the order it calls them

    def on_message_begin(self) -> None:
        self._in_message = self._in_head = True
        self._headers = {}
        self._url = b""
        self._n_headers = self._head_size = self._body_size = 0
        self._head_raw = -1  # this read began the request: data_received does not count it
        self._deadline = self._state.now + self._state.request_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_header_bytes:
            raise _Refusal(414, "414: URI Too Long: the request target is over "
                           f"{self._limits.max_header_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._n_headers += 1
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._limits.max_header_bytes \
                or self._n_headers > self._limits.max_headers:
            raise _Refusal(431, "431: Request Header Fields Too Large: over "
                           f"{self._limits.max_headers} lines or "
                           f"{self._limits.max_header_bytes} bytes")
        self._headers.setdefault(name.lower(), value)

    def on_headers_complete(self) -> None:
        self._received_ns = monotonic_ns()
        self._in_head = False
        parser, headers = self._parser, self._headers
        self._keep_alive = parser.should_keep_alive()
        length = headers.get(b"content-length")
        if length is not None and int(length) > self._limits.max_body_bytes:
            raise _Refusal(413, f"413: Request Entity Too Large: the body of {int(length)} "
                           f"bytes is over the limit of {self._limits.max_body_bytes} bytes")
        if parser.should_upgrade():
            self._keep_alive = False
            if int(length or 0) or b"transfer-encoding" in headers:
                raise _Refusal(400, "400: Bad Request: protocol upgrades are not served; "
                               "send the request without Upgrade")
        expect = headers.get(b"expect")
        if expect is not None:
            if expect.lower() != b"100-continue":
                raise _Refusal(417, f"417: Expectation Failed: Expect {expect!r} is not served")
            if parser.get_http_version() != "1.0":
                if self._busy or self._queue:
                    self._continue = True  # after the answers before it
                elif self._transport is not None:
                    self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limits.max_body_bytes:
            raise _Refusal(413, "413: Request Entity Too Large: the body is over the limit "
                           f"of {self._limits.max_body_bytes} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        chunks = self._body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        path, _, query = self._url.partition(b"?")
        method = self._parser.get_method()
        methods = self._state.routes.get(path)
        if methods is None and path[:1] != b"/":
            path, query = _absolute_form(self._url, path, query)
            methods = self._state.routes.get(path)
        handler = methods.get(method) if methods is not None else None
        if handler is None:
            handler = self._state.not_allowed[path] if methods is not None else _NOT_FOUND
        request = HttpRequest(method.decode(), path.decode("latin-1"), query.decode("latin-1"),
                              self._headers, body, self._received_ns, self._keep_alive,
                              self._ssl_object)
        self._queue.append((request, handler))
        if not self._busy:
            self._next()

    # answering

    def _next(self) -> None:
        """Answer the oldest request or refusal in the queue; else read on, or close."""
        if self._queue:
            item = self._queue.popleft()
            if isinstance(item, _Refusal):
                self._write(item.response, None, close=True)
                self._linger()
            else:
                self._busy = True
                self._task = asyncio.get_running_loop().create_task(self._answer(*item))
            return
        if self._draining and not self._in_message:
            self._close()
            return
        if self._continue and self._transport is not None:
            self._continue = False
            self._transport.write(_CONTINUE)
        if self._read_paused and not self._write_paused:
            self._deadline = self._state.now + (self._state.request_timeout
                                                  if self._in_message else self._state.keepalive)
            self._resume()

    async def _answer(self, request: HttpRequest, handler: HttpHandler) -> None:
        try:
            response = await handler(request)
        except Exception:
            log.exception("HTTP handler failed; answered 500",
                          extra={"fields": {"method": request.method, "path": request.path}})
            response = _INTERNAL_ERROR
        finally:
            self._busy = False
            self._task = None
            if self._closed:
                self._state.forget(self)
        if self._closed:
            return
        close = not request.keep_alive or (self._draining and not self._queue)
        self._write(response, request, close=close)
        if close:
            self._close()
            return
        if not self._in_message:
            self._deadline = self._state.now + self._state.keepalive
        self._next()

    def _write(self, response: HttpResponse, request: HttpRequest | None, *, close: bool) -> None:
        assert self._transport is not None
        if close:
            end = _END_CLOSE
        elif request is not None and b"connection" in request.headers:
            end = _END_KEEP_ALIVE
        else:
            end = _END
        body = b"" if request is not None and request.method == "HEAD" else response.body
        self._transport.write(b"".join((response.head, self._state.date, end, body)))

    def _refuse(self, refusal: _Refusal) -> None:
        """Stop reading requests; answer ``refusal`` after what is queued, then close."""
        self._ignore_input = True
        self._in_message = False
        self._queue.append(refusal)
        if not self._busy:
            self._next()
        else:
            self._pause()

    def _linger(self) -> None:
        # Closing with unread input makes the kernel send a reset, which can reach the client
        # before our answer does: half-close, and read (and drop) what it still sends.
        assert self._transport is not None
        self._lingering = True
        self._deadline = self._state.now + self._state.linger
        if self._transport.can_write_eof():
            self._transport.write_eof()
        self._resume()

    def _close(self) -> None:
        self._ignore_input = True
        if self._transport is not None:
            self._transport.close()

    def _pause(self) -> None:
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._read_paused and self._transport is not None:
            self._read_paused = False
            self._transport.resume_reading()

    # called by HttpServer

    def tick(self, now: float) -> None:
        """Enforce the deadlines (the server calls this every fraction of a second)."""
        if self._closed:
            return
        if self._write_paused and now > self._write_deadline:
            self.abort()  # the client does not read its answers
        elif self._busy or self._queue or now <= self._deadline:
            return
        elif self._lingering:
            self.abort()
        elif self._in_message:
            self._refuse(_Refusal(408, "408: Request Timeout: the request was not received "
                                  f"within {self._state.request_timeout:g}s"))
        else:
            self._close()  # idle

    def drain(self) -> None:
        """Close once the requests received are answered (now, if there are none)."""
        self._draining = True
        if not (self._busy or self._queue or self._in_message):
            self._close()

    def abort(self) -> asyncio.Task[None] | None:
        """Drop the connection; the answering task (if any), cancelled."""
        if self._transport is not None:
            self._transport.abort()
        if self._task is not None:
            self._task.cancel()
        return self._task


def _absolute_form(url: bytes, path: bytes, query: bytes) -> tuple[bytes, bytes]:
    """(path, query) of an absolute-form target (``http://host/path?q``), as proxies send."""
    try:
        parsed = parse_url(url)
    except HttpParserError:
        return path, query
    return parsed.path or b"/", parsed.query or b""
