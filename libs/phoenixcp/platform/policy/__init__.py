"""policy: policies, profiles and active-profile pointers in etcd — validation, storage and
the live view every pipeline replica applies.

::

    store = PolicyStore(state)                     # state: StateStore or MemoryState
    await store.ensure_builtin_profiles()          # every replica at start; each written once
    stored, created = await store.apply_policy(pb, author_default=caller_spiffe_id)

    watcher = PolicyWatcher(state, on_change=pipeline.use_policies, registry=registry)
    await watcher.start()                          # first view delivered before it returns
    ...                                            # on SIGTERM:
    await watcher.shutdown()

:func:`policy_from_proto` / :func:`profile_from_proto` validate (raising
:class:`PolicyRejected`, an InvalidArgument listing every :class:`Violation`); the built-in
profiles themselves are pure values in :mod:`phoenixcp.core.policy.profiles`.
"""

from phoenixcp.platform.policy.codec import (
    PolicyRejected,
    Violation,
    policy_from_proto,
    policy_to_proto,
    profile_from_proto,
    profile_to_proto,
)
from phoenixcp.platform.policy.metrics import PolicyMetrics
from phoenixcp.platform.policy.store import PolicyStore
from phoenixcp.platform.policy.view import PolicyView, Rejection
from phoenixcp.platform.policy.watcher import PolicyWatcher

__all__ = [
    "PolicyMetrics",
    "PolicyRejected",
    "PolicyStore",
    "PolicyView",
    "PolicyWatcher",
    "Rejection",
    "Violation",
    "policy_from_proto",
    "policy_to_proto",
    "profile_from_proto",
    "profile_to_proto",
]
