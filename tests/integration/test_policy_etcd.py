"""Policies against a real etcd: a write reaches every watcher's on_change (delay measured),
an invalid value written behind the API's back keeps the last valid set, and replicas racing
to create the built-in profiles write each one once. Every test uses its own key prefix."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry

from phoenixcp.api.phoenix.v1 import state_pb2
from phoenixcp.core.policy.model import Cap
from phoenixcp.core.policy.profiles import BUILTIN_PROFILES
from phoenixcp.platform.config import EtcdConfig
from phoenixcp.platform.coord import EtcdConnection, StateStore
from phoenixcp.platform.embedded import EmbeddedEtcd
from phoenixcp.platform.policy.store import PolicyStore
from phoenixcp.platform.policy.view import PolicyView, Rejection
from phoenixcp.platform.policy.watcher import PolicyWatcher
from tests.integration._coord_support import wait_until

pytestmark = pytest.mark.integration

Connect = Callable[[], Awaitable[StateStore]]


@pytest.fixture
def prefix() -> str:
    return f"/test-policy-{uuid.uuid4().hex[:10]}/"


@pytest.fixture
async def connect(etcd_server: EmbeddedEtcd, prefix: str) -> AsyncIterator[Connect]:
    """A new connection (as another replica would have) and a StateStore on it."""
    conns: list[EtcdConnection] = []

    async def make() -> StateStore:
        conn = await EtcdConnection.open(EtcdConfig(endpoints=(etcd_server.endpoint,)))
        conns.append(conn)
        return StateStore(conn, prefix=prefix)

    yield make
    for conn in conns:
        await conn.close()


class Recorder:
    """An on_change that notes when each view arrived."""

    def __init__(self) -> None:
        self.views: list[tuple[float, PolicyView]] = []

    def __call__(self, view: PolicyView) -> None:
        self.views.append((time.monotonic(), view))

    @property
    def last(self) -> PolicyView:
        return self.views[-1][1]

    def arrival(self, revision: int) -> float | None:
        return next((t for t, v in self.views if v.revision >= revision), None)


def cap(n: int, pid: str = "p1") -> state_pb2.Policy:
    return state_pb2.Policy(id=pid, tenant="acme", cap=state_pb2.SeriesCapAction(max_series=n))


def holds(recorder: Recorder, n: int) -> bool:
    policies = recorder.views[-1][1].tenant_policies.get("acme", ()) if recorder.views else ()
    return bool(policies) and policies[0].action == Cap(n)


async def test_a_write_reaches_every_watcher_within_a_second(connect: Connect) -> None:
    writer = PolicyStore(await connect())
    await writer.ensure_builtin_profiles()
    recorders = [Recorder() for _ in range(3)]
    watchers = [PolicyWatcher(await connect(), on_change=r) for r in recorders]
    for watcher in watchers:
        await watcher.start()
    delays: list[float] = []
    try:
        for n in range(1, 21):
            start = time.monotonic()
            await writer.apply_policy(cap(n), author_default="test")
            await wait_until(lambda n=n: all(holds(r, n) for r in recorders),  # type: ignore[misc]
                             timeout=2)
            arrived = max(next(t for t, v in r.views if v.tenant_policies.get("acme")
                               and v.tenant_policies["acme"][0].action == Cap(n))
                          for r in recorders)
            delays.append(arrived - start)
            await asyncio.sleep(0.02)
        start = time.monotonic()
        await writer.set_active_profile("", "aggressive", set_by="test", reason="switch")
        switch = await wait_until(
            lambda: all(r.last.profile_for("acme").name == "aggressive" for r in recorders),
            timeout=2)
    finally:
        for watcher in watchers:
            await watcher.shutdown()
    median, worst = statistics.median(delays), max(delays)
    print(f"\npolicy write -> on_change on all 3 watchers: median {median * 1000:.0f} ms, "
          f"max {worst * 1000:.0f} ms over {len(delays)} writes; profile switch seen by all "
          f"within {switch * 1000:.0f} ms (debounce 50 ms)")
    assert worst < 1.0 and switch < 1.0


async def test_an_invalid_value_in_etcd_keeps_the_last_valid_set(
        connect: Connect, prefix: str, etcd_server: EmbeddedEtcd) -> None:
    raw_store = await connect()
    store = PolicyStore(raw_store)
    await store.apply_policy(cap(7), author_default="test")
    registry = CollectorRegistry()
    recorder = Recorder()
    watcher = PolicyWatcher(await connect(), on_change=recorder, registry=registry)
    await watcher.start()
    try:
        assert recorder.last.tenant_policies["acme"][0].action == Cap(7)
        broken = await store.get_policy("acme", "p1")
        broken.cap.max_series = 0
        broken.generation += 1
        revision = await raw_store.put("policies/acme/p1", broken)  # behind the API's back
        await wait_until(lambda: recorder.arrival(revision) is not None, timeout=2)
        view = recorder.last
        assert view.tenant_policies["acme"][0].action == Cap(7)
        assert view.rejections == (Rejection("acme", "p1", ((
            "cap.max_series", "must be at least 1, got 0 (to remove a metric, use a drop "
                              "policy)"),)),)
        assert registry.get_sample_value("phoenix_policy_rejected_total",
                                         {"kind": "policy"}) == 1
        # Bytes that are not a Policy at all are skipped by the store's watch: still p1 = 7.
        conn = await EtcdConnection.open(EtcdConfig(endpoints=(etcd_server.endpoint,)))
        try:
            await conn.put(f"{prefix}policies/acme/p2".encode(), b"\xff\xff not protobuf")
        finally:
            await conn.close()
        fixed, _ = await store.apply_policy(cap(9), author_default="test")
        await wait_until(lambda: recorder.last.rejections == (), timeout=2)
        assert recorder.last.tenant_policies["acme"][0].action == Cap(9)
        assert [p.id for p in recorder.last.tenant_policies["acme"]] == ["p1"]
        assert fixed.generation == broken.generation + 1
    finally:
        await watcher.shutdown()


async def test_racing_replicas_create_each_builtin_profile_once(connect: Connect) -> None:
    stores = [PolicyStore(await connect()) for _ in range(3)]
    created = await asyncio.gather(*(s.ensure_builtin_profiles() for s in stores))
    names = sorted(name for batch in created for name in batch)
    assert names == sorted(p.name for p in BUILTIN_PROFILES)
    raw = await connect()
    items, _ = await raw.list("profiles/", state_pb2.Profile)
    assert [key for key, _ in items] == [f"profiles/{n}" for n in names]
    for _, versioned in items:
        assert versioned.create_revision == versioned.mod_revision  # written exactly once
        assert versioned.value.generation == 1 and versioned.value.builtin
    assert await asyncio.gather(*(s.ensure_builtin_profiles() for s in stores)) == [[], [], []]
