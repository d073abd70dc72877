"""What a request of ``HttpClient`` (see ``http_client``) ends in: a complete
:class:`HttpResponse`, or one of the exceptions below.

Exceptions (all :class:`~phoenixcp.errors.Unavailable`: retrying later may succeed)::

    HttpClientError      the request failed; what the server did with it is unknown
    ├── ConnectError       no connection: refused, unresolvable, TLS handshake failed
    ├── ConnectionClosed   the server closed the connection before the response was complete
    ├── ProtocolError      the response is not valid HTTP/1.1
    ├── RequestTimeout     no complete response within the timeout (also a TimeoutError)
    └── ClientClosed       the client was closed
"""

from __future__ import annotations

import codecs
import zlib
from typing import Final

from phoenixcp.errors import Unavailable

__all__ = [
    "ClientClosed",
    "ConnectError",
    "ConnectionClosed",
    "HttpClientError",
    "HttpResponse",
    "ProtocolError",
    "RequestTimeout",
]

_TEXT_CHARS: Final = 64 * 1024


class HttpClientError(Unavailable):
    """A request failed; the server may or may not have processed it."""


class ConnectError(HttpClientError):
    """No connection to the server: refused, unresolvable, or the TLS handshake failed."""


class ConnectionClosed(HttpClientError):
    """The server closed the connection before the response was complete."""


class ProtocolError(HttpClientError):
    """The server's response is not valid HTTP/1.1 (or switches protocols)."""


class RequestTimeout(HttpClientError, TimeoutError):
    """No complete response within the client's timeout."""


class ClientClosed(HttpClientError):
    """:meth:`HttpClient.close` was called."""


class HttpResponse:
    """A complete response: ``status``, headers (names case-insensitive), ``body``.

    ``body`` holds at most the client's ``max_body`` bytes; ``truncated`` says the server
    sent more (the connection was then closed rather than drained).
    """

    __slots__ = ("_raw_headers", "body", "status", "truncated")

    def __init__(self, status: int, raw_headers: list[tuple[bytes, bytes]], body: bytes,
                 truncated: bool = False) -> None:
        self.status = status
        self._raw_headers = raw_headers
        self.body = body
        self.truncated = truncated

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case); repeated headers joined by ``, ``."""
        wanted = name.lower().encode("latin-1")
        values = [v for k, v in self._raw_headers if k.lower() == wanted]
        return b", ".join(values).decode("latin-1") if values else None

    @property
    def headers(self) -> dict[str, str]:
        """Every header, under its lower-case name; repeated headers joined by ``, ``."""
        joined: dict[str, str] = {}
        for key, value in self._raw_headers:
            name, text = key.decode("latin-1").lower(), value.decode("latin-1")
            joined[name] = f"{joined[name]}, {text}" if name in joined else text
        return joined

    def text(self) -> str:
        """The body as text (gzip/deflate undone, the ``charset`` or UTF-8, bad bytes
        replaced): for an error message, so at most 64 K characters."""
        body = self.body
        if (self.header("content-encoding") or "").strip().lower() in ("gzip", "x-gzip",
                                                                       "deflate"):
            try:  # wbits 47: a gzip or a zlib header, detected
                body = zlib.decompressobj(wbits=47).decompress(body, _TEXT_CHARS * 4)
            except zlib.error:
                pass
        return body.decode(_charset(self.header("content-type")), "replace")[:_TEXT_CHARS]

    def __repr__(self) -> str:
        return f"<HttpResponse {self.status} {len(self.body)} bytes>"


def _charset(content_type: str | None) -> str:
    for param in (content_type or "").split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            try:
                return codecs.lookup(value.strip().strip('"')).name
            except LookupError:
                break
    return "utf-8"
