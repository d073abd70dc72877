"""Which tenant a request belongs to.

The ``X-Scope-OrgID`` HTTP header or gRPC metadata key (Mimir's convention) wins; else the
last path segment of the client certificate's SPIFFE ID (``spiffe://phoenix/team-a`` →
``team-a``); else ``default``. A tenant name must match ``^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$``
(protos/phoenix/v1/common.proto: it becomes an etcd key segment and a NATS subject token);
anything else is refused with InvalidArgument. Pure functions.
"""

from __future__ import annotations

import re

from phoenixcp.errors import InvalidArgument

__all__ = ["DEFAULT_TENANT", "TENANT_HEADER", "TENANT_METADATA_KEY", "TENANT_PATTERN",
           "resolve_tenant", "validate_tenant"]

TENANT_HEADER = "X-Scope-OrgID"
TENANT_METADATA_KEY = "x-scope-orgid"
"""The same header as gRPC metadata (keys are lower case)."""
DEFAULT_TENANT = "default"
TENANT_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")


def validate_tenant(name: str, *, source: str = TENANT_HEADER) -> str:
    """``name`` if it is a valid tenant name, else InvalidArgument naming ``source``."""
    if _TENANT.match(name) is None:
        raise InvalidArgument(
            f"{source}: tenant {name[:80]!r} is not valid; tenant names match {TENANT_PATTERN}",
            field=source,
        )
    return name


def resolve_tenant(org_id: str | None, *, spiffe_id: str | None = None) -> str:
    """The tenant of a request from its ``X-Scope-OrgID`` value and the caller's SPIFFE ID
    (either may be None or empty)."""
    if org_id:
        return validate_tenant(org_id.strip())
    if spiffe_id and spiffe_id.startswith("spiffe://"):
        path = [p for p in spiffe_id[len("spiffe://"):].split("/")[1:] if p]
        if path:
            return validate_tenant(path[-1], source="client certificate SPIFFE ID")
    return DEFAULT_TENANT
