"""HttpServer on real loopback sockets: raw bytes for exact framing, aiohttp's client for a
client as it is really used.

Integration tier, not unit: every test opens sockets (tests/unit is "no sockets").
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from phoenixcp.platform.http import (
    HttpHandler,
    HttpLimits,
    HttpRequest,
    HttpResponse,
    HttpServer,
)
from phoenixcp.platform.tls import LocalCA, peer_spiffe_id

pytestmark = pytest.mark.integration

Reply = tuple[int, dict[str, str], bytes]


class App:
    """Handlers that say what they got; ``/slow`` waits for ``release``."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.slow_started = asyncio.Event()
        self.seen: list[str] = []

    async def echo(self, request: HttpRequest) -> HttpResponse:
        self.seen.append(request.path)
        return HttpResponse(200, request.body, content_type="application/octet-stream",
                            headers={"X-Query": request.query,
                                     "X-Org": request.header("x-scope-orgid") or "-"})

    async def slow(self, request: HttpRequest) -> HttpResponse:
        self.slow_started.set()
        await self.release.wait()
        self.seen.append(request.path)
        return HttpResponse.text(200, "slow done\n")

    async def boom(self, request: HttpRequest) -> HttpResponse:
        raise RuntimeError("handler bug")

    def routes(self) -> dict[tuple[str, str], HttpHandler]:
        return {("POST", "/echo"): self.echo, ("PUT", "/echo"): self.echo,
                ("POST", "/slow"): self.slow, ("POST", "/boom"): self.boom}


@asynccontextmanager
async def serve(limits: HttpLimits | None = None) -> AsyncIterator[tuple[App, int]]:
    app = App()
    server = HttpServer(app.routes(), host="127.0.0.1", port=0,
                        limits=limits or HttpLimits(max_body_bytes=64 * 1024))
    port = await server.start()
    try:
        yield app, port
    finally:
        app.release.set()
        await server.shutdown(timedelta(seconds=5))


def post(path: str, body: bytes = b"", *headers: str, method: str = "POST",
         version: str = "1.1") -> bytes:
    head = [f"{method} {path} HTTP/{version}", "Host: test",
            f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def read_reply(reader: asyncio.StreamReader, *, head_only: bool = False) -> Reply:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    body = b"" if head_only else await asyncio.wait_for(reader.readexactly(length), 5)
    return int(status_line.split()[1]), headers, body


async def at_eof(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 5) == b""
    except ConnectionResetError:
        return False  # a reset is not a clean close: the client may lose the answer


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    async with serve() as (_, port), connect(port) as (reader, writer):
        for i in range(3):
            writer.write(post(f"/echo?n={i}", b"x" * i, "X-Scope-OrgID: acme"))
            status, headers, body = await read_reply(reader)
            assert (status, body, headers["x-query"], headers["x-org"]) == (
                200, b"x" * i, f"n={i}", "acme")
            assert "connection" not in headers and headers["date"].endswith("GMT")


async def test_aiohttp_client_reuses_its_connection() -> None:
    async with serve() as (_, port), aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1)) as session:
        for i in range(20):
            async with session.post(f"http://127.0.0.1:{port}/echo", data=b"%d" % i) as r:
                assert r.status == 200 and await r.read() == b"%d" % i
        async with session.put(f"http://127.0.0.1:{port}/echo", data=b"put") as r:
            assert r.status == 200 and await r.read() == b"put"


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with serve() as (app, port), connect(port) as (reader, writer):
        writer.write(post("/slow", b"1") + post("/echo", b"2") + post("/echo", b"3"))
        await app.slow_started.wait()
        await asyncio.sleep(0.1)  # the later requests are parsed but wait their turn
        assert app.seen == []
        app.release.set()
        replies = [await read_reply(reader) for _ in range(3)]
        assert [body for _, _, body in replies] == [b"slow done\n", b"2", b"3"]
        assert app.seen == ["/slow", "/echo", "/echo"]


