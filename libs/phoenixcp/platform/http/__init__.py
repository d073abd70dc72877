"""Phoenix's HTTP/1.1 server (asyncio + llhttp, ADR 0010): the data path's receivers and every
service's ``/metrics`` run on it. Import the server from here, not from its private modules."""

from phoenixcp.platform.http._message import HttpHandler, HttpLimits, HttpRequest, HttpResponse
from phoenixcp.platform.http._server import HttpServer

__all__ = ["HttpHandler", "HttpLimits", "HttpRequest", "HttpResponse", "HttpServer"]
