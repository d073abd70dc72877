"""Client CPU per remote-write POST: aiohttp's client against ours (ADR 0011).

    .venv/bin/python bench/pipeline/client_bench.py [--requests 4000] [--rounds 3]
        [--body-bytes 30000] [--concurrency 4]

A minimal HTTP/1.1 server (asyncio + llhttp, answering ``204``) runs in its own process on
core 1; each client runs in a fresh process on core 0 (``taskset``, when installed), POSTs a
``--body-bytes`` body (random bytes, like snappy output) ``--requests`` times over
``--concurrency`` keep-alive connections after a warm-up, and reports the process's CPU time
(user + system, the kernel's loopback TCP included) per POST. Clients take turns each round;
the medians of ``--rounds`` rounds are printed. ``streams`` is the floor: a bare asyncio
streams loop that parses nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

_RESPONSE = b"HTTP/1.1 204 No Content\r\nServer: bench\r\n\r\n"
CLIENTS = ("aiohttp", "phoenix", "streams")


def _pinned(core: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if shutil.which("taskset") else argv


# The server: one process, one core.

class _Answer(asyncio.Protocol):
    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_message_complete(self) -> None:
        assert self._transport is not None
        self._transport.write(_RESPONSE)


async def _serve() -> None:
    server = await asyncio.get_running_loop().create_server(_Answer, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


# The clients: each returns an async "post once" and a closer.

Post = Callable[[], Awaitable[None]]


async def _aiohttp_client(url: str, body: bytes, concurrency: int
                          ) -> tuple[Post, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                    timeout=aiohttp.ClientTimeout(total=30),
                                    skip_auto_headers=("Accept-Encoding",))

    async def post() -> None:
        async with session.post(url, data=body) as response:
            await response.read()
            assert response.status == 204

    return post, session.close


async def _phoenix_client(url: str, body: bytes, concurrency: int
                          ) -> tuple[Post, Callable[[], Awaitable[None]]]:
    from phoenixcp.platform.export.http_client import HttpClient

    client = HttpClient(url, max_connections=concurrency, timeout=timedelta(seconds=30))

    async def post() -> None:
        assert (await client.post(body)).status == 204

    return post, client.close


async def _streams_client(url: str, body: bytes, concurrency: int
                          ) -> tuple[Post, Callable[[], Awaitable[None]]]:
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def post() -> None:
        conn = idle.pop() if idle else await asyncio.open_connection("127.0.0.1", port)
        conn[1].write(request)
        await conn[0].readuntil(b"\r\n\r\n")
        idle.append(conn)

    async def close() -> None:
        for _, writer in idle:
            writer.close()

    return post, close


async def _measure(client: str, url: str, args: argparse.Namespace) -> dict[str, float]:
    body = os.urandom(args.body_bytes)
    make = {"aiohttp": _aiohttp_client, "phoenix": _phoenix_client,
            "streams": _streams_client}[client]
    post, close = await make(url, body, args.concurrency)

    async def run(n: int) -> None:
        async def worker(share: int) -> None:
            for _ in range(share):
                await post()
        await asyncio.gather(*(worker(n // args.concurrency) for _ in range(args.concurrency)))

    await run(args.requests // 10)  # warm-up: connections open, code paths hot
    done = args.requests // args.concurrency * args.concurrency
    cpu, wall = time.process_time(), time.perf_counter()
    await run(args.requests)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await close()
    return {"cpu_us_per_post": cpu / done * 1e6, "posts_per_s": done / wall}


def _run_client(client: str, url: str, args: argparse.Namespace) -> dict[str, float]:
    argv = [sys.executable, __file__, "--client", client, "--url", url,
            "--requests", str(args.requests), "--body-bytes", str(args.body_bytes),
            "--concurrency", str(args.concurrency)]
    out = subprocess.run(_pinned(0, argv), check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--body-bytes", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return
    if args.client:
        print(json.dumps(asyncio.run(_measure(args.client, args.url, args))))
        return

    server = subprocess.Popen(_pinned(1, [sys.executable, __file__, "--serve"]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{int(server.stdout.readline())}/api/v1/write"
        rounds: dict[str, list[dict[str, float]]] = {c: [] for c in CLIENTS}
        for _ in range(args.rounds):
            for client in CLIENTS:
                rounds[client].append(_run_client(client, url, args))
    finally:
        server.terminate()
        server.wait()
    pinned = "client on core 0, server on core 1" if shutil.which("taskset") else "not pinned"
    print(f"{args.requests} POSTs of {args.body_bytes} bytes, {args.concurrency} keep-alive "
          f"connections, {pinned}; median of {args.rounds} rounds")
    print(f"{'client':<10}{'CPU us/POST':>14}{'POSTs/s':>10}   rounds (CPU us/POST)")
    for client, results in rounds.items():
        cpu = [r["cpu_us_per_post"] for r in results]
        rate = statistics.median(r["posts_per_s"] for r in results)
        print(f"{client:<10}{statistics.median(cpu):>14.1f}{rate:>10.0f}   "
              + ", ".join(f"{c:.1f}" for c in cpu))


if __name__ == "__main__":
    main()