async def test_chunked_body() -> None:
    async with serve() as (_, port), connect(port) as (reader, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n")
        await asyncio.sleep(0.05)
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        assert (await read_reply(reader))[::2] == (200, b"hello world")


async def test_chunked_body_from_aiohttp() -> None:
    async def parts() -> AsyncIterator[bytes]:
        for i in range(10):
            yield b"part %d;" % i

    async with serve() as (_, port), aiohttp.ClientSession() as session, \
            session.post(f"http://127.0.0.1:{port}/echo", data=parts()) as r:
        assert r.status == 200
        assert await r.read() == b"".join(b"part %d;" % i for i in range(10))


async def test_content_length_over_the_limit_is_413_before_the_body() -> None:
    async with serve(HttpLimits(max_body_bytes=1000)) as (_, port), \
            connect(port) as (reader, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n")
        status, headers, body = await read_reply(reader)  # no byte of the body was sent
        assert status == 413 and headers["connection"] == "close"
        assert b"1001 bytes is over the limit of 1000 bytes" in body
        assert await at_eof(reader)


async def test_over_the_limit_with_the_body_sent_anyway_is_answered_not_reset() -> None:
    # Closing a socket with unread input sends a reset, and a reset can destroy the answer
    # in the client's receive buffer: the server half-closes and drains instead.
    async with serve(HttpLimits(max_body_bytes=1000)) as (_, port), \
            connect(port) as (reader, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 300000\r\n\r\n")
        writer.write(b"x" * 300_000)
        await asyncio.sleep(0.3)  # the answer arrives; we read it only now
        status, _, body = await read_reply(reader)
        assert status == 413 and b"over the limit" in body
        assert await at_eof(reader)


async def test_over_the_limit_with_aiohttp_sending_the_whole_body() -> None:
    # The client writes all of it before reading: the server must not reset the connection
    # (which could destroy its own answer) but half-close and drain.
    async with serve(HttpLimits(max_body_bytes=1000)) as (_, port), \
            aiohttp.ClientSession() as session:
        for size in (1001, 3 * 1024 * 1024):
            async with session.post(f"http://127.0.0.1:{port}/echo", data=b"x" * size) as r:
                assert r.status == 413, size
                assert "over the limit of 1000 bytes" in await r.text()


async def test_chunked_body_over_the_limit_is_413() -> None:
    async with serve(HttpLimits(max_body_bytes=1000)) as (_, port), \
            connect(port) as (reader, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            writer.write(b"190\r\n" + b"y" * 400 + b"\r\n")
        status, headers, body = await read_reply(reader)
        assert status == 413 and headers["connection"] == "close"
        assert b"over the limit of 1000 bytes" in body
        assert await at_eof(reader)


async def test_expect_100_continue() -> None:
    async with serve(HttpLimits(max_body_bytes=1000)) as (_, port), \
            connect(port) as (reader, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == \
            b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        assert (await read_reply(reader))[::2] == (200, b"hello")
        # Over the limit: 413 instead of 100, and the body is never asked for.
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        status, _, _ = await read_reply(reader)
        assert status == 413 and await at_eof(reader)


async def test_expect_100_continue_from_aiohttp() -> None:
    async with serve() as (_, port), aiohttp.ClientSession() as session, \
            session.post(f"http://127.0.0.1:{port}/echo", data=b"z" * 5000,
                         expect100=True) as r:
        assert r.status == 200 and await r.read() == b"z" * 5000


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 with prior knowledge
])
async def test_malformed_request_is_400_and_closes(raw: bytes) -> None:
    async with serve() as (_, port), connect(port) as (reader, writer):
        writer.write(raw)
        status, headers, body = await read_reply(reader)
        assert status == 400 and headers["connection"] == "close" and body.startswith(b"400")
        assert await at_eof(reader)


async def test_unknown_path_404_wrong_method_405_and_head() -> None:
    async with serve() as (_, port), connect(port) as (reader, writer):
        writer.write(post("/nope", b"abc"))
        assert (await read_reply(reader))[::2] == (404, b"404: Not Found")
        writer.write(post("/echo", method="GET"))
        status, headers, body = await read_reply(reader)
        assert (status, headers["allow"], body) == (405, "POST, PUT", b"405: Method Not Allowed")
        writer.write(post("/echo", method="HEAD"))
        status, headers, _ = await read_reply(reader, head_only=True)
        assert status == 405 and int(headers["content-length"]) > 0
        writer.write(post("http://test/echo?q=1", b"abs"))  # absolute form, as via a proxy
        status, headers, body = await read_reply(reader)  # HEAD's answer had no body
        assert (status, headers["x-query"], body) == (200, "q=1", b"abs")


async def test_http_1_0_closes_unless_keep_alive() -> None:
    async with serve() as (_, port):
        async with connect(port) as (reader, writer):
            writer.write(post("/echo", b"a", version="1.0"))
            status, headers, _ = await read_reply(reader)
            assert status == 200 and headers["connection"] == "close"
            assert await at_eof(reader)
        async with connect(port) as (reader, writer):
            for _ in range(2):
                writer.write(post("/echo", b"a", "Connection: keep-alive", version="1.0"))
                status, headers, _ = await read_reply(reader)
                assert status == 200 and headers["connection"] == "keep-alive"


async def test_connection_close() -> None:
    async with serve() as (_, port), connect(port) as (reader, writer):
        writer.write(post("/echo", b"bye", "Connection: close"))
        status, headers, body = await read_reply(reader)
        assert (status, headers["connection"], body) == (200, "close", b"bye")
        assert await at_eof(reader)


async def test_too_many_or_too_large_headers_are_431() -> None:
    limits = HttpLimits(max_headers=10, max_header_bytes=2048)
    async with serve(limits) as (_, port):
        for extra in ([f"X-H{i}: v" for i in range(11)], ["X-Big: " + "v" * 3000]):
            async with connect(port) as (reader, writer):
                writer.write(post("/echo", b"", *extra))
                status, headers, _ = await read_reply(reader)
                assert status == 431 and headers["connection"] == "close"
        async with connect(port) as (reader, writer):  # one header line that never ends
            writer.write(b"POST /echo HTTP/1.1\r\nX-Slow: ")
            for _ in range(4):
                await asyncio.sleep(0.02)
                writer.write(b"v" * 1000)
            assert (await read_reply(reader))[0] == 431


async def test_slow_and_idle_clients_are_cut_off() -> None:
    limits = HttpLimits(request_timeout=timedelta(seconds=0.3),
                        keepalive_timeout=timedelta(seconds=0.3))
    async with serve(limits) as (_, port):
        async with connect(port) as (reader, writer):  # a request that never completes
            writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
            status, headers, body = await read_reply(reader)
            assert status == 408 and headers["connection"] == "close"
            assert b"not received within 0.3s" in body
            assert await at_eof(reader)
        async with connect(port) as (reader, writer):  # idle after an answer
            writer.write(post("/echo", b"ok"))
            assert (await read_reply(reader))[0] == 200
            assert await at_eof(reader)
        async with connect(port) as (reader, _):  # never sends anything
            assert await at_eof(reader)


async def test_handler_exception_is_500_logged_once_and_the_connection_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    async with serve() as (_, port), connect(port) as (reader, writer):
        writer.write(post("/boom", b"x"))
        status, _, body = await read_reply(reader)
        assert status == 500 and b"handler bug" not in body
        writer.write(post("/echo", b"still here"))
        assert (await read_reply(reader))[::2] == (200, b"still here")
    failures = [r for r in caplog.records if "handler failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert "handler bug" in str(failures[0].exc_info[1])


async def test_shutdown_finishes_the_request_in_flight() -> None:
    app = App()
    server = HttpServer(app.routes(), host="127.0.0.1", port=0)
    port = await server.start()
    async with connect(port) as (reader, writer), connect(port) as (idle_reader, _):
        writer.write(post("/slow", b"1"))
        await app.slow_started.wait()
        stopping = asyncio.create_task(server.shutdown(timedelta(seconds=5)))
        assert await at_eof(idle_reader)  # an idle connection is closed at once
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)  # no longer accepting
        assert not stopping.done()
        app.release.set()
        status, headers, body = await read_reply(reader)
        assert (status, headers["connection"], body) == (200, "close", b"slow done\n")
        await asyncio.wait_for(stopping, 5)
        await server.shutdown()  # idempotent


async def test_shutdown_grace_aborts_what_does_not_finish() -> None:
    app = App()
    server = HttpServer(app.routes(), host="127.0.0.1", port=0)
    port = await server.start()
    async with connect(port) as (reader, writer):
        writer.write(post("/slow", b"1"))
        await app.slow_started.wait()
        await asyncio.wait_for(server.shutdown(timedelta(seconds=0.2)), 5)
        assert await reader.read() == b""


async def test_tls_with_client_certificate(tmp_path: Path) -> None:
    ca = LocalCA.open(tmp_path / "ca")
    ca_file, cert, key = ca.issue("metrics-pipeline", ttl=dt.timedelta(hours=1)).write(
        tmp_path / "server", "server")
    client_ca, client_cert, client_key = ca.issue("team-a", ttl=dt.timedelta(hours=1)).write(
        tmp_path / "client", "client")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
    server_ctx.load_cert_chain(cert, key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(client_ca))
    client_ctx.load_cert_chain(client_cert, client_key)

    peers: list[str | None] = []

    async def whoami(request: HttpRequest) -> HttpResponse:
        assert request.ssl_object is not None
        der = request.ssl_object.getpeercert(binary_form=True)
        assert der is not None
        peers.append(peer_spiffe_id(ssl.DER_cert_to_PEM_cert(der).encode()))
        return HttpResponse.text(200, "ok")

    server = HttpServer({("POST", "/who"): whoami}, host="127.0.0.1", port=0,
                        ssl_context=server_ctx)
    port = await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.post(f"https://localhost:{port}/who", data=b"x" * 50_000,
                                        ssl=client_ctx) as r:
                    assert r.status == 200
    finally:
        await server.shutdown(timedelta(seconds=5))
    assert peers == ["spiffe://phoenix/team-a"] * 2


def test_responses_refuse_what_would_break_framing() -> None:
    for bad in ({"Content-Length": "1"}, {"Connection": "close"}, {"X-A": "b\r\nX-Injected: 1"}):
        with pytest.raises(ValueError):
            HttpResponse(200, headers=bad)
    with pytest.raises(ValueError, match="200-599"):
        HttpResponse(101)
    assert b"Content-Length" not in HttpResponse(204).head
