"""The remote-write HTTP/1.1 client against real servers on loopback: scripted asyncio servers
(each test says what the peer does, byte for byte) and aiohttp's server as a realistic peer.

Loopback sockets only, no external server, a few seconds in all: fast enough for the unit tier.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web

from phoenixcp.errors import ConfigError, Unavailable
from phoenixcp.platform.export import (
    ExportOutcome,
    ExportResult,
    RemoteWriteConfig,
    RemoteWriteExporter,
    _http_message,
    http_client,
)
from phoenixcp.platform.export.http_client import (
    ClientClosed,
    ConnectError,
    ConnectionClosed,
    HttpClient,
    HttpClientError,
    ProtocolError,
    RequestTimeout,
)
from phoenixcp.platform.tls import LocalCA

pytestmark = pytest.mark.unit

NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
Handler = Callable[["Peer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Peer:
    """An asyncio server on 127.0.0.1 that runs ``handler`` per connection and records what
    it saw: connections, requests (head + body), and how many connections the client closed."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self._handler = handler
        self._ssl = ssl_context
        self.connections = 0
        self.active = 0
        self.most_active = 0
        self.client_closed = 0
        self.requests: list[bytes] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Peer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, scheme: str = "http", host: str = "127.0.0.1") -> str:
        assert self._server is not None
        return f"{scheme}://{host}:{self._server.sockets[0].getsockname()[1]}/api/v1/write"

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request, or None when the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.client_closed += 1
            return None
        match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        request = head + await reader.readexactly(int(match.group(1)) if match else 0)
        self.requests.append(request)
        return request

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await self._handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # cancelled: by __aexit__, and asyncio's streams log a cancelled handler
        finally:
            self.active -= 1
            writer.close()


