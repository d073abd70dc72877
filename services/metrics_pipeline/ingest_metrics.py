"""What the receivers count: points received, accepted and rejected, by receiver and reason."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["IngestMetrics"]


class IngestMetrics:
    """One set per process, shared by every receiver (label ``receiver``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "phoenix_pipeline_requests_total", "Ingest requests, by receiver and outcome.",
            ["receiver", "outcome"], registry=registry)
        self.received = Counter(
            "phoenix_pipeline_points_received_total",
            "Data points in requests that decoded, accepted or not.", ["receiver"],
            registry=registry)
        self.accepted = Counter(
            "phoenix_pipeline_points_accepted_total",
            "Data points durably queued for every exporter.", ["receiver"], registry=registry)
        self.rejected = Counter(
            "phoenix_pipeline_points_rejected_total",
            "Data points refused, by reason (invalid, queue_full, partial).",
            ["receiver", "reason"], registry=registry)
        self.latency = Histogram(
            "phoenix_pipeline_ingest_seconds",
            "Request received → answered (durably queued), by receiver.", ["receiver"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
