"""StateStore against a real etcd: typed values, compare-and-swap, lists, and watches that
survive etcd restarts, partitions and compaction. Every test writes under its own prefix."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from phoenixcp.api.phoenix.v1 import state_pb2
from phoenixcp.errors import Conflict, InvalidArgument, Unavailable
from phoenixcp.platform.config import EtcdConfig
from phoenixcp.platform.coord import Change, ChangeKind, EtcdConnection, StateStore, prefix_watch
from phoenixcp.platform.embedded import EmbeddedEtcd
from tests.integration._coord_support import TcpProxy, wait_until

pytestmark = pytest.mark.integration

Connect = Callable[[str], Awaitable[EtcdConnection]]


@pytest.fixture
def prefix() -> str:
    return f"/test-{uuid.uuid4().hex[:10]}/"


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    conns: list[EtcdConnection] = []

    async def make(endpoint: str) -> EtcdConnection:
        conn = await EtcdConnection.open(EtcdConfig(endpoints=(endpoint,)))
        conns.append(conn)
        return conn

    yield make
    for conn in conns:
        await conn.close()


@pytest.fixture
async def store(connect: Connect, etcd_server: EmbeddedEtcd, prefix: str) -> StateStore:
    return StateStore(await connect(etcd_server.endpoint), prefix=prefix)


def policy(pid: str, description: str = "") -> state_pb2.Policy:
    return state_pb2.Policy(id=pid, tenant="acme", description=description,
                            drop=state_pb2.DropAction())


class Collected:
    """Consumes a watch in a task and keeps what it yields."""

    def __init__(self, changes: AsyncIterator[Change[state_pb2.Policy]]) -> None:
        self.changes: list[Change[state_pb2.Policy]] = []
        self._task = asyncio.create_task(self._consume(changes))

    async def _consume(self, changes: AsyncIterator[Change[state_pb2.Policy]]) -> None:
        async for change in changes:
            self.changes.append(change)

    def seen(self) -> list[tuple[str, str, str | None]]:
        return [(c.kind.value, c.key, c.value.description if c.value else None)
                for c in self.changes]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def test_typed_round_trip_with_revisions(store: StateStore) -> None:
    assert await store.get("policies/acme/p1", state_pb2.Policy) is None
    revision = await store.put("policies/acme/p1", policy("p1", "first"))
    got = await store.get("policies/acme/p1", state_pb2.Policy)
    assert got is not None
    assert got.value == policy("p1", "first")
    assert got.mod_revision == got.create_revision == revision
    later = await store.put("policies/acme/p1", policy("p1", "second"))
    got = await store.get("policies/acme/p1", state_pb2.Policy)
    assert got is not None and got.mod_revision == later > revision
    assert got.create_revision == revision
    assert await store.delete("policies/acme/p1")
    assert not await store.delete("policies/acme/p1")


async def test_compare_and_swap(store: StateStore) -> None:
    first = await store.put("budgets/acme", state_pb2.Budget(tenant="acme"), expected_revision=0)
    with pytest.raises(Conflict, match=r"create .*budgets/acme: it exists already"):
        await store.put("budgets/acme", state_pb2.Budget(tenant="acme"), expected_revision=0)
    second = await store.put("budgets/acme", state_pb2.Budget(tenant="b"),
                             expected_revision=first)
    with pytest.raises(Conflict, match=rf"expected revision {first}, found revision {second}"):
        await store.put("budgets/acme", state_pb2.Budget(tenant="c"), expected_revision=first)
    with pytest.raises(Conflict, match=rf"expected revision {first}"):
        await store.delete("budgets/acme", expected_revision=first)
    assert await store.delete("budgets/acme", expected_revision=second)
    with pytest.raises(Conflict, match="it no longer exists"):
        await store.put("budgets/acme", state_pb2.Budget(), expected_revision=second)
    with pytest.raises(InvalidArgument):
        await store.put("/absolute", state_pb2.Budget())


async def test_two_writers_on_one_revision_exactly_one_wins(store: StateStore) -> None:
    base = await store.put("flags/f", state_pb2.FeatureFlag(name="f"))
    results = await asyncio.gather(
        *(store.put("flags/f", state_pb2.FeatureFlag(name=f"w{i}"), expected_revision=base)
          for i in range(8)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, int) for r in results) == 1
    assert sum(isinstance(r, Conflict) for r in results) == 7


async def test_list_is_a_consistent_snapshot_in_pages(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefix_watch, "_PAGE", 10)
    await asyncio.gather(*(store.put(f"policies/acme/p{i:02d}", policy(f"p{i}"))
                           for i in range(25)))
    await store.put("policies/other/x", policy("x"))
    items, revision = await store.list("policies/acme/", state_pb2.Policy)
    assert [key for key, _ in items] == [f"policies/acme/p{i:02d}" for i in range(25)]
    assert all(v.mod_revision <= revision for _, v in items)


async def test_values_that_do_not_parse_are_skipped_and_counted(
    connect: Connect, etcd_server: EmbeddedEtcd, prefix: str
) -> None:
    registry = CollectorRegistry()
    conn = await connect(etcd_server.endpoint)
    store = StateStore(conn, prefix=prefix, registry=registry)
    watch = Collected(store.watch("policies/", state_pb2.Policy))
    await asyncio.sleep(0.1)
    await store.put("policies/acme/good", policy("good", "ok"))
    await conn.put(f"{prefix}policies/acme/bad".encode(), b"\xff\xff not protobuf")
    await store.put("policies/acme/after", policy("after", "still here"))
    await wait_until(lambda: len(watch.changes) == 2, timeout=2)
    assert [key for _, key, _ in watch.seen()] == ["policies/acme/good", "policies/acme/after"]
    items, _ = await store.list("policies/", state_pb2.Policy)
    assert [key for key, _ in items] == ["policies/acme/after", "policies/acme/good"]
    with pytest.raises(InvalidArgument, match=r"is not a valid phoenix\.v1\.Policy"):
        await store.get("policies/acme/bad", state_pb2.Policy)
    counted = registry.get_sample_value(
        "phoenix_etcd_invalid_values_total", {"message_type": "phoenix.v1.Policy"})
    assert counted is not None and counted >= 2
    await watch.close()


async def test_watch_from_a_listed_revision_misses_nothing(store: StateStore) -> None:
    await store.put("policies/acme/a", policy("a", "a1"))
    _, revision = await store.list("policies/", state_pb2.Policy)
    await store.put("policies/acme/a", policy("a", "a2"))  # before the watch starts
    watch = Collected(store.watch("policies/", state_pb2.Policy, from_revision=revision + 1))
    await store.put("policies/acme/b", policy("b", "b1"))
    await store.delete("policies/acme/a")
    await wait_until(lambda: len(watch.changes) == 3, timeout=2)
    assert watch.seen() == [("put", "policies/acme/a", "a2"), ("put", "policies/acme/b", "b1"),
                            ("delete", "policies/acme/a", None)]
    assert [c.revision for c in watch.changes] == sorted(c.revision for c in watch.changes)
    await watch.close()


async def test_watch_resumes_after_an_etcd_restart_without_missing_changes(
    connect: Connect, tmp_path: Path
) -> None:
    with EmbeddedEtcd(data_dir=tmp_path / "etcd") as etcd:
        store = StateStore(await connect(etcd.endpoint))
        await store.put("policies/acme/a", policy("a", "before"))
        watch = Collected(store.watch("policies/", state_pb2.Policy))
        await asyncio.sleep(0.1)
        await store.put("policies/acme/b", policy("b", "before restart"))
        await wait_until(lambda: len(watch.changes) == 1, timeout=2)

        await asyncio.to_thread(etcd.restart)
        writer = StateStore(await connect(etcd.endpoint))
        await writer.put("policies/acme/c", policy("c", "after restart"))
        await writer.delete("policies/acme/a")
        await writer.put("policies/acme/b", policy("b", "changed after restart"))
        await wait_until(lambda: len(watch.changes) == 4, timeout=5)
        assert watch.seen() == [
            ("put", "policies/acme/b", "before restart"),
            ("put", "policies/acme/c", "after restart"),
            ("delete", "policies/acme/a", None),
            ("put", "policies/acme/b", "changed after restart"),
        ]
        assert not any(c.snapshot for c in watch.changes)
        await watch.close()


async def test_a_watch_cut_off_past_a_compaction_re_reads_the_prefix(
    connect: Connect, etcd_server: EmbeddedEtcd, prefix: str
) -> None:
    registry = CollectorRegistry()
    proxy = await TcpProxy(etcd_server.endpoint).start()
    try:
        direct = await connect(etcd_server.endpoint)
        writer = StateStore(direct, prefix=prefix)
        watcher = StateStore(await connect(proxy.endpoint), prefix=prefix, registry=registry)
        await writer.put("policies/acme/keep", policy("keep", "v1"))
        await writer.put("policies/acme/gone", policy("gone", "v1"))
        watch = Collected(watcher.watch("policies/", state_pb2.Policy))
        await asyncio.sleep(0.1)
        await writer.put("policies/acme/keep", policy("keep", "v2"))
        await wait_until(lambda: len(watch.changes) == 1, timeout=2)

        proxy.cut()
        await writer.delete("policies/acme/gone")
        await writer.put("policies/acme/new", policy("new", "v1"))
        revision = await writer.put("policies/acme/keep", policy("keep", "v3"))
        await direct.compact(revision)
        await wait_until(lambda: (registry.get_sample_value(
            "phoenix_etcd_watch_lag_seconds", {"prefix": "policies/"}) or 0) > 0, timeout=2)
        proxy.heal()

        await wait_until(lambda: len(watch.changes) == 4, timeout=5)
        snapshot = watch.changes[1:]
        assert all(c.snapshot and c.revision == snapshot[0].revision for c in snapshot)
        assert watch.seen()[1:] == [
            ("delete", "policies/acme/gone", None),
            ("put", "policies/acme/keep", "v3"),
            ("put", "policies/acme/new", "v1"),
        ]
        await writer.put("policies/acme/new", policy("new", "v2"))  # and it goes on watching
        await wait_until(lambda: len(watch.changes) == 5, timeout=2)
        assert watch.seen()[-1] == ("put", "policies/acme/new", "v2")
        assert not watch.changes[-1].snapshot
        resumes = registry.get_sample_value(
            "phoenix_etcd_watch_resumes_total", {"prefix": "policies/", "reason": "compacted"})
        assert resumes == 1
        assert registry.get_sample_value(
            "phoenix_etcd_watch_lag_seconds", {"prefix": "policies/"}) == 0
        await watch.close()
    finally:
        await proxy.close()


async def test_calls_to_an_unreachable_etcd_raise_unavailable(connect: Connect) -> None:
    from phoenixcp.platform.embedded import free_port

    store = StateStore(await connect(f"127.0.0.1:{free_port()}"))
    with pytest.raises(Unavailable, match="does not answer"):
        await store.get("flags/x", state_pb2.FeatureFlag)
    with pytest.raises(Unavailable):
        await store.put("flags/x", state_pb2.FeatureFlag(), expected_revision=0)


async def test_watch_kinds(store: StateStore) -> None:
    watch = Collected(store.watch("flags/", state_pb2.Policy))
    await asyncio.sleep(0.1)
    await store.put("flags/a", policy("a"))
    await store.delete("flags/a")
    await wait_until(lambda: len(watch.changes) == 2, timeout=2)
    assert [c.kind for c in watch.changes] == [ChangeKind.PUT, ChangeKind.DELETE]
    await watch.close()
