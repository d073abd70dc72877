"""A tenant's window, as ``WindowReport`` messages small enough for JetStream.

:func:`build_reports` turns one :class:`~phoenixcp.core.policy.window.TenantSnapshot` into
the parts of one report (telemetry.proto): per metric an HLL of the input series keys, per
profile an HLL of the output keys with its estimate and points, per label name an HLL of
its values, a bottom-k sample of the input series, point counts and policy effects; in
part 0 the tenant's counts, batch latency DDSketch and refused policies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import numpy as np
from google.protobuf import timestamp_pb2

from phoenixcp.api.phoenix.v1 import common_pb2, state_pb2, telemetry_pb2
from phoenixcp.core.policy.window import (
    MetricSnapshot,
    PointTally,
    PolicyTally,
    SeriesSeen,
    TenantSnapshot,
)
from phoenixcp.core.series import METRIC_NAME_LABEL
from phoenixcp.core.sketches import (
    DEFAULT_K,
    HLL_LG_K,
    BottomK,
    bottom_k_indices,
    hll_estimate,
    hll_of_keys,
    hll_of_strings,
    quantile_sketch,
)
from phoenixcp.platform.telemetry.codec import quantile_sketch_to_proto

__all__ = ["build_reports", "report_id"]

_log = logging.getLogger(__name__)

# `part` and `part_count` are set once the split is known: a tag and a varint each.
_PART_FIELDS: Final = 2 * (1 + 5)


def report_id(snapshot: TenantSnapshot) -> str:
    """``<replica_id>:<tenant>:<window start in unix ms>``, shared by all parts."""
    return f"{snapshot.replica_id}:{snapshot.tenant}:{snapshot.start_ms}"


def build_reports(
    snapshot: TenantSnapshot,
    *,
    max_bytes: int,
    address: str = "",
    sample_k: int = DEFAULT_K,
    lg_k: int = HLL_LG_K,
) -> list[telemetry_pb2.WindowReport]:
    """The parts of the report of ``snapshot``, each serialising to at most ``max_bytes``.

    Every part repeats the header (report id, replica, tenant, window, replica count, active
    profile, part, part count); metrics are packed in snapshot order, each in exactly one
    part; the tenant-level fields (counts, batch latency, refused policies) are in part 0
    only. ``address`` is the replica's gRPC address for ``ReplicaIdentity``.

    A metric too big for a part of its own is never dropped: its sample is trimmed to the
    series with the smallest keys that fit, and ``sample.k`` records the size it was cut to
    (with ``max_hash`` the largest key kept), so it stays an honest, mergeable bottom-k
    sample with a wider error (and ``k`` below 256). Should the metric still not fit with no
    sampled series (thousands of label names), it goes alone into a part larger than
    ``max_bytes``, which the bus will refuse and count. Both cases are logged.

    Pure apart from logging and thread-safe; CPU-bound (about 0.5 s of CPU per 100k distinct
    series over 50 metrics and 5 profiles), so a caller on an event loop runs it in a
    thread. Raises ``ValueError`` when ``max_bytes`` cannot hold the header.
    """
    header = _header(snapshot, address)
    base = header.ByteSize() + _PART_FIELDS
    if base >= max_bytes:
        raise ValueError(f"max_bytes={max_bytes} cannot hold the report header ({base} bytes)")
    tenant = _tenant_fields(snapshot)
    pieces = [_MetricPiece.build(m, snapshot.active_profile, sample_k, lg_k)
              for m in snapshot.metrics]
    groups = _pack(pieces, first=base + tenant.ByteSize(), base=base, max_bytes=max_bytes)
    parts = []
    for index, group in enumerate(groups):
        part = telemetry_pb2.WindowReport()
        part.CopyFrom(header)
        if index == 0:
            part.MergeFrom(tenant)
        part.metrics.extend(piece.message for piece in group)
        part.part = index
        part.part_count = len(groups)
        parts.append(part)
    return parts


def _pack(pieces: Iterable[_MetricPiece], *, first: int, base: int,
          max_bytes: int) -> list[list[_MetricPiece]]:
    """Greedy, in order: a metric that does not fit starts a new part, trimmed if need be."""
    groups: list[list[_MetricPiece]] = [[]]
    used = first
    for piece in pieces:
        size = piece.size()
        if used + size > max_bytes and used > base:
            groups.append([])
            used = base
        if used + size > max_bytes:
            piece.trim_to(max_bytes - used)
            size = piece.size()
        groups[-1].append(piece)
        used += size
    return groups


@dataclass(slots=True)
class _MetricPiece:
    """One metric's message, with what it takes to trim its sample."""

    message: telemetry_pb2.MetricWindow
    sampled: list[telemetry_pb2.SampledSeries]
    bottom: BottomK

    @classmethod
    def build(cls, metric: MetricSnapshot, active_profile: str, k: int,
              lg_k: int) -> _MetricPiece:
        series = metric.series
        keys = np.fromiter((s.key for s in series), dtype=np.uint64, count=len(series))
        input_hll = hll_of_keys(metric.all_keys, lg_k)
        message = telemetry_pb2.MetricWindow(
            metric_name=metric.name,
            metric_type=common_pb2.MetricType.ValueType(metric.kind.value),
            input_series_hll=input_hll,
            input_series_estimate=round(hll_estimate(input_hll)),
            profiles=[_profile(name, metric, name == active_profile, lg_k)
                      for name in sorted(metric.outputs)],
            labels=_label_windows(metric.all_label_pairs, lg_k),
            counts=_counts(metric.counts),
            policy_effects=[_effect(p) for p in metric.policies],
        )
        picked = bottom_k_indices(keys, k)
        piece = cls(message, [_sampled(series[i]) for i in picked.tolist()],
                    BottomK(k, keys[picked]))
        piece._set_sample(len(piece.sampled))
        return piece

    def size(self) -> int:
        """Bytes the metric adds to a ``WindowReport`` (tag, length, message)."""
        return _embedded(self.message.ByteSize())

    def trim_to(self, budget: int) -> None:
        """Keep the most sampled series with which :meth:`size` is at most ``budget``."""
        full = len(self.sampled)
        low, high = 0, full
        while low < high:
            middle = (low + high + 1) // 2
            self._set_sample(middle)
            if self.size() <= budget:
                low = middle
            else:
                high = middle - 1
        self._set_sample(low)
        name = self.message.metric_name
        if self.size() > budget:
            _log.error("window report metric exceeds the message limit even without a sample",
                       extra={"fields": {"metric": name, "bytes": self.size(),
                                         "limit": budget}})
        else:
            _log.warning("window report sample trimmed to fit the message limit",
                         extra={"fields": {"metric": name, "kept": low, "of": full,
                                           "limit": budget}})

    def _set_sample(self, count: int) -> None:
        kept = self.bottom if count >= len(self.sampled) else self.bottom.truncated(count)
        sample = self.message.sample
        sample.ClearField("series")
        sample.series.extend(self.sampled[:count])
        sample.k = kept.k
        sample.max_hash = kept.max_hash


