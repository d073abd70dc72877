"""The values an HTTP handler sees and returns, and a server's limits (see ``HttpServer``)."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus

from phoenixcp.errors import ConfigError

__all__ = ["HttpHandler", "HttpLimits", "HttpRequest", "HttpResponse"]

_SERVER_HEADERS = frozenset({"connection", "content-length", "date", "transfer-encoding"})


@dataclass(frozen=True, kw_only=True)
class HttpLimits:
    """What one request may send and how long a connection may take: bodies over
    ``max_body_bytes`` get 413, more than ``max_headers`` header lines or ``max_header_bytes``
    of them 431; a request not received within ``request_timeout`` gets 408, a connection idle
    for ``keepalive_timeout`` is closed, and after a refusal the server drains the connection
    for up to ``linger`` before closing it (see ``HttpServer``)."""

    max_body_bytes: int = 10 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    keepalive_timeout: timedelta = timedelta(seconds=75)
    request_timeout: timedelta = timedelta(seconds=60)
    linger: timedelta = timedelta(seconds=2)

    def __post_init__(self) -> None:
        for key in ("max_body_bytes", "max_header_bytes", "max_headers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"HttpLimits.{key} must be at least 1, not "
                                  f"{getattr(self, key)}", key=key)
        for key in ("keepalive_timeout", "request_timeout", "linger"):
            if getattr(self, key) <= timedelta(0):
                raise ConfigError(f"HttpLimits.{key} must be positive, not {getattr(self, key)}",
                                  key=key)


class HttpRequest:
    """One request with its whole body. ``headers`` maps lower-case names to the first value
    sent, as bytes; ``received_ns`` is ``time.monotonic_ns()`` when the headers were parsed."""

    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query", "received_ns",
                 "ssl_object")

    def __init__(self, method: str, path: str, query: str, headers: dict[bytes, bytes],
                 body: bytes, received_ns: int, keep_alive: bool,
                 ssl_object: ssl.SSLObject | None) -> None:
        self.method, self.path, self.query = method, path, query
        self.headers, self.body, self.received_ns = headers, body, received_ns
        self.keep_alive, self.ssl_object = keep_alive, ssl_object

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        value = self.headers.get(name.lower().encode("latin-1"))
        return None if value is None else value.decode("latin-1")


class HttpResponse:
    """A final answer (status 200-599), serialised at construction: share constant ones.
    ``Content-Length``, ``Date`` and ``Connection`` are the server's to write."""

    __slots__ = ("body", "head", "status")

    def __init__(self, status: int = 200, body: bytes = b"", *, content_type: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        if not 200 <= status <= 599:
            raise ValueError(f"HTTP status {status}: a handler's answer is 200-599")
        self.status, self.body = status, body
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}\r\n"]
        if content_type is not None:
            lines.append(f"Content-Type: {content_type}\r\n")
        for name, value in (headers or {}).items():
            if any(c in "\r\n\0:" for c in name) or any(c in "\r\n\0" for c in value):
                raise ValueError(f"header {name!r}: {value!r} would break the response")
            if name.lower() in _SERVER_HEADERS:
                raise ValueError(f"header {name!r} is written by the server")
            lines.append(f"{name}: {value}\r\n")
        if status not in (204, 304):
            lines.append(f"Content-Length: {len(body)}\r\n")
        # The status line and headers but Date and Connection, which the connection adds.
        self.head = "".join(lines).encode("latin-1")

    @classmethod
    def text(cls, status: int, text: str, *,
             headers: Mapping[str, str] | None = None) -> HttpResponse:
        """A ``text/plain; charset=utf-8`` answer."""
        return cls(status, text.encode(), content_type="text/plain; charset=utf-8",
                   headers=headers)


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]
