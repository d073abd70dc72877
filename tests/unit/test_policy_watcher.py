"""PolicyWatcher over the in-memory state: first view at start, changes coalesced into new
views, invalid values kept out (last valid version kept, reported once), expiry, fallbacks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from phoenixcp.api.phoenix.v1 import state_pb2
from phoenixcp.core.policy.model import Cap, ProfileSpec
from phoenixcp.platform.coord import MemoryState
from phoenixcp.platform.policy.store import PolicyStore
from phoenixcp.platform.policy.view import PolicyView, Rejection
from phoenixcp.platform.policy.watcher import PolicyWatcher

pytestmark = pytest.mark.unit


def cap(pid: str = "p1", n: int = 10, tenant: str = "acme") -> state_pb2.Policy:
    return state_pb2.Policy(id=pid, tenant=tenant, cap=state_pb2.SeriesCapAction(max_series=n))


class Views:
    def __init__(self) -> None:
        self.seen: list[PolicyView] = []
        self.changed = asyncio.Event()

    def __call__(self, view: PolicyView) -> None:
        self.seen.append(view)
        self.changed.set()

    @property
    def last(self) -> PolicyView:
        return self.seen[-1]

    async def next(self, timeout: float = 2.0) -> PolicyView:
        self.changed.clear()
        await asyncio.wait_for(self.changed.wait(), timeout)
        return self.last


@pytest.fixture
def state() -> MemoryState:
    return MemoryState()


@pytest.fixture
def store(state: MemoryState) -> PolicyStore:
    return PolicyStore(state)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def views(state: MemoryState, store: PolicyStore,
                registry: CollectorRegistry) -> AsyncIterator[Views]:
    await store.ensure_builtin_profiles()
    collected = Views()
    watcher = PolicyWatcher(state, on_change=collected, registry=registry)
    await watcher.start()
    await watcher.start()  # idempotent
    yield collected
    await watcher.shutdown()
    await watcher.shutdown()


def rejected(registry: CollectorRegistry, kind: str) -> float | None:
    return registry.get_sample_value("phoenix_policy_rejected_total", {"kind": kind})


async def test_start_delivers_the_current_state(state: MemoryState, store: PolicyStore) -> None:
    await store.ensure_builtin_profiles()
    await store.apply_policy(cap(), author_default="a")
    await store.set_active_profile("", "balanced", set_by="a", reason="r")
    collected = Views()
    async with PolicyWatcher(state, on_change=collected) as watcher:
        assert len(collected.seen) == 1 and watcher.view is collected.last
        view = collected.last
        assert sorted(view.profiles) == ["aggressive", "balanced", "conservative",
                                         "experimental", "full"]
        assert dict(view.active) == {"": "balanced"}
        assert [p.id for p in view.tenant_policies["acme"]] == ["p1"]
        assert view.revision == state.revision and view.rejections == ()
        ids = [p.id for p in view.policies_for("acme", datetime.now(UTC))]
        assert ids == ["critical-series", "merge-per-request-labels", "cap-per-metric", "p1"]


async def test_a_write_reaches_on_change_coalesced(views: Views, store: PolicyStore) -> None:
    start = time.monotonic()
    for n in range(1, 11):
        await store.apply_policy(cap(n=n), author_default="a")
    view = await views.next()
    delay = time.monotonic() - start
    assert delay < 0.5
    assert len(views.seen) == 2  # the first view, and one for the whole burst
    assert view.tenant_policies["acme"][0].action == Cap(10)


async def test_invalid_value_keeps_the_last_valid_one(
        views: Views, store: PolicyStore, state: MemoryState,
        registry: CollectorRegistry) -> None:
    stored, _ = await store.apply_policy(cap(n=7), author_default="a")
    await views.next()
    broken = state_pb2.Policy()
    broken.CopyFrom(stored)
    broken.cap.max_series = 0
    broken.generation = 2
    await state.put("policies/acme/p1", broken)  # a writer that skipped validation
    await state.put("policies/acme/p1", broken)  # the same version again: reported once
    view = await views.next()
    assert view.tenant_policies["acme"][0].action == Cap(7)
    assert view.rejections == (Rejection("acme", "p1", (
        ("cap.max_series", "must be at least 1, got 0 (to remove a metric, use a drop policy)"),
    )),)
    assert rejected(registry, "policy") == 1
    assert registry.get_sample_value("phoenix_policy_rejections", {"kind": "policy"}) == 1
    await store.apply_policy(cap(n=8), author_default="a")
    view = await views.next()
    assert view.rejections == () and view.tenant_policies["acme"][0].action == Cap(8)
    await store.delete_policy("acme", "p1")
    assert "acme" not in (await views.next()).tenant_policies


async def test_invalid_value_of_a_new_key_is_not_applied(
        views: Views, state: MemoryState, registry: CollectorRegistry) -> None:
    await state.put("policies/acme/p2", cap("p2", tenant="other"))
    await state.put("profiles/mine", state_pb2.Profile(name="mine", policies=[cap(n=0)]))
    await state.put("profile/active/acme", state_pb2.ActiveProfile(tenant="acme",
                                                                   profile_name="Bad Name"))
    view = await views.next()
    assert "acme" not in view.tenant_policies and "mine" not in view.profiles
    assert "acme" not in view.active
    assert [(r.tenant, r.name, [f for f, _ in r.violations]) for r in view.rejections] == [
        ("", "mine", ["policies[0].cap.max_series"]),
        ("acme", "Bad Name", ["profile_name"]),
        ("acme", "p2", ["tenant"]),
    ]
    assert [rejected(registry, k) for k in ("policy", "profile", "active_profile")] == [1, 1, 1]


async def test_profile_fallbacks(views: Views, store: PolicyStore, state: MemoryState) -> None:
    assert views.last.profile_for("acme").name == "full"
    assert views.last.profile_for("acme").policies == ()
    await store.set_active_profile("", "conservative", set_by="a", reason="r")
    await store.set_active_profile("acme", "aggressive", set_by="a", reason="r")
    view = await views.next()
    assert (view.profile_for("acme").name, view.profile_for("zeta").name) == (
        "aggressive", "conservative")
    # A pointer to a profile that is gone (deleted between check and set) falls back.
    await state.put("profile/active/acme", state_pb2.ActiveProfile(tenant="acme",
                                                                   profile_name="gone"))
    view = await views.next()
    assert view.profile_for("acme").name == "conservative"
    assert view.rejections == (Rejection("acme", "gone", (
        ("profile_name", "profile 'gone' does not exist; the default pointer applies"),)),)


async def test_expired_policies_leave_with_a_new_view(views: Views, store: PolicyStore) -> None:
    pb = cap()
    expiry = datetime.now(UTC) + timedelta(milliseconds=300)
    pb.expire_time.FromDatetime(expiry)
    await store.apply_policy(pb, author_default="a")
    view = await views.next()
    assert [p.id for p in view.policies_for("acme", datetime.now(UTC))] == ["p1"]
    view = await views.next(timeout=2.0)
    now = datetime.now(UTC)
    assert now >= expiry
    assert view.policies_for("acme", now) == ()


async def test_a_failing_callback_does_not_stop_the_watcher(
        state: MemoryState, store: PolicyStore) -> None:
    seen: list[int] = []

    def explode(view: PolicyView) -> None:
        seen.append(view.revision)
        raise RuntimeError("boom")

    watcher = PolicyWatcher(state, on_change=explode)
    await watcher.start()
    await store.apply_policy(cap(), author_default="a")
    await asyncio.sleep(0.2)
    await store.apply_policy(cap(n=3), author_default="a")
    await asyncio.sleep(0.2)
    await watcher.shutdown()
    assert len(seen) == 3
    await store.apply_policy(cap(n=4), author_default="a")
    await asyncio.sleep(0.2)
    assert len(seen) == 3  # nothing after shutdown


def test_view_is_immutable() -> None:
    view = PolicyView(profiles={"p": ProfileSpec("p")})
    with pytest.raises(TypeError):
        view.profiles["q"] = ProfileSpec("q")  # type: ignore[index]
