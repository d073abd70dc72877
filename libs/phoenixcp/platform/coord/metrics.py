"""The coord adapter's Prometheus metrics, registered once per registry.

Several elections, stores and watches in one process (tests run three replicas in one loop)
share the metric objects of their registry; with no registry they count into a private one
that nobody scrapes, so the code never branches on "metrics enabled".
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CoordMetrics", "WatchLag", "coord_metrics"]


class WatchLag:
    """How far one watch may be behind: 0 while its stream is up, else seconds since it broke."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._down_since: float | None = time.monotonic()  # not live until the first response

    def live(self) -> None:
        self._down_since = None

    def down(self) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()

    def seconds(self) -> float:
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since


class _WatchLagCollector(Collector):
    def __init__(self) -> None:
        self.watches: weakref.WeakSet[WatchLag] = weakref.WeakSet()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "phoenix_etcd_watch_lag_seconds",
            "Seconds an etcd watch has been without a live stream (0 while it streams): how "
            "stale this replica's view of the prefix may be. The worst watch per prefix.",
            labels=["prefix"],
        )
        worst: dict[str, float] = {}
        for lag in list(self.watches):
            worst[lag.prefix] = max(worst.get(lag.prefix, 0.0), lag.seconds())
        for prefix, seconds in sorted(worst.items()):
            family.add_metric([prefix], seconds)
        yield family


class CoordMetrics:
    """The metric objects of one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.leader = Gauge(
            "phoenix_leader", "1 while this replica leads its service, else 0.",
            ["service"], registry=registry,
        )
        self.transitions = Counter(
            "phoenix_election_transitions_total",
            "Leadership gained or lost by this replica.",
            ["service", "direction"], registry=registry,
        )
        self.fenced_refused = Counter(
            "phoenix_fenced_writes_refused_total",
            "Leader-only writes refused because this replica's term had ended "
            "(where: local = before sending, etcd = by the transaction).",
            ["service", "where"], registry=registry,
        )
        self.invalid_values = Counter(
            "phoenix_etcd_invalid_values_total",
            "Values under /phoenix/v1/ that did not parse as their message type and were skipped.",
            ["message_type"], registry=registry,
        )
        self.watch_resumes = Counter(
            "phoenix_etcd_watch_resumes_total",
            "Watches resumed after a broken stream (reconnect) or re-read after a compaction.",
            ["prefix", "reason"], registry=registry,
        )
        self.watch_lag = _WatchLagCollector()
        registry.register(self.watch_lag)


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, CoordMetrics] = (
    weakref.WeakKeyDictionary()
)


def coord_metrics(registry: CollectorRegistry | None) -> CoordMetrics:
    """The metrics of ``registry`` (created on first use), or unexported ones for None."""
    if registry is None:
        return CoordMetrics(CollectorRegistry(auto_describe=True))
    metrics = _BY_REGISTRY.get(registry)
    if metrics is None:
        metrics = _BY_REGISTRY[registry] = CoordMetrics(registry)
    return metrics
