"""The exporters' self-metrics; one instance per registry, labelled by exporter name."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ExportMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0,
                    10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class ExportMetrics:
    """Counters, gauges and histograms of every export worker on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.samples = Counter(
            "phoenix_export_samples_total",
            "Samples by what became of an export attempt: exported (the backend stored them), "
            "retried (the attempt failed and will be repeated), dead_lettered (refused for "
            "good and set aside).",
            ["exporter", "outcome"], registry=registry,
        )
        self.requests = Counter(
            "phoenix_export_requests_total",
            "Export requests by result: success, retryable, rejected.",
            ["exporter", "result"], registry=registry,
        )
        self.request_seconds = Histogram(
            "phoenix_export_request_duration_seconds",
            "Time of one export request, whatever its result.",
            ["exporter"], buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.end_to_end_seconds = Histogram(
            "phoenix_export_end_to_end_seconds",
            "From a record's append to the durable queue to the backend's acknowledgement "
            "(one observation per queued record).",
            ["exporter"], buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.in_flight = Gauge(
            "phoenix_export_in_flight_requests",
            "Batches being sent or waiting to be retried.",
            ["exporter"], registry=registry,
        )
