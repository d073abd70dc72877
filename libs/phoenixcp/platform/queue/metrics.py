"""The durable queues' self-metrics; one instance per registry, shared by every queue."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["QueueMetrics"]


class QueueMetrics:
    """Gauges and counters of every queue on one registry, labelled by queue name."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.bytes = Gauge(
            "phoenix_queue_bytes",
            "Bytes of segment files the queue holds on disk (the bound applies to this).",
            ["queue"], registry=registry,
        )
        self.max_bytes = Gauge(
            "phoenix_queue_max_bytes", "The queue's configured bound in bytes.",
            ["queue"], registry=registry,
        )
        self.records = Gauge(
            "phoenix_queue_records",
            "Records appended and not yet committed (waiting, or being exported).",
            ["queue"], registry=registry,
        )
        self.oldest_age = Gauge(
            "phoenix_queue_oldest_record_age_seconds",
            "Age of the oldest record not yet committed; 0 when the queue is empty.",
            ["queue"], registry=registry,
        )
        self.appends = Counter(
            "phoenix_queue_appends_total", "Records durably appended.",
            ["queue"], registry=registry,
        )
        self.rejected = Counter(
            "phoenix_queue_appends_rejected_total",
            "Appends refused because the queue was full (the caller got ResourceExhausted).",
            ["queue"], registry=registry,
        )
        self.dead_lettered = Counter(
            "phoenix_queue_dead_lettered_total",
            "Records set aside to the dead-letter file.",
            ["queue"], registry=registry,
        )
        self.truncated = Counter(
            "phoenix_queue_corrupt_records_total",
            "Corrupt records met while reading a live segment (the rest of it is skipped).",
            ["queue"], registry=registry,
        )
