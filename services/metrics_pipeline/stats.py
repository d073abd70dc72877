"""This replica's traffic as pipeline.proto's stats messages.

Two sources, both this process's own:

* the policy engine's last closed window per tenant
  (:class:`~phoenixcp.core.policy.window.TenantSnapshot`): counts, distinct input series and
  the output series of the active profile, per tenant and per metric;
* the counters and gauges the pipeline already keeps in its Prometheus registry, for what a
  window does not hold: points since start per tenant (the policy stage's
  ``phoenix_policy_points_total``) and each exporter's queue and delivery figures. Reading
  them here keeps one source of truth for ``/metrics`` and the API.

Pure reads; call from the event loop (the registry is thread-safe, the snapshots immutable).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from google.protobuf import duration_pb2, timestamp_pb2
from prometheus_client import CollectorRegistry

from phoenixcp.api.phoenix.v1 import common_pb2, pipeline_pb2, telemetry_pb2
from phoenixcp.core.policy.dry_run import distinct_series
from phoenixcp.core.policy.window import MetricSnapshot, PointTally, TenantSnapshot
from phoenixcp.platform.pipeline_config import ExporterConfig
from phoenixcp.platform.redact import redacted_endpoint

__all__ = ["ReplicaCounters", "metric_stats", "point_counts", "tenant_stats", "time_window"]

_STAGE_POINTS = "phoenix_policy_points_total"
_FULL_FRACTION = 0.95
"""A queue this full refuses the next typical request: report QUEUE_FULL."""
_KINDS = {"remote-write": pipeline_pb2.EXPORTER_KIND_REMOTE_WRITE,
          "otlp": pipeline_pb2.EXPORTER_KIND_OTLP_GRPC}


def point_counts(tally: PointTally) -> telemetry_pb2.PointCounts:
    return telemetry_pb2.PointCounts(
        received=tally.received, accepted=tally.accepted, dropped=tally.dropped,
        merged=tally.merged, overflowed=tally.overflowed, emitted=tally.emitted)


def _timestamp(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def time_window(start_ms: int, end_ms: int) -> common_pb2.TimeWindow:
    return common_pb2.TimeWindow(start_time=_timestamp(start_ms), end_time=_timestamp(end_ms))


def _output_series(metric: MetricSnapshot, active_profile: str) -> int:
    outputs = metric.outputs.get(active_profile)
    return distinct_series(metric) if outputs is None else int(outputs.size)


def metric_stats(metric: MetricSnapshot, active_profile: str) -> pipeline_pb2.MetricStats:
    """One metric of a closed window; ``active_profile`` is the window's."""
    return pipeline_pb2.MetricStats(
        metric_name=metric.name,
        metric_type=common_pb2.MetricType.ValueType(metric.kind.value),
        last_window=point_counts(metric.counts),
        input_series=distinct_series(metric),
        output_series=_output_series(metric, active_profile),
        policy_ids=sorted({t.policy_id for t in metric.policies}),
    )


def tenant_stats(tenant: str, *, active_profile: str, total: telemetry_pb2.PointCounts,
                 window: TenantSnapshot | None) -> pipeline_pb2.TenantStats:
    """A tenant's stats; without a closed window only the totals since start are known."""
    out = pipeline_pb2.TenantStats(tenant=tenant, active_profile=active_profile, total=total)
    if window is not None:
        out.last_window.CopyFrom(point_counts(window.counts))
        out.last_window_range.CopyFrom(time_window(window.start_ms, window.end_ms))
        out.input_series = sum(distinct_series(m) for m in window.metrics)
        out.output_series = sum(_output_series(m, window.active_profile)
                                for m in window.metrics)
    return out


class ReplicaCounters:
    """Counts since start and exporter figures from this replica's Prometheus registry."""

    def __init__(self, *, registry: CollectorRegistry,
                 exporters: Sequence[ExporterConfig]) -> None:
        self._registry = registry
        self._exporters = tuple(exporters)

    def _value(self, name: str, labels: dict[str, str]) -> float:
        return self._registry.get_sample_value(name, labels) or 0.0

    def totals(self, tenant: str) -> telemetry_pb2.PointCounts:
        """Points of ``tenant`` through the policy stage since this replica started."""
        by_action = {action: int(self._value(_STAGE_POINTS, {"tenant": tenant,
                                                              "action": action}))
                     for action in ("passed", "dropped", "merged", "overflowed", "emitted")}
        received = sum(n for a, n in by_action.items() if a != "emitted")
        return telemetry_pb2.PointCounts(
            received=received, accepted=received, dropped=by_action["dropped"],
            merged=by_action["merged"], overflowed=by_action["overflowed"],
            emitted=by_action["emitted"])

    def exporters(self) -> list[pipeline_pb2.ExporterStats]:
        """Each configured exporter with its queue and delivery counts, and its endpoint with
        any password shown as ``***``.

        The state is derived: QUEUE_FULL at 95% of the queue's capacity; RETRYING when sends
        were retried and the oldest queued item is older than one send timeout plus one flush
        interval (a healthy exporter ships it within that); HEALTHY otherwise. The last error
        and last success time are not kept by the exporters and stay unset.
        """
        return [self._exporter(config) for config in self._exporters]

    def _exporter(self, config: ExporterConfig) -> pipeline_pb2.ExporterStats:
        queue = {"queue": config.name}
        sent = {"exporter": config.name}
        queued = int(self._value("phoenix_queue_bytes", queue))
        capacity = int(self._value("phoenix_queue_max_bytes", queue))
        age = self._value("phoenix_queue_oldest_record_age_seconds", queue)
        retries = int(self._value("phoenix_export_requests_total", {**sent,
                                                                     "result": "retryable"}))
        state = pipeline_pb2.EXPORTER_STATE_HEALTHY
        if capacity and queued >= capacity * _FULL_FRACTION:
            state = pipeline_pb2.EXPORTER_STATE_QUEUE_FULL
        elif retries and timedelta(seconds=age) > config.timeout + config.flush_interval:
            state = pipeline_pb2.EXPORTER_STATE_RETRYING
        oldest = duration_pb2.Duration()
        oldest.FromTimedelta(timedelta(seconds=age))
        return pipeline_pb2.ExporterStats(
            name=config.name, kind=_KINDS.get(config.type, pipeline_pb2.EXPORTER_KIND_UNSPECIFIED),
            endpoint=redacted_endpoint(config.endpoint), state=state, queue_bytes=queued,
            queue_capacity_bytes=capacity, oldest_item_age=oldest,
            exported_points=int(self._value("phoenix_export_samples_total",
                                            {**sent, "outcome": "exported"})),
            retries=retries,
            dead_lettered_points=int(self._value("phoenix_export_samples_total",
                                                 {**sent, "outcome": "dead_lettered"})),
        )
