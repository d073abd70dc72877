"""The policy watcher's Prometheus metrics, registered once per registry (several watchers in
one process, as in tests with three replicas, share them)."""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["PolicyMetrics", "policy_metrics"]


class PolicyMetrics:
    """The metric objects of one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rejected = Counter(
            "phoenix_policy_rejected_total",
            "Values read from etcd that failed validation and were not applied (the replica "
            "kept the last valid version), once per key and generation; kind is policy, "
            "profile or active_profile.",
            ["kind"], registry=registry,
        )
        self.rejected_now = Gauge(
            "phoenix_policy_rejections",
            "Keys whose latest value in etcd is currently refused, by kind.",
            ["kind"], registry=registry,
        )
        self.views = Counter(
            "phoenix_policy_views_total",
            "Policy views handed to the pipeline (after a change, or when a policy expired).",
            registry=registry,
        )
        self.revision = Gauge(
            "phoenix_policy_view_revision",
            "The etcd revision of the policy view in force on this replica.",
            registry=registry,
        )


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, PolicyMetrics] = (
    weakref.WeakKeyDictionary()
)


def policy_metrics(registry: CollectorRegistry | None) -> PolicyMetrics:
    """The metrics of ``registry`` (created on first use), or unexported ones for None."""
    if registry is None:
        return PolicyMetrics(CollectorRegistry(auto_describe=True))
    metrics = _BY_REGISTRY.get(registry)
    if metrics is None:
        metrics = _BY_REGISTRY[registry] = PolicyMetrics(registry)
    return metrics
