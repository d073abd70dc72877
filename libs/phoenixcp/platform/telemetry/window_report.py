"""A tenant's window, as ``WindowReport`` messages small enough for JetStream.

:func:`build_reports` turns one :class:`~phoenixcp.core.policy.window.TenantSnapshot` into
the parts of one report (telemetry.proto; :func:`encode_reports` gives them serialised): per
metric an HLL of the input series keys, per profile an HLL of the output keys with its
estimate and points, per label name an HLL of its values, a bottom-k sample of the input
series, point counts and policy effects; in part 0 the tenant's counts, batch latency
DDSketch and refused policies.

Each metric is encoded once, to bytes, and each part parsed once from the bytes of its
metrics: the sampled series (256 per metric, most of a report's bytes) are written straight
in the protobuf wire format, from the sample's columns (by :mod:`._report_wire`, which the
tests check byte for byte against the generated code) rather than built as messages. A
:class:`ReportCache` carries what the next window of the same tenant can reuse: the sketches
of key sets and label values that did not change and the encoded labels of sampled series.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
from google.protobuf import timestamp_pb2

from phoenixcp.api.phoenix.v1 import common_pb2, state_pb2, telemetry_pb2
from phoenixcp.core.checkpoints import checkpoint
from phoenixcp.core.policy.window import (
    MetricSnapshot,
    PointTally,
    PolicyTally,
    SeriesColumns,
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
from phoenixcp.core.wire import varint as _varint
from phoenixcp.platform.telemetry._report_wire import (
    _LABELS_TAG,
    _METRICS_TAG,
    _PART_COUNT_TAG,
    _PART_TAG,
    _SAMPLE_TAG,
    _SERIES_TAG,
    _field,
    _series_prefix,
    _series_tails,
)
from phoenixcp.platform.telemetry.codec import quantile_sketch_to_proto

__all__ = ["ReportCache", "build_reports", "encode_reports", "report_id"]

_log = logging.getLogger(__name__)

# `part` and `part_count` are set once the split is known: a tag and a varint each.
_PART_FIELDS: Final = 2 * (1 + 5)


def report_id(snapshot: TenantSnapshot) -> str:
    """``<replica_id>:<tenant>:<window start in unix ms>``, shared by all parts."""
    return f"{snapshot.replica_id}:{snapshot.tenant}:{snapshot.start_ms}"


class ReportCache:
    """What :func:`build_reports` may reuse from a tenant's previous window: the HLL of a key
    set (a metric's input keys, a profile's output keys) equal to the last one, the label
    windows of a metric whose distinct label pairs did not change, and the encoded labels of
    series sampled again. The reports are the same with or without it.

    Holds the last window of each tenant only (about its sampled series and sketches).
    Not thread-safe: one caller at a time (the reporter builds one window after the other).
    """

    def __init__(self) -> None:
        self._tenants: dict[str, _TenantCache] = {}

    def _swap(self, tenant: str) -> tuple[_TenantCache, _TenantCache]:
        """The tenant's last window's entries, and empty ones to fill for this window."""
        old = self._tenants.get(tenant) or _TenantCache()
        new = self._tenants[tenant] = _TenantCache()
        return old, new


@dataclass(frozen=True, slots=True)
class _Sketch:
    keys: npt.NDArray[np.uint64]
    lg_k: int
    blob: bytes
    estimate: int


@dataclass(slots=True)
class _TenantCache:
    sketches: dict[tuple[str, str], _Sketch] = field(default_factory=dict)
    """(metric, profile or "" for the input) → the sketch of its keys."""
    labels: dict[str, tuple[frozenset[tuple[str, str]], int, bytes]] = field(
        default_factory=dict)
    """metric → (label pairs, lg_k, encoded ``labels`` fields)."""
    samples: dict[str, tuple[npt.NDArray[np.uint64], list[bytes]]] = field(
        default_factory=dict)
    """metric → its sampled keys and their :func:`_series_prefix` (hash and labels)."""


def build_reports(
    snapshot: TenantSnapshot,
    *,
    max_bytes: int,
    address: str = "",
    sample_k: int = DEFAULT_K,
    lg_k: int = HLL_LG_K,
    cache: ReportCache | None = None,
) -> list[telemetry_pb2.WindowReport]:
    """The parts of the report of ``snapshot``, each serialising to at most ``max_bytes``.

    Every part repeats the header (report id, replica, tenant, window, replica count, active
    profile, part, part count); metrics are packed in snapshot order, each in exactly one
    part; the tenant-level fields (counts, batch latency, refused policies) are in part 0
    only. ``address`` is the replica's gRPC address for ``ReplicaIdentity``. ``cache`` (the
    same one for every window of the reporter) saves the work of what did not change since
    the tenant's previous window.

    A metric too big for a part of its own is never dropped: its sample is trimmed to the
    series with the smallest keys that fit, and ``sample.k`` records the size it was cut to
    (with ``max_hash`` the largest key kept), so it stays an honest, mergeable bottom-k
    sample with a wider error (and ``k`` below 256). Should the metric still not fit with no
    sampled series (thousands of label names), it goes alone into a part larger than
    ``max_bytes``, which the bus will refuse and count. Both cases are logged.

    Pure apart from logging and the cache, and thread-safe without a cache; CPU-bound (with
    a cache, about 30 ms of CPU per 100k distinct series over 50 metrics whose keys did not
    change since the last window, 25 ms serialised with :func:`encode_reports`, plus about
    0.25 µs per key of a key set that did; 0.3 s without), so a caller on an event loop
    runs it in a thread. Raises ``ValueError`` when ``max_bytes`` cannot hold the header.
    """
    return [telemetry_pb2.WindowReport.FromString(part) for part in encode_reports(
        snapshot, max_bytes=max_bytes, address=address, sample_k=sample_k, lg_k=lg_k,
        cache=cache)]


def encode_reports(
    snapshot: TenantSnapshot,
    *,
    max_bytes: int,
    address: str = "",
    sample_k: int = DEFAULT_K,
    lg_k: int = HLL_LG_K,
    cache: ReportCache | None = None,
) -> list[bytes]:
    """The parts of :func:`build_reports`, serialised (part ``i`` has message id
    ``<report_id>:<i>``): what a publisher sends, without building the messages.

    Valid ``WindowReport`` encodings, not the canonical one: fields are not all in field
    number order (each metric's label windows come after its other fields, ``part`` and
    ``part_count`` last), which every protobuf parser accepts.
    """
    header = _header(snapshot, address).SerializeToString()
    base = len(header) + _PART_FIELDS
    if base >= max_bytes:
        raise ValueError(f"max_bytes={max_bytes} cannot hold the report header ({base} bytes)")
    tenant = _tenant_fields(snapshot).SerializeToString()
    old, new = (cache._swap(snapshot.tenant) if cache is not None
                else (_TenantCache(), _TenantCache()))
    pieces = []
    for m in snapshot.metrics:
        checkpoint()  # each metric is up to ~10 ms of CPU in a cold window
        pieces.append(_MetricPiece.build(m, snapshot.active_profile, sample_k, lg_k, old, new))
    groups = _pack(pieces, first=base + len(tenant), base=base, max_bytes=max_bytes)
    return [b"".join([header, tenant if index == 0 else b"",
                      *(piece.field() for piece in group),
                      _PART_TAG + _varint(index) if index else b"",  # proto3 leaves out 0
                      _PART_COUNT_TAG + _varint(len(groups))])
            for index, group in enumerate(groups)]


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
    """One metric, encoded: its fields but the sample, and its sampled series."""

    name: str
    head: bytes
    series: list[bytes]
    bottom: BottomK
    body: bytes = b""

    @classmethod
    def build(cls, metric: MetricSnapshot, active_profile: str, k: int, lg_k: int,
              old: _TenantCache, new: _TenantCache) -> _MetricPiece:
        name = metric.name
        input_sketch = _sketch(name, "", metric.all_keys, lg_k, old, new)
        profiles = []
        for profile in sorted(metric.outputs):
            keys = metric.outputs[profile]
            sketch = (input_sketch if np.array_equal(keys, input_sketch.keys)
                      else _sketch(name, profile, keys, lg_k, old, new))
            profiles.append(telemetry_pb2.ProfileOutput(
                profile_name=profile, active=profile == active_profile,
                output_series_hll=sketch.blob, output_series_estimate=sketch.estimate,
                output_points=metric.output_points.get(profile, 0)))
        head = telemetry_pb2.MetricWindow(
            metric_name=name,
            metric_type=common_pb2.MetricType.ValueType(metric.kind.value),
            input_series_hll=input_sketch.blob,
            input_series_estimate=input_sketch.estimate,
            profiles=profiles,
            counts=_counts(metric.counts),
            policy_effects=[_effect(p) for p in metric.policies],
        ).SerializeToString() + _label_windows(name, metric.all_label_pairs, lg_k, old, new)
        columns = SeriesColumns.of(metric.series)
        picked = bottom_k_indices(columns.keys, k)
        if not np.array_equal(picked, np.arange(len(columns))):  # not the window close's
            columns = SeriesColumns(columns.keys[picked],
                                    [columns.labels[i] for i in picked.tolist()],
                                    columns.points[picked], columns.last_values[picked],
                                    columns.priorities[picked])
        encoded = [b"".join((_SERIES_TAG, _varint(len(prefix) + len(tail)), prefix, tail))
                   for prefix, tail in zip(_series_prefixes(name, columns, old, new),
                                           _series_tails(columns), strict=True)]
        piece = cls(name, head, encoded, BottomK(k, columns.keys))
        piece._set_sample(len(encoded))
        return piece

    def size(self) -> int:
        """Bytes the metric adds to a ``WindowReport`` (tag, length, message)."""
        return len(_METRICS_TAG) + len(_varint(len(self.body))) + len(self.body)

    def field(self) -> bytes:
        """The metric as a ``metrics`` field of a ``WindowReport``."""
        return _field(_METRICS_TAG, self.body)

    def trim_to(self, budget: int) -> None:
        """Keep the most sampled series with which :meth:`size` is at most ``budget``."""
        full = len(self.series)
        low, high = 0, full
        while low < high:
            middle = (low + high + 1) // 2
            self._set_sample(middle)
            if self.size() <= budget:
                low = middle
            else:
                high = middle - 1
        self._set_sample(low)
        if self.size() > budget:
            _log.error("window report metric exceeds the message limit even without a sample",
                       extra={"fields": {"metric": self.name, "bytes": self.size(),
                                         "limit": budget}})
        else:
            _log.warning("window report sample trimmed to fit the message limit",
                         extra={"fields": {"metric": self.name, "kept": low, "of": full,
                                           "limit": budget}})

    def _set_sample(self, count: int) -> None:
        kept = self.bottom if count >= len(self.series) else self.bottom.truncated(count)
        tail = telemetry_pb2.SeriesSample(k=kept.k, max_hash=kept.max_hash).SerializeToString()
        self.body = self.head + _field(_SAMPLE_TAG, b"".join(self.series[:count]) + tail)


def _series_prefixes(metric: str, columns: SeriesColumns, old: _TenantCache,
                     new: _TenantCache) -> list[bytes]:
    """:func:`_series_prefix` of every series: the last window's list when the metric
    sampled the same keys, else per key the last window's bytes or new ones."""
    last = old.samples.get(metric)
    if last is not None and np.array_equal(last[0], columns.keys):
        prefixes = last[1]
    else:
        known = dict(zip(last[0].tolist(), last[1], strict=True)) if last is not None else {}
        prefixes = []
        for i, (key, labels) in enumerate(zip(columns.keys.tolist(), columns.labels,
                                              strict=True)):
            if not i % 16:
                checkpoint()  # a new series' prefix is ~40 us
            prefixes.append(known.get(key) or _series_prefix(key, labels))
    new.samples[metric] = (columns.keys, prefixes)
    return prefixes


