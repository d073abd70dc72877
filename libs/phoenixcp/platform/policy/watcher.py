"""Follow policies, profiles and active-profile pointers in etcd; hand the pipeline a new
:class:`~phoenixcp.platform.policy.view.PolicyView` after every change.

``start()`` reads ``policies/``, ``profiles/`` and ``profile/active`` (the default pointer and
every tenant's), delivers the first view before it returns, then watches the three prefixes
from the revisions it read at, so no change is missed; :meth:`ReplicatedState.watch` resumes
after disconnects and re-reads after a compaction. A burst of changes is coalesced: the first
change of a quiet period schedules one view ``debounce`` later (50 ms by default), whatever
follows meanwhile is in it, so a write reaches ``on_change`` within about ``debounce`` plus
the watch's own delay, and a steady stream of writes cannot postpone it.

A value that fails validation is not applied: the key keeps its last valid version (or stays
absent), the value is logged and counted once per (key, generation) and listed in
:attr:`PolicyView.rejections` until the key is fixed or deleted. The data path therefore
never sees an invalid policy. When a policy's ``expire_time`` passes, a fresh view is handed
over, so the pipeline can drop it (``policies_for(tenant, now)`` leaves it out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from phoenixcp.api.phoenix.v1 import state_pb2
from phoenixcp.core.policy.model import PolicySpec, ProfileSpec
from phoenixcp.core.policy.profiles import DEFAULT_PROFILE
from phoenixcp.platform.coord.ports import Change, ChangeKind, ReplicatedState
from phoenixcp.platform.policy.codec import (
    PolicyRejected,
    id_problem,
    policy_from_proto,
    profile_from_proto,
)
from phoenixcp.platform.policy.keys import (
    ACTIVE_PREFIX,
    POLICIES_PREFIX,
    PROFILES_PREFIX,
    parse_active_key,
    parse_policy_key,
    parse_profile_key,
)
from phoenixcp.platform.policy.metrics import policy_metrics
from phoenixcp.platform.policy.view import PolicyView, Rejection

__all__ = ["PolicyWatcher"]

_log = logging.getLogger(__name__)
T = TypeVar("T")
M = TypeVar("M", bound=Message)
_EXPIRY_RECHECK = 60.0  # seconds; bounds the effect of a wall-clock jump on expiry timing


class _Invalid(Exception):
    def __init__(self, tenant: str, name: str, violations: list[tuple[str, str]]) -> None:
        super().__init__(name)
        self.rejection = Rejection(tenant, name, tuple(violations))


@dataclass(slots=True)
class _Slot(Generic[T]):
    """One key: its last valid value, and why its latest value is refused (if it is)."""

    valid: T | None = None
    rejected: Rejection | None = None
    identity: tuple[str, str] = ("", "")


@dataclass(slots=True)
class _Kind(Generic[M, T]):
    name: str
    prefix: str
    message_type: type[M]
    decode: Callable[[str, M], tuple[tuple[str, str], T]]
    version: Callable[[M, int], int]
    slots: dict[str, _Slot[T]] = field(default_factory=dict)


def _rejected(exc: PolicyRejected) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in exc.violations]


def _mismatch(what: str, stored: str, from_key: str) -> tuple[str, str]:
    return (what, f"{stored!r} differs from the key's {what} {from_key!r}; a value must be "
                  "stored under its own key")


def _decode_policy(key: str, pb: state_pb2.Policy) -> tuple[tuple[str, str], PolicySpec]:
    parsed = parse_policy_key(key)
    if parsed is None:
        raise _Invalid(pb.tenant, pb.id, [("key", f"{key!r} is not policies/<tenant>/<id>")])
    tenant, policy_id = parsed
    problems = []
    if pb.tenant != tenant:
        problems.append(_mismatch("tenant", pb.tenant, tenant))
    if pb.id != policy_id:
        problems.append(_mismatch("id", pb.id, policy_id))
    try:
        spec = policy_from_proto(pb)
    except PolicyRejected as exc:
        problems.extend(_rejected(exc))
    if problems:
        raise _Invalid(tenant, policy_id, problems)
    return (tenant, policy_id), spec


def _decode_profile(key: str, pb: state_pb2.Profile) -> tuple[tuple[str, str], ProfileSpec]:
    name = parse_profile_key(key)
    if name is None:
        raise _Invalid("", pb.name, [("key", f"{key!r} is not profiles/<name>")])
    problems = [] if pb.name == name else [_mismatch("name", pb.name, name)]
    try:
        spec = profile_from_proto(pb)
    except PolicyRejected as exc:
        problems.extend(_rejected(exc))
    if problems:
        raise _Invalid("", name, problems)
    return ("", name), spec


def _decode_active(key: str, pb: state_pb2.ActiveProfile) -> tuple[tuple[str, str], str]:
    tenant = parse_active_key(key)
    if tenant is None:  # e.g. profile/activeX: not a pointer at all
        raise _Invalid(pb.tenant, pb.profile_name,
                       [("key", f"{key!r} is not profile/active or profile/active/<tenant>")])
    problems = []
    if pb.tenant != tenant:
        problems.append(_mismatch("tenant", pb.tenant, tenant))
    problem = id_problem(pb.profile_name, "profile name")
    if problem is not None:
        problems.append(("profile_name", problem))
    if problems:
        raise _Invalid(tenant, pb.profile_name, problems)
    return (tenant, pb.profile_name), pb.profile_name


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PolicyWatcher:
    """Keeps a :class:`PolicyView` of the state in etcd and calls ``on_change`` with each new one.

    ``on_change`` runs on the event loop, synchronously, one call at a time; it should only
    swap the view in (compile policies elsewhere if that is slow). An exception from it is
    logged and the watcher goes on. ``start()`` and ``shutdown()`` are idempotent; the
    watcher is also an async context manager.
    """

    def __init__(
        self, state: ReplicatedState, *, on_change: Callable[[PolicyView], None],
        registry: CollectorRegistry | None = None,
        debounce: timedelta = timedelta(milliseconds=50),
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._state = state
        self._on_change = on_change
        self._metrics = policy_metrics(registry)
        self._debounce = debounce.total_seconds()
        self._clock = clock
        self._kinds: tuple[_Kind[Any, Any], ...] = (
            _Kind("policy", POLICIES_PREFIX, state_pb2.Policy, _decode_policy,
                  lambda pb, revision: pb.generation),
            _Kind("profile", PROFILES_PREFIX, state_pb2.Profile, _decode_profile,
                  lambda pb, revision: pb.generation),
            _Kind("active_profile", ACTIVE_PREFIX, state_pb2.ActiveProfile, _decode_active,
                  lambda pb, revision: revision),
        )
        self._logged: set[tuple[str, int]] = set()
        self._revision = 0
        self._view: PolicyView | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._publish_at: asyncio.TimerHandle | None = None
        self._expiry_at: asyncio.TimerHandle | None = None
        self._started = False
        self._stopped = False

    @property
    def view(self) -> PolicyView | None:
        """The last view handed to ``on_change`` (None before :meth:`start`)."""
        return self._view

    async def start(self) -> None:
        """Read the current state, deliver the first view, then follow changes in the
        background. Raises what reading raises (e.g. Unavailable), so a replica can refuse
        readiness until it has a view."""
        if self._started:
            return
        self._started = True
        revisions = []
        try:
            for kind in self._kinds:
                items, revision = await self._state.list(kind.prefix, kind.message_type)
                for key, versioned in items:
                    self._apply(kind, Change(ChangeKind.PUT, key, versioned.value,
                                             versioned.mod_revision))
                revisions.append(revision)
                self._revision = max(self._revision, revision)
        except BaseException:
            self._started = False  # a later start() tries again
            raise
        self._publish()
        for kind, revision in zip(self._kinds, revisions, strict=True):
            self._tasks.append(asyncio.create_task(self._follow(kind, revision + 1),
                                                   name=f"policy-watch-{kind.name}"))

    async def shutdown(self) -> None:
        """Stop watching and cancel pending timers; no ``on_change`` call follows."""
        if self._stopped:
            return
        self._stopped = True
        for handle in (self._publish_at, self._expiry_at):
            if handle is not None:
                handle.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def __aenter__(self) -> PolicyWatcher:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.shutdown()

    async def _follow(self, kind: _Kind[Any, Any], from_revision: int) -> None:
        delay = 0.1
        while True:
            changes = self._state.watch(kind.prefix, kind.message_type,
                                        from_revision=from_revision)
            try:
                async for change in changes:
                    self._apply(kind, change)
                    from_revision = change.revision + 1
                    self._revision = max(self._revision, change.revision)
                    self._schedule()
                    delay = 0.1
            except Exception as exc:  # the port retries outages itself; this is the rest
                _log.error("policy watch failed; restarting it", extra={"fields": {
                    "prefix": kind.prefix, "from_revision": from_revision,
                    "retry_in_s": delay, "error": repr(exc)}})
            finally:
                aclose = getattr(changes, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _apply(self, kind: _Kind[Any, Any], change: Change[Any]) -> None:
        if change.kind is ChangeKind.DELETE or change.value is None:
            kind.slots.pop(change.key, None)
            return
        slot = kind.slots.setdefault(change.key, _Slot())
        try:
            slot.identity, slot.valid = kind.decode(change.key, change.value)
            slot.rejected = None
        except _Invalid as exc:
            slot.rejected = exc.rejection
            version = (change.key, kind.version(change.value, change.revision))
            if version not in self._logged:
                self._logged.add(version)
                self._metrics.rejected.labels(kind.name).inc()
                _log.warning(f"invalid {kind.name} in etcd not applied; keeping the last valid "
                             "version", extra={"fields": {
                                 "key": change.key, "version": version[1],
                                 "kept_previous": slot.valid is not None,
                                 "violations": [f"{f}: {m}" for f, m in
                                                exc.rejection.violations]}})

    def _schedule(self) -> None:
        if self._publish_at is None and not self._stopped:
            loop = asyncio.get_running_loop()
            self._publish_at = loop.call_later(self._debounce, self._publish)

    def _build(self) -> PolicyView:
        policies, profiles, active = (kind.slots for kind in self._kinds)
        tenant_policies: dict[str, list[PolicySpec]] = {}
        for slot in policies.values():
            if slot.valid is not None:
                tenant_policies.setdefault(slot.identity[0], []).append(slot.valid)
        profile_specs = {slot.identity[1]: slot.valid for slot in profiles.values()
                         if slot.valid is not None}
        pointers = {slot.identity[0]: slot.valid for slot in active.values()
                    if slot.valid is not None}
        rejections = [slot.rejected for kind in self._kinds for slot in kind.slots.values()
                      if slot.rejected is not None]
        for kind in self._kinds:
            count = sum(1 for slot in kind.slots.values() if slot.rejected is not None)
            self._metrics.rejected_now.labels(kind.name).set(count)
        for tenant, name in pointers.items():
            if name not in profile_specs and name != DEFAULT_PROFILE:
                instead = "the default pointer" if tenant else repr(DEFAULT_PROFILE)
                rejections.append(Rejection(tenant, name, (("profile_name", (
                    f"profile {name!r} does not exist; {instead} applies")),)))
        return PolicyView(
            profiles=profile_specs,
            tenant_policies={t: tuple(sorted(ps, key=PolicySpec.sort_key))
                             for t, ps in tenant_policies.items()},
            active=pointers,
            rejections=tuple(sorted(rejections)),
            revision=self._revision,
        )

    def _publish(self) -> None:
        self._publish_at = None
        if self._stopped:
            return
        view = self._view = self._build()
        self._metrics.views.inc()
        self._metrics.revision.set(view.revision)
        try:
            self._on_change(view)
        except Exception:
            _log.exception("policy view callback failed", extra={"fields": {
                "revision": view.revision}})
        self._arm_expiry(view)

    def _arm_expiry(self, view: PolicyView) -> None:
        if self._expiry_at is not None:
            self._expiry_at.cancel()
            self._expiry_at = None
        now = self._clock()
        expiry = view.next_expiry(now)
        if expiry is None:
            return
        delay = min((expiry - now).total_seconds(), _EXPIRY_RECHECK)
        self._expiry_at = asyncio.get_running_loop().call_later(delay, self._expiry_due, expiry)

    def _expiry_due(self, expiry: datetime) -> None:
        self._expiry_at = None
        if self._stopped or self._view is None:
            return
        if self._clock() >= expiry:
            self._publish()
        else:  # woke early (the recheck bound, or the clock moved back): wait again
            self._arm_expiry(self._view)
