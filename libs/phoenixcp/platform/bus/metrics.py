"""The bus's self-metrics, registered on the service's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["BusMetrics"]


class BusMetrics:
    """Counters and gauges of one :class:`EventBus`; one instance per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "phoenix_bus_published_total",
            "Messages JetStream confirmed it stored, by subject kind (events.<payload>, "
            "telemetry.<kind>).",
            ["subject_kind"],
            registry=registry,
        )
        self.publish_failures = Counter(
            "phoenix_bus_publish_failures_total",
            "Publish attempts that failed (NATS away, timeout); the message was buffered or "
            "retried.",
            registry=registry,
        )
        self.rejected = Counter(
            "phoenix_bus_publish_rejected_total",
            "Messages refused for good: the buffer was full (the caller got ResourceExhausted), "
            "JetStream refused the message, or shutdown ended before it was sent.",
            ["reason"],
            registry=registry,
        )
        self.buffered = Gauge(
            "phoenix_bus_buffered_events",
            "Messages waiting in the publish buffer for NATS.",
            registry=registry,
        )
        self.consumed = Counter(
            "phoenix_bus_consumed_total",
            "Messages a subscription finished with: ack (handled or already seen), nak "
            "(handler failed; redelivered later), term (undecodable; never redelivered).",
            ["durable", "outcome"],
            registry=registry,
        )
        self.pending = Gauge(
            "phoenix_bus_consumer_pending",
            "Messages in the stream the durable consumer has not been delivered yet (lag).",
            ["durable"],
            registry=registry,
        )