def _sketch(metric: str, profile: str, keys: npt.NDArray[np.uint64], lg_k: int,
            old: _TenantCache, new: _TenantCache) -> _Sketch:
    """The HLL of ``keys``: the last window's when it had the same keys in the same order
    (so the same bytes, estimate included), else a new one."""
    found = old.sketches.get((metric, profile))
    if found is None or found.lg_k != lg_k or not np.array_equal(found.keys, keys):
        blob = hll_of_keys(keys, lg_k)
        found = _Sketch(keys, lg_k, blob, round(hll_estimate(blob)))
    new.sketches[(metric, profile)] = found
    return found


def _label_windows(metric: str, pairs: frozenset[tuple[str, str]], lg_k: int,
                   old: _TenantCache, new: _TenantCache) -> bytes:
    """The ``labels`` fields of a ``MetricWindow``: per label name (``__name__`` aside), by
    name, the HLL of its distinct values, each updated once, in sorted order."""
    found = old.labels.get(metric)
    if found is not None and found[1] == lg_k and found[0] == pairs:
        new.labels[metric] = found
        return found[2]
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        known = values.get(name)
        if known is None:
            values[name] = known = []
        known.append(value)
    values.pop(METRIC_NAME_LABEL, None)
    windows = []
    for name in sorted(values):
        checkpoint()
        blob = hll_of_strings(sorted(values[name]), lg_k)
        windows.append(_field(_LABELS_TAG, telemetry_pb2.LabelWindow(
            label_name=name, values_hll=blob,
            values_estimate=round(hll_estimate(blob))).SerializeToString()))
    encoded = b"".join(windows)
    new.labels[metric] = (pairs, lg_k, encoded)
    return encoded


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