def answering(*responses: bytes, close: bool = False) -> Handler:
    """Answer each request on a connection with the next of ``responses`` (the last one
    repeats), then close the connection if ``close``, else keep serving."""

    async def handler(peer: Peer, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        served = 0
        while await peer.read_request(reader) is not None:
            writer.write(responses[min(served, len(responses) - 1)])
            await writer.drain()
            served += 1
            if close:
                return

    return handler


def client(peer: Peer, **kw: object) -> HttpClient:
    return HttpClient(peer.url(), **kw)  # type: ignore[arg-type]


async def test_sequential_requests_share_one_keep_alive_connection() -> None:
    ports: list[int] = []

    async def write(request: web.Request) -> web.Response:
        assert request.transport is not None
        ports.append(request.transport.get_extra_info("peername")[1])
        body = await request.read()
        return web.Response(status=200, text=f"{len(body)} bytes",
                            headers={"Retry-After": "3"})

    async with AiohttpPeer(write) as url:
        http = HttpClient(url)
        for n in range(5):
            response = await http.post(b"x" * n)
            assert response.status == 200 and response.body == f"{n} bytes".encode()
            assert response.header("retry-after") == response.headers["retry-after"] == "3"
        await http.close()
    assert len(ports) == 5 and len(set(ports)) == 1


async def test_concurrent_requests_stay_within_the_pool_limit() -> None:
    async def slow(peer: Peer, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        while await peer.read_request(reader) is not None:
            await asyncio.sleep(0.01)
            writer.write(NO_CONTENT)

    async with Peer(slow) as peer:
        http = client(peer, max_connections=3)
        responses = await asyncio.gather(*(http.post(b"body") for _ in range(30)))
        assert {r.status for r in responses} == {204}
        assert peer.connections == 3 and peer.most_active == 3 and len(peer.requests) == 30
        await http.close()


async def test_waiting_callers_are_served_first_come_first_served() -> None:
    async with Peer(answering(NO_CONTENT)) as peer:
        http = client(peer, max_connections=1)
        await asyncio.gather(*(http.post(b"%d" % n) for n in range(10)))
        assert [r.rsplit(b"\r\n\r\n", 1)[1] for r in peer.requests] == [
            b"%d" % n for n in range(10)]
        assert peer.connections == 1
        await http.close()


async def test_a_cancelled_waiter_does_not_leak_its_place() -> None:
    async def slow(peer: Peer, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        while await peer.read_request(reader) is not None:
            await asyncio.sleep(0.05)
            writer.write(NO_CONTENT)

    async with Peer(slow) as peer:
        http = client(peer, max_connections=1)
        first = asyncio.create_task(http.post(b"1"))
        waiting = asyncio.create_task(http.post(b"2"))
        await asyncio.sleep(0.01)
        waiting.cancel()
        assert (await first).status == 204
        assert (await http.post(b"3")).status == 204
        assert peer.connections == 1
        await http.close()


async def test_chunked_response_and_reuse_after_it() -> None:
    async def chunked(peer: Peer, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while await peer.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: text/plain; charset=latin-1\r\n\r\n")
            for part in (b"bad ", b"sample \xe9", b"!"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
                await asyncio.sleep(0.001)
            writer.write(b"0\r\n\r\n")

    async with Peer(chunked) as peer:
        http = client(peer)
        for _ in range(2):
            response = await http.post(b"body")
            assert response.status == 400 and response.body == b"bad sample \xe9!"
            assert response.text() == "bad sample é!"
        assert peer.connections == 1
        await http.close()


async def test_body_delimited_by_close_then_a_new_connection() -> None:
    response = b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nboom"
    async with Peer(answering(response, close=True)) as peer:
        http = client(peer)
        for _ in range(2):
            answer = await http.post(b"body")
            assert (answer.status, answer.body) == (500, b"boom")
        assert peer.connections == 2
        await http.close()


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
    b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",  # a second, unasked
], ids=["connection-close", "http-1.0", "unsolicited-bytes"])
async def test_a_connection_the_server_did_not_leave_reusable_is_not_reused(
        response: bytes) -> None:
    async with Peer(answering(response)) as peer:  # the peer itself would keep serving
        http = client(peer)
        for _ in range(3):
            assert (await http.post(b"body")).status in (200, 204)
        assert peer.connections == 3
        await http.close()


async def test_an_idle_connection_closed_by_the_server_is_replaced_without_a_retry() -> None:
    async with Peer(answering(NO_CONTENT, close=True)) as peer:
        http = client(peer)
        assert (await http.post(b"1")).status == 204
        await asyncio.sleep(0.05)  # the server's FIN arrives while the connection is idle
        assert (await http.post(b"2")).status == 204
        assert peer.connections == 2 and len(peer.requests) == 2
        await http.close()


async def test_a_connection_idle_past_the_keepalive_expiry_is_closed() -> None:
    async with Peer(answering(NO_CONTENT)) as peer:
        http = client(peer, keepalive_expiry=timedelta(milliseconds=50))
        assert (await http.post(b"1")).status == 204
        assert (await http.post(b"2")).status == 204
        await asyncio.sleep(0.1)
        assert (await http.post(b"3")).status == 204
        await asyncio.sleep(0.01)
        assert peer.connections == 2 and peer.client_closed == 1
        await http.close()


@pytest.mark.parametrize("max_connections", [1, 16])
async def test_a_stale_connection_is_retried_once_on_a_new_one(max_connections: int) -> None:
    """The close crosses the second request: the server reads it, closes without a byte of
    an answer. The client sends it again on a new connection, which answers."""

    async def one_per_connection(peer: Peer, reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        await peer.read_request(reader)
        writer.write(NO_CONTENT)
        await peer.read_request(reader)  # and close

    async with Peer(one_per_connection) as peer:
        http = client(peer, max_connections=max_connections)
        assert (await http.post(b"1")).status == 204
        assert (await http.post(b"2")).status == 204
        assert peer.connections == 2 and len(peer.requests) == 3
        assert peer.requests[1] == peer.requests[2]
        await http.close()


async def test_no_retry_on_a_new_connection_nor_after_part_of_a_response() -> None:
    async with Peer(answering(b"", close=True)) as peer:  # reads, closes, never answers
        http = client(peer)
        with pytest.raises(ConnectionClosed, match="before responding"):
            await http.post(b"1")
        assert len(peer.requests) == 1
        await http.close()

    async def cut_second(peer: Peer, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        await peer.read_request(reader)
        writer.write(NO_CONTENT)
        await peer.read_request(reader)
        writer.write(b"HTTP/1.1 2")
        await writer.drain()

    async with Peer(cut_second) as peer:
        http = client(peer)
        assert (await http.post(b"1")).status == 204
        with pytest.raises(ConnectionClosed, match="during the response"):
            await http.post(b"2")
        assert len(peer.requests) == 2
        await http.close()


async def test_a_hanging_server_times_out_and_its_connection_is_closed() -> None:
    async def hang(peer: Peer, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        if await peer.read_request(reader) is not None:
            await peer.read_request(reader)  # never answers; returns when the client closes

    async with Peer(hang) as peer:
        http = client(peer, timeout=timedelta(milliseconds=200))
        with pytest.raises(RequestTimeout, match=r"within 0\.2 s") as caught:
            await http.post(b"body")
        assert isinstance(caught.value, TimeoutError)
        await asyncio.sleep(0.05)
        assert peer.client_closed == 1  # discarded, not pooled
        await http.close()

        exporter = RemoteWriteExporter(config=RemoteWriteConfig(
            url=peer.url(), timeout=timedelta(milliseconds=200)))
        outcome = await exporter.export(b"", tenant="", snappy=True)
        assert outcome.result is ExportResult.RETRYABLE
        assert outcome.reason.startswith("RequestTimeout: no complete response")
        await exporter.shutdown()


async def test_a_server_that_closes_mid_response_is_an_error_and_not_reused() -> None:
    async def cut_second(peer: Peer, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        await peer.read_request(reader)
        writer.write(NO_CONTENT)
        await peer.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()
        await asyncio.sleep(0.05)  # then close

    async with Peer(cut_second) as peer:
        http = client(peer)
        assert (await http.post(b"1")).status == 204
        with pytest.raises(ConnectionClosed, match="during the response"):
            await http.post(b"2")
        assert (await http.post(b"3")).status == 204
        assert peer.connections == 2 and len(peer.requests) == 3
        await http.close()


async def test_a_malformed_response_is_a_protocol_error_and_closes_the_connection() -> None:
    async def first_bad(peer: Peer, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        bad = peer.connections == 1
        while await peer.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 2x4 Nope\r\n\r\n" if bad else NO_CONTENT)

    async with Peer(first_bad) as peer:
        http = client(peer)
        with pytest.raises(ProtocolError, match="malformed response"):
            await http.post(b"1")
        assert (await http.post(b"2")).status == 204
        assert peer.connections == 2
        await http.close()


async def test_interim_responses_are_skipped() -> None:
    response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    async with Peer(answering(response)) as peer:
        http = client(peer)
        assert (await http.post(b"1")).status == 204
        assert (await http.post(b"2")).status == 204
        assert peer.connections == 1
        await http.close()


async def test_a_long_error_body_is_cut_and_its_connection_closed() -> None:
    big = b"e" * 1_000_000
    response = b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)
    async with Peer(answering(response)) as peer:
        http = client(peer, max_body=1000)
        for _ in range(2):
            answer = await http.post(b"1")
            assert answer.status == 500 and answer.body == b"e" * 1000 and answer.truncated
        assert peer.connections == 2
        await http.close()


async def test_large_request_bodies_arrive_intact() -> None:
    async def echo_size(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(text=f"{len(body)} {hash(body)}")

    body = bytes(range(256)) * (32 * 1024)  # 8 MiB
    async with AiohttpPeer(echo_size) as url:
        http = HttpClient(url, max_connections=2)
        answers = await asyncio.gather(*(http.post(body) for _ in range(3)))
        assert {a.text() for a in answers} == {f"{len(body)} {hash(body)}"}
        await http.close()


async def test_request_line_and_headers() -> None:
    async with Peer(answering(NO_CONTENT)) as peer:
        url = peer.url(host="us%20er:p%40ss@127.0.0.1").replace("/api/v1/write", "/a b?x=1")
        http = HttpClient(url, headers={"X-Extra": "1", "accept": "text/plain"})
        await http.post(b"hello", headers={"X-Scope-OrgID": "team-a"})
        head, body = peer.requests[0].split(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        port = url.split(":")[3].split("/")[0]
        assert lines[0] == "POST /a%20b?x=1 HTTP/1.1" and body == b"hello"
        assert sorted(lines[1:]) == sorted([
            f"Host: 127.0.0.1:{port}", "X-Extra: 1", "accept: text/plain",
            "Authorization: Basic dXMgZXI6cEBzcw==", "X-Scope-OrgID: team-a",
            "Content-Length: 5"])
        with pytest.raises(ValueError, match="invalid HTTP header"):
            await http.post(b"", headers={"X-Scope-OrgID": "a\r\nInjected: 1"})
        await http.close()
    with pytest.raises(ValueError, match="sets"):
        HttpClient("http://h/", headers={"Content-Length": "1"})
    with pytest.raises(ConfigError, match="invalid HTTP header"):
        RemoteWriteExporter(config=RemoteWriteConfig(url="http://h/", headers={"A": "b\nc"}))


async def test_the_exporter_sends_what_it_sent_with_aiohttp() -> None:
    refusal = (b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 10\r\n"
               b"\r\nslow down ")
    async with Peer(answering(NO_CONTENT, refusal)) as peer:
        exporter = RemoteWriteExporter(config=RemoteWriteConfig(
            url=peer.url(), tenant_header=True, headers={"Authorization": "Bearer t",
                                                         "user-agent": "custom"}))
        assert (await exporter.export(b"x", tenant="a", snappy=True)).result is \
            ExportResult.SUCCESS
        outcome = await exporter.export(b"x", tenant="", snappy=True)
        assert outcome == ExportOutcome(ExportResult.RETRYABLE, "HTTP 429: slow down", 7.0)
        headers = {line.split(": ", 1)[0].lower(): line.split(": ", 1)[1]
                   for line in peer.requests[0].split(b"\r\n\r\n")[0].decode().split("\r\n")[1:]}
        assert headers == {
            "host": peer.url().split("/")[2], "content-encoding": "snappy",
            "content-type": "application/x-protobuf",
            "x-prometheus-remote-write-version": "0.1.0", "user-agent": "custom",
            "authorization": "Bearer t", "x-scope-orgid": "a", "accept": "*/*",
            "content-length": "1"}
        assert b"x-scope-orgid" not in peer.requests[1].lower()
        await exporter.shutdown()
        await exporter.shutdown()
        assert (await exporter.export(b"x", tenant="a")).reason == "exporter is shut down"


async def test_connect_errors_and_close() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    http = HttpClient(f"http://127.0.0.1:{port}/")
    with pytest.raises(ConnectError, match="cannot connect") as caught:
        await http.post(b"")
    assert isinstance(caught.value, Unavailable)
    await http.close()
    await http.close()
    with pytest.raises(ClientClosed):
        await http.post(b"")


def test_all_lists_the_public_names_including_those_of_the_private_module() -> None:
    defined_here = {http_client.__name__, _http_message.__name__}
    assert set(http_client.__all__) == {name for name in vars(http_client)
                                        if not name.startswith("_")
                                        and getattr(getattr(http_client, name), "__module__",
                                                    "") in defined_here}
    assert set(_http_message.__all__) <= set(http_client.__all__)


async def test_close_fails_requests_in_flight() -> None:
    async def hang(peer: Peer, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        await peer.read_request(reader)
        await peer.read_request(reader)

    async with Peer(hang) as peer:
        http = client(peer)
        pending = asyncio.create_task(http.post(b"1"))
        await asyncio.sleep(0.05)
        await http.close()
        with pytest.raises(ClientClosed):
            await pending


# TLS, with the repository's local CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, LocalCA]:
    directory = tmp_path_factory.mktemp("pki")
    ca = LocalCA.open(directory / "ca")
    ca_file, cert, key = ca.issue("remote-write", ttl=dt.timedelta(hours=1)).write(
        directory, "server")
    return ca_file, cert, key, ca


def server_context(pki: tuple[Path, Path, Path, LocalCA], *, mtls: bool,
                   names: list[str]) -> ssl.SSLContext:
    ca_file, cert, key, _ = pki
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED if mtls else ssl.CERT_NONE
    context.sni_callback = lambda sock, name, ctx: names.append(str(name))
    return context


async def test_https_verifies_the_server_and_sends_sni(
        pki: tuple[Path, Path, Path, LocalCA]) -> None:
    names: list[str] = []
    trusted = ssl.create_default_context(cafile=str(pki[0]))
    async with Peer(answering(NO_CONTENT), server_context(pki, mtls=False, names=names)) as peer:
        http = HttpClient(peer.url("https", "localhost"), ssl_context=trusted)
        assert (await http.post(b"1")).status == 204
        assert (await http.post(b"2")).status == 204
        assert peer.connections == 1 and names == ["localhost"]
        await http.close()

        default = HttpClient(peer.url("https", "localhost"))  # system roots: not our CA
        with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await default.post(b"1")
        await default.close()


async def test_mtls_presents_the_client_certificate(
        pki: tuple[Path, Path, Path, LocalCA], tmp_path: Path) -> None:
    ca_file, _, _, ca = pki
    _, cert, key = ca.issue("metrics-pipeline", ttl=dt.timedelta(hours=1)).write(
        tmp_path, "client")
    with_cert = ssl.create_default_context(cafile=str(ca_file))
    with_cert.load_cert_chain(cert, key)
    async with Peer(answering(NO_CONTENT), server_context(pki, mtls=True, names=[])) as peer:
        http = HttpClient(peer.url("https"), ssl_context=with_cert)
        assert (await http.post(b"1")).status == 204
        await http.close()

        without = HttpClient(peer.url("https"),
                             ssl_context=ssl.create_default_context(cafile=str(ca_file)))
        with pytest.raises(HttpClientError):
            await without.post(b"1")
        await without.close()


async def test_server_hostname_replaces_the_url_host_for_sni_and_the_check(
        pki: tuple[Path, Path, Path, LocalCA], tmp_path: Path) -> None:
    ca_file, _, _, ca = pki
    _, cert, key = ca.issue("remote-write", ttl=dt.timedelta(hours=1),
                            hosts=["backend.internal"]).write(tmp_path, "named")
    names: list[str] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: names.append(str(name))
    trusted = ssl.create_default_context(cafile=str(ca_file))
    async with Peer(answering(NO_CONTENT), context) as peer:
        http = HttpClient(peer.url("https"), ssl_context=trusted,
                          server_hostname="backend.internal")
        assert (await http.post(b"1")).status == 204
        assert names == ["backend.internal"]
        assert b"\r\nHost: 127.0.0.1:" in peer.requests[0]  # Host is still the URL's
        await http.close()

        by_url = HttpClient(peer.url("https"), ssl_context=trusted)
        with pytest.raises(ConnectError, match=r"not valid for '127\.0\.0\.1'"):
            await by_url.post(b"1")
        await by_url.close()
    with pytest.raises(ValueError, match="need an https:// URL"):
        HttpClient("http://127.0.0.1/", server_hostname="backend.internal")


# aiohttp's server as the realistic peer


class AiohttpPeer:
    def __init__(self, handler: Callable[[web.Request], Awaitable[web.Response]]) -> None:
        self._app = web.Application(client_max_size=64 << 20)
        self._app.router.add_post("/{tail:.*}", handler)
        self._runner = web.AppRunner(self._app, access_log=None)

    async def __aenter__(self) -> str:
        await self._runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        return f"http://127.0.0.1:{sock.getsockname()[1]}/api/v1/write"

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()
