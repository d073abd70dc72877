"""How a pipeline replica follows the control plane: policies and profiles from etcd (and the
config file's static policies) into the engine; window reports out to NATS.

The data path never waits on this: until etcd answers, the engine applies the static policies
only; a watch that breaks keeps the last valid state (the watcher resumes by itself).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import json_format
from prometheus_client import CollectorRegistry

from metrics_pipeline.policy_stage import PolicyStage
from phoenixcp.api.phoenix.v1 import state_pb2
from phoenixcp.core.policy.engine import PolicyEngine
from phoenixcp.core.policy.model import PolicySpec, ProfileSpec
from phoenixcp.core.policy.window import TenantSnapshot
from phoenixcp.errors import ConfigError, InvalidArgument, PhoenixError
from phoenixcp.platform.cluster import ClusterMember
from phoenixcp.platform.policy import PolicyStore, PolicyView, PolicyWatcher, policy_from_proto
from phoenixcp.platform.telemetry import WindowReporter

__all__ = ["PolicyFollower", "static_policies"]

log = logging.getLogger(__name__)

_FULL = ProfileSpec(name="full", description="No policy: every series as it came.")


def static_policies(documents: Sequence[Mapping[str, Any]]) -> tuple[PolicySpec, ...]:
    """The config file's ``pipeline.static_policies``; ConfigError naming the bad one."""
    out: list[PolicySpec] = []
    for i, doc in enumerate(documents):
        key = f"pipeline.static_policies[{i}]"
        try:
            pb = json_format.ParseDict(dict(doc), state_pb2.Policy())
        except json_format.ParseError as exc:
            raise ConfigError(f"{key}: not a Policy document (state.proto): {exc}",
                              key=key) from None
        try:
            out.append(policy_from_proto(pb))
        except InvalidArgument as exc:
            raise ConfigError(f"{key}: {exc}", key=key) from None
    ids = [p.id for p in out]
    for policy_id in ids:
        if ids.count(policy_id) > 1:
            raise ConfigError(f"pipeline.static_policies: the id {policy_id!r} is used twice",
                              key="pipeline.static_policies")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Source:
    """etcd's view (None until the first read) plus the static policies."""

    view: PolicyView | None
    static: tuple[PolicySpec, ...]

    @property
    def profiles(self) -> Mapping[str, ProfileSpec]:
        return self.view.profiles if self.view is not None else {"full": _FULL}

    def profile_for(self, tenant: str) -> ProfileSpec:
        return self.view.profile_for(tenant) if self.view is not None else _FULL

    @property
    def rejections(self) -> Sequence[tuple[str, str, tuple[tuple[str, str], ...]]]:
        return self.view.rejections if self.view is not None else ()

    def policies_for(self, tenant: str, now: datetime) -> tuple[PolicySpec, ...]:
        live = tuple(p for p in self.static if not p.expired(now))
        if self.view is None:
            return live
        return self.view.policies_for(tenant, now) + live


class PolicyFollower:
    """Feeds the engine; ``follow`` once the cluster is up, ``shutdown`` (idempotent)."""

    def __init__(self, *, engine: PolicyEngine, stage: PolicyStage,
                 static: tuple[PolicySpec, ...], registry: CollectorRegistry,
                 window_interval: timedelta = timedelta(seconds=10)) -> None:
        self._engine = engine
        self._stage = stage
        self._static = static
        self._registry = registry
        self._window_interval = window_interval
        self._watcher: PolicyWatcher | None = None
        self._reporter: WindowReporter | None = None
        self._cluster: ClusterMember | None = None
        self.view: PolicyView | None = None

    def apply_static(self) -> None:
        self._apply(None)

    def _apply(self, view: PolicyView | None) -> None:
        self.view = view
        source = _Source(view, self._static)
        self._engine.apply(source)
        if self._stage.feeds is not None:
            self._stage.feeds.apply(source)
        self._stage.applied()

    async def follow(self, cluster: ClusterMember) -> None:
        """Seed the built-in profiles (idempotent), watch etcd, start window reports."""
        assert cluster.store is not None
        self._cluster = cluster
        try:
            await PolicyStore(cluster.store).ensure_builtin_profiles()
        except PhoenixError as exc:  # another replica will; the watch still follows etcd
            log.warning("built-in profiles not written", extra={"fields": {"error": str(exc)}})
        self._watcher = PolicyWatcher(cluster.store, on_change=self._apply,
                                      registry=self._registry)
        await self._watcher.start()
        self._reporter = WindowReporter(self._windows, cluster.bus, registry=self._registry,
                                        interval=self._window_interval)
        await self._reporter.start()

    async def _windows(self) -> list[TenantSnapshot]:
        members = self._cluster.members if self._cluster is not None else None
        return await self._stage.windows(replica_count=members.count if members else 1)

    async def shutdown(self) -> None:
        """Stop watching; publish the last window. Idempotent."""
        if self._watcher is not None:
            await self._watcher.shutdown()
            self._watcher = None
        if self._reporter is not None:
            await self._reporter.shutdown()
            self._reporter = None
