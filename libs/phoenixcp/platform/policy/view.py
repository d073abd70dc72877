"""One replica's immutable picture of the policy state: what the pipeline applies per tenant.

:class:`PolicyView` is what :class:`~phoenixcp.platform.policy.watcher.PolicyWatcher` hands to
its ``on_change`` callback. It holds only values that passed validation; what did not is
listed in :attr:`PolicyView.rejections` (the replica kept the previous valid version).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import NamedTuple

from phoenixcp.core.policy.model import PolicySpec, ProfileSpec
from phoenixcp.core.policy.profiles import DEFAULT_PROFILE

__all__ = ["PolicyView", "Rejection"]

_FULL = ProfileSpec(DEFAULT_PROFILE, description="Full fidelity: no policy.")


class Rejection(NamedTuple):
    """A stored value that is not applied: whose (``tenant``, "" for profiles and the default
    pointer), which (policy id or profile name) and why (``(field, message)`` pairs)."""

    tenant: str
    name: str
    violations: tuple[tuple[str, str], ...]


def _frozen(mapping: Mapping[str, object] | None) -> Mapping[str, object]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True, eq=False)
class PolicyView:
    """The profiles, each tenant's own policies and the active-profile pointers ("" is the
    default pointer) as of etcd ``revision``. Immutable; safe to share between threads."""

    profiles: Mapping[str, ProfileSpec] = field(default_factory=lambda: MappingProxyType({}))
    tenant_policies: Mapping[str, tuple[PolicySpec, ...]] = field(
        default_factory=lambda: MappingProxyType({}))
    active: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    rejections: tuple[Rejection, ...] = ()
    revision: int = 0

    def __post_init__(self) -> None:
        for name in ("profiles", "tenant_policies", "active"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    def profile_name_for(self, tenant: str) -> str:
        """The name of the profile in force for ``tenant``: its pointer, else the default
        pointer, else ``full``; a pointer to a profile that does not exist is skipped."""
        for name in (self.active.get(tenant), self.active.get("")):
            if name is not None and (name in self.profiles or name == DEFAULT_PROFILE):
                return name
        return DEFAULT_PROFILE

    def profile_for(self, tenant: str) -> ProfileSpec:
        """The profile in force for ``tenant`` (see :meth:`profile_name_for`); ``full`` is
        the empty profile even when it is not stored."""
        return self.profiles.get(self.profile_name_for(tenant), _FULL)

    def policies_for(self, tenant: str, now: datetime) -> tuple[PolicySpec, ...]:
        """The active profile's policies and ``tenant``'s own, without those expired at
        ``now`` (aware UTC), in the order the pipeline applies them (``sort_key``)."""
        own = self.tenant_policies.get(tenant, ())
        chosen = [p for p in (*self.profile_for(tenant).policies, *own) if not p.expired(now)]
        return tuple(sorted(chosen, key=PolicySpec.sort_key))

    def next_expiry(self, now: datetime) -> datetime | None:
        """The earliest ``expire_time`` after ``now`` of any policy in the view, or None."""
        times = [p.expire_time for policies in (
                     *(profile.policies for profile in self.profiles.values()),
                     *self.tenant_policies.values())
                 for p in policies if p.expire_time is not None and p.expire_time > now]
        return min(times, default=None)
