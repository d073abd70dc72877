"""Where policies, profiles and active-profile pointers live, relative to ``/phoenix/v1/``
(the layout at the top of state.proto)."""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACTIVE_PREFIX",
    "POLICIES_PREFIX",
    "PROFILES_PREFIX",
    "active_key",
    "parse_active_key",
    "parse_policy_key",
    "parse_profile_key",
    "policy_key",
    "profile_key",
]

POLICIES_PREFIX: Final = "policies/"
PROFILES_PREFIX: Final = "profiles/"
ACTIVE_PREFIX: Final = "profile/active"
"""Both the default pointer's key and, with ``/<tenant>``, the prefix of tenant overrides."""


def policy_key(tenant: str, policy_id: str) -> str:
    return f"{POLICIES_PREFIX}{tenant}/{policy_id}"


def profile_key(name: str) -> str:
    return f"{PROFILES_PREFIX}{name}"


def active_key(tenant: str) -> str:
    """The default pointer for ``""``, else the tenant's override."""
    return f"{ACTIVE_PREFIX}/{tenant}" if tenant else ACTIVE_PREFIX


def parse_policy_key(key: str) -> tuple[str, str] | None:
    """``(tenant, id)`` of ``policies/<tenant>/<id>``, or None for any other shape."""
    parts = key.removeprefix(POLICIES_PREFIX).split("/")
    if not key.startswith(POLICIES_PREFIX) or len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def parse_profile_key(key: str) -> str | None:
    """The name in ``profiles/<name>``, or None."""
    name = key.removeprefix(PROFILES_PREFIX)
    if not key.startswith(PROFILES_PREFIX) or not name or "/" in name:
        return None
    return name


def parse_active_key(key: str) -> str | None:
    """``""`` for the default pointer, the tenant for an override, None for other keys."""
    if key == ACTIVE_PREFIX:
        return ""
    tenant = key.removeprefix(ACTIVE_PREFIX + "/")
    if not key.startswith(ACTIVE_PREFIX + "/") or not tenant or "/" in tenant:
        return None
    return tenant
