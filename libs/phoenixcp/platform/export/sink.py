"""A remote-write receiver that only counts what it gets: the null backend.

``phoenixctl up`` runs it when no backend is configured; tests and benchmarks use it as a real
HTTP server to export to. ``POST /api/v1/write`` (any path works) takes a snappy-compressed
``WriteRequest`` and counts its series and samples, per tenant (``X-Scope-OrgID``);
``GET /stats`` answers the counts as JSON. ``status`` (or the per-request ``decide`` hook)
makes it answer an error instead, to play an outage (503) or bad data (400); refused requests
are not counted.

Run alone: ``python -m phoenixcp.platform.export.sink --port 9201``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import cramjam
from aiohttp import web

from phoenixcp.api.prometheus import remote_pb2

__all__ = ["CountingSink", "SinkCounts"]

#: (uncompressed body, tenant) -> a status code to answer instead of 204, or None.
Decider = Callable[[bytes, str], int | None]


@dataclass(slots=True)
class SinkCounts:
    """What a sink accepted: requests, series, samples, and samples per tenant."""

    requests: int = 0
    series: int = 0
    samples: int = 0
    refused: int = 0
    by_tenant: Counter[str] = field(default_factory=Counter)


class CountingSink:
    """An aiohttp server on ``host:port`` (0: a free port) that counts remote-write data.

    Concurrency: one event loop. ``keep_bodies`` stores each accepted uncompressed body in
    ``bodies`` for tests. With ``ssl_context`` (a server context) it serves HTTPS, and
    requires client certificates when the context does. ``start``/``stop`` are idempotent.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, keep_bodies: bool = False,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._host, self._port = host, port
        self._ssl = ssl_context
        self.keep_bodies = keep_bodies
        self.counts = SinkCounts()
        self.bodies: list[bytes] = []
        #: Answer every write with this status instead of counting it (None: accept).
        self.status: int | None = None
        self.decide: Decider | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The remote-write URL to export to."""
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{self._host}:{self._port}/api/v1/write"

    async def start(self) -> None:
        """Listen; ``url`` is valid afterwards."""
        if self._runner is not None:
            return
        app = web.Application(client_max_size=64 << 20)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/{tail:.*}", self._write)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.create_server((self._host, self._port), reuse_port=False)
        self._port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, ssl_context=self._ssl).start()

    async def stop(self) -> None:
        """Close the listener and connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _write(self, request: web.Request) -> web.Response:
        tenant = request.headers.get("X-Scope-OrgID", "")
        if self.status is not None:
            self.counts.refused += 1
            return web.Response(status=self.status, text=f"sink answers {self.status}")
        try:
            body = bytes(cramjam.snappy.decompress_raw(await request.read()))
            message = remote_pb2.WriteRequest.FromString(body)
        except Exception as exc:
            self.counts.refused += 1
            return web.Response(status=400, text=f"cannot decode: {exc}")
        verdict = self.decide(body, tenant) if self.decide is not None else None
        if verdict is not None:
            self.counts.refused += 1
            return web.Response(status=verdict, text=f"sink refuses this request ({verdict})")
        samples = sum(len(series.samples) for series in message.timeseries)
        counts = self.counts
        counts.requests += 1
        counts.series += len(message.timeseries)
        counts.samples += samples
        counts.by_tenant[tenant] += samples
        if self.keep_bodies:
            self.bodies.append(body)
        return web.Response(status=204)

    async def _stats(self, request: web.Request) -> web.Response:
        c = self.counts
        return web.json_response({"requests": c.requests, "series": c.series,
                                  "samples": c.samples, "refused": c.refused,
                                  "by_tenant": dict(c.by_tenant)})


async def _serve(host: str, port: int) -> None:
    sink = CountingSink(host=host, port=port)
    await sink.start()
    print(f"counting sink on {sink.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sink.stop()


def main() -> None:
    """``python -m phoenixcp.platform.export.sink``: serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9201)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