def _embedded(size: int) -> int:
    """Bytes of a length-delimited field of number < 16 whose content is ``size`` bytes."""
    return 1 + _varint_size(size) + size


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _header(snapshot: TenantSnapshot, address: str) -> telemetry_pb2.WindowReport:
    return telemetry_pb2.WindowReport(
        report_id=report_id(snapshot),
        replica=common_pb2.ReplicaIdentity(
            service=common_pb2.SERVICE_NAME_METRICS_PIPELINE,
            replica_id=snapshot.replica_id, address=address),
        tenant=snapshot.tenant,
        window=common_pb2.TimeWindow(start_time=_timestamp(snapshot.start_ms),
                                     end_time=_timestamp(snapshot.end_ms)),
        replica_count=snapshot.replica_count,
        active_profile=snapshot.active_profile,
    )


def _tenant_fields(snapshot: TenantSnapshot) -> telemetry_pb2.WindowReport:
    return telemetry_pb2.WindowReport(
        counts=_counts(snapshot.counts),
        batch_latency_seconds=quantile_sketch_to_proto(
            quantile_sketch(snapshot.batch_latency_seconds)),
        rejected_policies=[
            telemetry_pb2.PolicyRejection(
                tenant=tenant, policy_id=policy_id,
                violations=[common_pb2.FieldViolation(field=f, description=d)
                            for f, d in violations])
            for tenant, policy_id, violations in snapshot.rejected_policies
        ],
    )


def _timestamp(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def _counts(tally: PointTally) -> telemetry_pb2.PointCounts:
    return telemetry_pb2.PointCounts(
        received=tally.received, accepted=tally.accepted, dropped=tally.dropped,
        merged=tally.merged, overflowed=tally.overflowed, emitted=tally.emitted)


def _effect(tally: PolicyTally) -> telemetry_pb2.PolicyEffect:
    mode = state_pb2.POLICY_MODE_DRY_RUN if tally.dry_run else state_pb2.POLICY_MODE_ENFORCE
    return telemetry_pb2.PolicyEffect(
        policy_id=tally.policy_id, mode=mode, matched_points=tally.matched_points,
        matched_series=tally.matched_series, changed_points=tally.changed_points,
        output_series=tally.output_series)


def _profile(name: str, metric: MetricSnapshot, active: bool,
             lg_k: int) -> telemetry_pb2.ProfileOutput:
    output_hll = hll_of_keys(metric.outputs[name], lg_k)
    return telemetry_pb2.ProfileOutput(
        profile_name=name, active=active, output_series_hll=output_hll,
        output_series_estimate=round(hll_estimate(output_hll)),
        output_points=metric.output_points.get(name, 0))


def _label_windows(pairs: frozenset[tuple[str, str]], lg_k: int
                   ) -> list[telemetry_pb2.LabelWindow]:
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        known = values.get(name)
        if known is None:
            values[name] = known = []
        known.append(value)
    values.pop(METRIC_NAME_LABEL, None)
    windows = []
    for name in sorted(values):
        blob = hll_of_strings(values[name], lg_k)
        windows.append(telemetry_pb2.LabelWindow(
            label_name=name, values_hll=blob, values_estimate=round(hll_estimate(blob))))
    return windows


def _sampled(seen: SeriesSeen) -> telemetry_pb2.SampledSeries:
    return telemetry_pb2.SampledSeries(
        series_hash=seen.key,
        labels=[common_pb2.Label(name=name, value=value)
                for name, value in sorted(seen.labels) if name != METRIC_NAME_LABEL],
        points=seen.points,
        last_value=seen.last_value,
        priority_class=common_pb2.PriorityClass.ValueType(int(seen.priority)),
    )
