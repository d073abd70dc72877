"""PolicyStore over the in-memory state: validated writes, generations, compare-and-swap,
profiles (built-in ones protected) and the active-profile pointers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from phoenixcp.api.phoenix.v1 import state_pb2
from phoenixcp.core.policy.profiles import BUILTIN_PROFILES
from phoenixcp.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from phoenixcp.platform.coord import MemoryState
from phoenixcp.platform.policy.codec import PolicyRejected, profile_to_proto
from phoenixcp.platform.policy.store import PolicyStore

pytestmark = pytest.mark.unit

T0 = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
NAMES = [p.name for p in BUILTIN_PROFILES]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def cap(pid: str = "p1", tenant: str = "acme", n: int = 10) -> state_pb2.Policy:
    return state_pb2.Policy(id=pid, tenant=tenant, cap=state_pb2.SeriesCapAction(max_series=n))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state() -> MemoryState:
    return MemoryState()


@pytest.fixture
def store(state: MemoryState, clock: Clock) -> PolicyStore:
    return PolicyStore(state, clock=clock)


async def test_apply_sets_server_fields_and_bumps_generation(store: PolicyStore,
                                                             clock: Clock) -> None:
    sent = cap()
    sent.generation = 99  # server-set: ignored
    stored, created = await store.apply_policy(sent, author_default="spiffe://phoenix/operator")
    assert created and stored.generation == 1
    assert stored.author == "spiffe://phoenix/operator"
    assert stored.create_time.ToDatetime(tzinfo=UTC) == T0
    assert stored.update_time.ToDatetime(tzinfo=UTC) == T0
    clock.now = T0 + timedelta(minutes=1)
    changed, created = await store.apply_policy(cap(n=20), author_default="x")
    assert not created and changed.generation == 2 and changed.cap.max_series == 20
    assert changed.create_time.ToDatetime(tzinfo=UTC) == T0
    assert changed.update_time.ToDatetime(tzinfo=UTC) == clock.now
    assert await store.get_policy("acme", "p1") == changed


async def test_applying_the_same_policy_again_writes_nothing(store: PolicyStore,
                                                             state: MemoryState) -> None:
    first, _ = await store.apply_policy(cap(), author_default="ana")
    revision = state.revision
    again, created = await store.apply_policy(cap(), author_default="ana")
    assert (again, created, state.revision) == (first, False, revision)


async def test_refused_policy_changes_nothing(store: PolicyStore, state: MemoryState) -> None:
    await store.apply_policy(cap(), author_default="ana")
    revision = state.revision
    with pytest.raises(PolicyRejected) as caught:
        await store.apply_policy(cap(n=0), author_default="ana")
    assert caught.value.field == "cap.max_series"
    assert state.revision == revision
    assert (await store.get_policy("acme", "p1")).cap.max_series == 10


async def test_expiry_in_the_past_is_refused(store: PolicyStore) -> None:
    pb = cap()
    pb.expire_time.FromDatetime(T0 - timedelta(seconds=1))
    with pytest.raises(PolicyRejected, match="expire_time: 2030-05-01T11:59:59"):
        await store.apply_policy(pb, author_default="ana")


async def test_expected_generation_and_create_only(store: PolicyStore) -> None:
    with pytest.raises(Conflict, match="does not exist"):
        await store.apply_policy(cap(), author_default="a", expected_generation=1)
    await store.apply_policy(cap(), author_default="a", create_only=True)
    with pytest.raises(AlreadyExists, match="policy acme/p1 exists already"):
        await store.apply_policy(cap(n=3), author_default="a", create_only=True)
    await store.apply_policy(cap(n=3), author_default="a", expected_generation=1)
    with pytest.raises(Conflict, match="at generation 2, not the expected 1"):
        await store.apply_policy(cap(n=4), author_default="a", expected_generation=1)
    with pytest.raises(Conflict, match="at generation 2, not the expected 1"):
        await store.delete_policy("acme", "p1", expected_generation=1)
    deleted = await store.delete_policy("acme", "p1", expected_generation=2)
    assert deleted.cap.max_series == 3
    with pytest.raises(NotFound, match="policy acme/p1 does not exist"):
        await store.delete_policy("acme", "p1")
    with pytest.raises(NotFound):
        await store.get_policy("acme", "p1")


class Interleaved(MemoryState):
    """Yields to the loop before every read and write, so concurrent callers interleave as
    they would over a network."""

    def __init__(self) -> None:
        super().__init__()
        self.conflicts = 0

    async def get(self, key, message_type):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        return await super().get(key, message_type)

    async def put(self, key, value, *, expected_revision=None):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        try:
            return await super().put(key, value, expected_revision=expected_revision)
        except Conflict:
            self.conflicts += 1
            raise


async def test_concurrent_writers_lose_no_update() -> None:
    state = Interleaved()
    store = PolicyStore(state)
    await asyncio.gather(*(store.apply_policy(cap(n=n), author_default="a")
                           for n in range(1, 6)))
    # They all read "absent" and raced: the losers re-read and applied on top, so five writes
    # give five generations, none lost.
    assert state.conflicts >= 4
    assert (await store.get_policy("acme", "p1")).generation == 5


async def test_a_lost_race_with_expected_generation_is_a_conflict() -> None:
    store = PolicyStore(Interleaved())
    await store.apply_policy(cap(), author_default="a")
    results = await asyncio.gather(
        *(store.apply_policy(cap(n=n), author_default="a", expected_generation=1)
          for n in (2, 3)), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "tuple"]


async def test_list_policies_by_tenant(store: PolicyStore) -> None:
    for tenant, pid in (("acme", "b"), ("acme", "a"), ("acme-eu", "a"), ("zeta", "x")):
        await store.apply_policy(cap(pid, tenant), author_default="a")
    assert [(p.tenant, p.id) for p in await store.list_policies("acme")] == [
        ("acme", "a"), ("acme", "b")]
    assert len(await store.list_policies()) == 4
    with pytest.raises(InvalidArgument, match="tenant 'a/b' is not valid"):
        await store.list_policies("a/b")
    with pytest.raises(InvalidArgument, match=r"id 'x/\.\./y' is not valid"):
        await store.get_policy("acme", "x/../y")


async def test_builtin_profiles_are_created_once_and_never_overwritten(
        store: PolicyStore, state: MemoryState) -> None:
    assert await store.ensure_builtin_profiles() == NAMES
    balanced = await store.get_profile("balanced")
    assert balanced.builtin and balanced.generation == 1 and balanced.author == "phoenix"
    mine = profile_to_proto(BUILTIN_PROFILES[2])
    mine.description = "ours now"
    changed, created = await store.apply_profile(mine, author_default="ana")
    assert not created and changed.builtin and changed.generation == 2
    revision = state.revision
    assert await store.ensure_builtin_profiles() == []
    assert state.revision == revision
    assert (await store.get_profile("balanced")).description == "ours now"


async def test_racing_replicas_create_each_builtin_once(state: MemoryState) -> None:
    stores = [PolicyStore(state) for _ in range(3)]
    created = await asyncio.gather(*(s.ensure_builtin_profiles() for s in stores))
    assert sorted(name for names in created for name in names) == sorted(NAMES)


async def test_profiles_apply_validate_and_delete(store: PolicyStore) -> None:
    await store.ensure_builtin_profiles()
    bad = state_pb2.Profile(name="mine", policies=[cap(n=0)])
    with pytest.raises(PolicyRejected, match=r"policies\[0\].cap.max_series"):
        await store.apply_profile(bad, author_default="ana")
    sneaky = state_pb2.Profile(name="mine", builtin=True, policies=[cap()])
    stored, created = await store.apply_profile(sneaky, author_default="ana")
    assert created and not stored.builtin and stored.author == "ana"
    assert [p.name for p in await store.list_profiles()] == sorted([*NAMES, "mine"])
    with pytest.raises(InvalidArgument, match="'balanced' is built in; it can be changed but "
                                              "not deleted"):
        await store.delete_profile("balanced")
    await store.set_active_profile("acme", "mine", set_by="ana", reason="test")
    with pytest.raises(InvalidArgument, match="'mine' is active for acme; switch them"):
        await store.delete_profile("mine")
    await store.set_active_profile("acme", "", set_by="ana", reason="back to default")
    assert (await store.delete_profile("mine")).name == "mine"
    with pytest.raises(NotFound, match="profile 'mine' does not exist; the profiles are: "
                                       "aggressive, balanced, conservative, experimental, full"):
        await store.get_profile("mine")


async def test_active_profile_pointers(store: PolicyStore, clock: Clock) -> None:
    pointer, inherited = await store.get_active_profile("acme")
    assert (pointer.profile_name, inherited) == ("full", True)
    with pytest.raises(NotFound, match="profile 'balanced' does not exist; the profiles are: "
                                       r"\(none\)"):
        await store.set_active_profile("", "balanced", set_by="ana", reason="r")
    await store.ensure_builtin_profiles()
    with pytest.raises(NotFound, match="profile 'cheap' does not exist; the profiles are: "
                                       "aggressive, balanced, conservative, experimental, full"):
        await store.set_active_profile("", "cheap", set_by="ana", reason="r")
    now, previous = await store.set_active_profile("", "balanced", set_by="ana", reason="budget")
    assert (now.tenant, now.profile_name, now.set_by, now.reason, previous) == (
        "", "balanced", "ana", "budget", "full")
    assert now.set_time.ToDatetime(tzinfo=UTC) == clock.now
    pointer, inherited = await store.get_active_profile("acme")
    assert (pointer.profile_name, inherited) == ("balanced", True)
    now, previous = await store.set_active_profile("acme", "aggressive", set_by="cost-optimizer",
                                                   reason="92% of budget")
    assert (now.tenant, previous) == ("acme", "balanced")
    assert (await store.get_active_profile("acme"))[0].profile_name == "aggressive"
    assert [(p.tenant, p.profile_name) for p in await store.list_active_profiles()] == [
        ("", "balanced"), ("acme", "aggressive")]
    now, previous = await store.set_active_profile("acme", "", set_by="ana", reason="r")
    assert (now.profile_name, previous) == ("balanced", "aggressive")
    with pytest.raises(InvalidArgument, match="profile_name: give the profile"):
        await store.set_active_profile("", "", set_by="ana", reason="r")
