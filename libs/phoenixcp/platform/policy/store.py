"""Policies, profiles and active-profile pointers in etcd: validated writes with generations.

Every write is validated by :mod:`.codec` first, so a refused request changes nothing, and is
then a compare-and-swap on the key's revision: two writers that read the same generation
cannot both store generation + 1. Without ``expected_generation`` the loser re-reads and
applies its change on top (each write lands, none is lost); with it, the loser gets
:class:`~phoenixcp.errors.Conflict` (ABORTED), as pipeline.proto asks. Applying what is
stored already (server-set fields aside) writes nothing and returns ``created=False``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import timestamp_pb2

from phoenixcp.api.phoenix.v1 import state_pb2
from phoenixcp.core.policy.model import ProfileSpec
from phoenixcp.core.policy.profiles import BUILTIN_PROFILES, DEFAULT_PROFILE
from phoenixcp.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from phoenixcp.platform.coord.ports import ReplicatedState, Versioned
from phoenixcp.platform.policy.codec import (
    PolicyRejected,
    Violation,
    id_problem,
    policy_from_proto,
    profile_from_proto,
    profile_to_proto,
    tenant_problem,
)
from phoenixcp.platform.policy.keys import (
    ACTIVE_PREFIX,
    POLICIES_PREFIX,
    PROFILES_PREFIX,
    active_key,
    parse_active_key,
    policy_key,
    profile_key,
)

__all__ = ["BUILTIN_AUTHOR", "PolicyStore"]

BUILTIN_AUTHOR = "phoenix"
S = TypeVar("S", state_pb2.Policy, state_pb2.Profile)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _valid(field: str, problem: str | None) -> None:
    if problem is not None:
        raise InvalidArgument(f"{field}: {problem}", field=field)


def _check_generation(what: str, current: Versioned[S] | None, expected: int | None,
                      create_only: bool = False) -> None:
    if current is not None and create_only:
        raise AlreadyExists(f"{what} exists already (generation {current.value.generation}); "
                            "apply without create-only to change it")
    if not expected:
        return
    if current is None:
        raise Conflict(f"{what} does not exist, so it is not at the expected generation "
                       f"{expected}; read it again")
    if current.value.generation != expected:
        raise Conflict(f"{what} is at generation {current.value.generation}, not the expected "
                       f"{expected}: someone else changed it first; read it again and retry")


class PolicyStore:
    """Reads and writes the policy state of all tenants through :class:`ReplicatedState`.

    Stateless apart from its port: any number of tasks and replicas may call it at once.
    ``clock`` gives aware UTC datetimes (server-set timestamps and the expiry check).
    """

    def __init__(self, state: ReplicatedState, *,
                 clock: Callable[[], datetime] = _utc_now,
                 builtin_profiles: Sequence[ProfileSpec] = BUILTIN_PROFILES,
                 max_attempts: int = 8) -> None:
        self._state = state
        self._clock = clock
        self._builtin = tuple(builtin_profiles)
        self._attempts = max_attempts

    # -- policies ---------------------------------------------------------------------------

    async def apply_policy(
        self, policy: state_pb2.Policy, *, author_default: str,
        expected_generation: int | None = None, create_only: bool = False,
    ) -> tuple[state_pb2.Policy, bool]:
        """Create or replace ``policy`` (named by its tenant and id); returns what is stored
        and whether it was created. ``author_default`` is recorded when ``author`` is empty.

        Raises PolicyRejected (every violation), AlreadyExists (``create_only``), Conflict
        (``expected_generation`` not met, 0 or None: any).
        """
        spec = policy_from_proto(policy)
        now = self._clock()
        if spec.expire_time is not None and spec.expire_time <= now:
            raise PolicyRejected([Violation(
                "expire_time", f"{spec.expire_time.isoformat()} is in the past; give a future "
                               "time, or leave it unset for no expiry")])
        desired = state_pb2.Policy()
        desired.CopyFrom(policy)
        desired.author = policy.author or author_default
        what = f"policy {spec.tenant}/{spec.id}"

        def stamp(out: state_pb2.Policy, current: state_pb2.Policy | None) -> None:
            out.create_time.CopyFrom(current.create_time if current else _stamp(now))

        return await self._apply(policy_key(spec.tenant, spec.id), desired, what, stamp, now,
                                 expected_generation, create_only)

    async def get_policy(self, tenant: str, policy_id: str) -> state_pb2.Policy:
        """The stored policy; NotFound if there is none."""
        found = await self._state.get(self._policy_key(tenant, policy_id), state_pb2.Policy)
        if found is None:
            raise NotFound(f"policy {tenant}/{policy_id} does not exist")
        return found.value

    async def list_policies(self, tenant: str | None = None) -> list[state_pb2.Policy]:
        """Every policy of ``tenant`` (None: of every tenant), by tenant then id."""
        if tenant is not None:
            _valid("tenant", tenant_problem(tenant))
        prefix = POLICIES_PREFIX if tenant is None else f"{POLICIES_PREFIX}{tenant}/"
        items, _ = await self._state.list(prefix, state_pb2.Policy)
        return [versioned.value for _, versioned in items]

    async def delete_policy(self, tenant: str, policy_id: str, *,
                            expected_generation: int | None = None) -> state_pb2.Policy:
        """Delete a policy; returns it as it was. NotFound, or Conflict as :meth:`apply_policy`."""
        key = self._policy_key(tenant, policy_id)
        return await self._delete(key, state_pb2.Policy, f"policy {tenant}/{policy_id}",
                                  expected_generation, _no_check)

    @staticmethod
    def _policy_key(tenant: str, policy_id: str) -> str:
        _valid("tenant", tenant_problem(tenant))
        _valid("id", id_problem(policy_id))
        return policy_key(tenant, policy_id)

    # -- profiles ---------------------------------------------------------------------------

    async def apply_profile(
        self, profile: state_pb2.Profile, *, author_default: str,
        expected_generation: int | None = None, create_only: bool = False,
    ) -> tuple[state_pb2.Profile, bool]:
        """Create or replace a profile; as :meth:`apply_policy`. ``builtin`` is server-set: a
        built-in profile stays built-in when changed, and no request can make one."""
        spec = profile_from_proto(profile)
        desired = state_pb2.Profile()
        desired.CopyFrom(profile)
        desired.author = profile.author or author_default

        def stamp(out: state_pb2.Profile, current: state_pb2.Profile | None) -> None:
            out.builtin = current.builtin if current else False

        return await self._apply(profile_key(spec.name), desired, f"profile {spec.name!r}",
                                 stamp, self._clock(), expected_generation, create_only)

    async def get_profile(self, name: str) -> state_pb2.Profile:
        """The stored profile; NotFound (listing the names that exist) if there is none."""
        _valid("name", id_problem(name, "profile name"))
        found = await self._state.get(profile_key(name), state_pb2.Profile)
        if found is None:
            raise NotFound(await self._unknown_profile(name))
        return found.value

    async def list_profiles(self) -> list[state_pb2.Profile]:
        """Every stored profile, by name."""
        items, _ = await self._state.list(PROFILES_PREFIX, state_pb2.Profile)
        return [versioned.value for _, versioned in items]

    async def delete_profile(self, name: str, *,
                             expected_generation: int | None = None) -> state_pb2.Profile:
        """Delete a profile; returns it as it was. Built-in profiles and profiles an active
        pointer names are refused (InvalidArgument saying why). The in-use check and the
        delete are two steps: a pointer set in between names a missing profile, which the
        watcher reports and replaces with the default."""
        _valid("name", id_problem(name, "profile name"))

        async def check(current: state_pb2.Profile) -> None:
            if current.builtin:
                raise InvalidArgument(f"name: profile {name!r} is built in; it can be changed "
                                      "but not deleted", field="name")
            users = [p.tenant or "(default)" for p in await self.list_active_profiles()
                     if p.profile_name == name]
            if users:
                raise InvalidArgument(f"name: profile {name!r} is active for {', '.join(users)}; "
                                      "switch them to another profile first", field="name")

        return await self._delete(profile_key(name), state_pb2.Profile, f"profile {name!r}",
                                  expected_generation, check)

    async def ensure_builtin_profiles(self) -> list[str]:
        """Create each shipped profile that does not exist yet; returns the names created.

        Create-only (compare-and-swap on absence): idempotent, never overwrites an operator's
        change, and N replicas racing at start-up write each profile exactly once together.
        """
        now = self._clock()
        created: list[str] = []
        for spec in self._builtin:
            profile = profile_to_proto(spec)
            profile.builtin = True
            profile.generation = 1
            profile.author = BUILTIN_AUTHOR
            profile.reason = "shipped with Phoenix"
            profile.update_time.CopyFrom(_stamp(now))
            try:
                await self._state.put(profile_key(spec.name), profile, expected_revision=0)
            except Conflict:
                continue
            created.append(spec.name)
        return created

    async def _unknown_profile(self, name: str) -> str:
        names = [p.name for p in await self.list_profiles()]
        return (f"profile {name!r} does not exist; the profiles are: "
                f"{', '.join(names) if names else '(none)'}")

    # -- active profile ---------------------------------------------------------------------

    async def get_active_profile(self, tenant: str) -> tuple[state_pb2.ActiveProfile, bool]:
        """The pointer in force for ``tenant`` ("" for the default) and whether it is
        inherited: the tenant's override, else the default pointer, else ``full``."""
        if tenant:
            _valid("tenant", tenant_problem(tenant))
            own = await self._state.get(active_key(tenant), state_pb2.ActiveProfile)
            if own is not None:
                return own.value, False
        default = await self._state.get(active_key(""), state_pb2.ActiveProfile)
        if default is not None:
            return default.value, bool(tenant)
        return state_pb2.ActiveProfile(profile_name=DEFAULT_PROFILE), bool(tenant)

    async def list_active_profiles(self) -> list[state_pb2.ActiveProfile]:
        """The default pointer (if set) and every tenant override, by tenant."""
        items, _ = await self._state.list(ACTIVE_PREFIX, state_pb2.ActiveProfile)
        return [v.value for key, v in items if parse_active_key(key) is not None]

    async def set_active_profile(
        self, tenant: str, profile_name: str, *, set_by: str, reason: str,
    ) -> tuple[state_pb2.ActiveProfile, str]:
        """Point ``tenant`` ("" = the default) at ``profile_name``, which must exist (NotFound
        lists those that do); an empty name removes a tenant's override. Returns the pointer
        now in force and the profile name in force before."""
        if tenant:
            _valid("tenant", tenant_problem(tenant))
        if not profile_name:
            if not tenant:
                raise InvalidArgument("profile_name: give the profile every tenant without an "
                                      "override should use, e.g. balanced", field="profile_name")
            previous, _ = await self.get_active_profile(tenant)
            await self._state.delete(active_key(tenant))
            return (await self.get_active_profile(tenant))[0], previous.profile_name
        _valid("profile_name", id_problem(profile_name, "profile name"))
        if await self._state.get(profile_key(profile_name), state_pb2.Profile) is None:
            raise NotFound(await self._unknown_profile(profile_name))
        pointer = state_pb2.ActiveProfile(tenant=tenant, profile_name=profile_name,
                                          set_by=set_by, reason=reason)
        pointer.set_time.CopyFrom(_stamp(self._clock()))
        key = active_key(tenant)
        for _ in range(self._attempts):
            current = await self._state.get(key, state_pb2.ActiveProfile)
            previous = (current.value if current is not None
                        else (await self.get_active_profile(tenant))[0])
            try:
                await self._state.put(key, pointer, expected_revision=(
                    current.mod_revision if current is not None else 0))
            except Conflict:
                continue
            return pointer, previous.profile_name
        raise Conflict(f"the active profile of {tenant or 'every tenant'} kept changing while "
                       "it was set; try again")

    # -- shared -----------------------------------------------------------------------------

    async def _apply(
        self, key: str, desired: S, what: str, stamp: Callable[[S, S | None], None],
        now: datetime, expected_generation: int | None, create_only: bool,
    ) -> tuple[S, bool]:
        for _ in range(self._attempts):
            found = await self._state.get(key, type(desired))
            _check_generation(what, found, expected_generation, create_only)
            current = found.value if found is not None else None
            out = type(desired)()
            out.CopyFrom(desired)
            stamp(out, current)
            if current is not None:
                out.generation = current.generation
                out.update_time.CopyFrom(current.update_time)
                if out == current:
                    return current, False
            out.generation = current.generation + 1 if current is not None else 1
            out.update_time.CopyFrom(_stamp(now))
            try:
                await self._state.put(key, out, expected_revision=(
                    found.mod_revision if found is not None else 0))
            except Conflict:
                continue  # someone wrote in between: re-read, re-check, re-apply
            return out, current is None
        raise Conflict(f"{what} kept changing while it was applied; try again")

    async def _delete(
        self, key: str, message_type: type[S], what: str, expected_generation: int | None,
        check: Callable[[S], Awaitable[None]],
    ) -> S:
        for _ in range(self._attempts):
            found = await self._state.get(key, message_type)
            if found is None:
                raise NotFound(f"{what} does not exist")
            _check_generation(what, found, expected_generation)
            await check(found.value)
            try:
                await self._state.delete(key, expected_revision=found.mod_revision)
            except Conflict:
                continue
            return found.value
        raise Conflict(f"{what} kept changing while it was deleted; try again")


async def _no_check(_: state_pb2.Policy) -> None:
    return None


def _stamp(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out
