"""build_reports: a tenant's window as WindowReport parts under the payload limit."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenixcp.api.phoenix.v1 import common_pb2, state_pb2, telemetry_pb2
from phoenixcp.core.policy.window import SeriesColumns
from phoenixcp.core.sketches import MAX_HASH, hll_estimate, hll_union
from phoenixcp.platform.telemetry import (
    bottom_k_from_proto,
    build_reports,
    quantile_sketch_from_proto,
    quantile_sketch_to_proto,
)
from phoenixcp.platform.telemetry._report_wire import (
    _SERIES_TAG,
    _field,
    _series_prefix,
    _series_tails,
)
from phoenixcp.platform.telemetry.window_report import ReportCache, encode_reports
from tests.unit._window_support import PROFILES, START_MS, metric_snapshot, tenant_snapshot

pytestmark = pytest.mark.unit

MIB = 1024 * 1024
HEADER_FIELDS = ("report_id", "replica", "tenant", "window", "replica_count", "active_profile",
                 "part_count")


def test_one_part_carries_everything_and_round_trips() -> None:
    snapshot = tenant_snapshot(metrics=3, series_per_metric=1500)
    [report] = build_reports(snapshot, max_bytes=MIB, address="10.0.0.7:50051")
    again = telemetry_pb2.WindowReport.FromString(report.SerializeToString())
    assert again == report
    assert report.report_id == f"pipeline-0:acme:{START_MS}"
    assert report.replica == common_pb2.ReplicaIdentity(
        service=common_pb2.SERVICE_NAME_METRICS_PIPELINE, replica_id="pipeline-0",
        address="10.0.0.7:50051")
    assert report.window.start_time.ToMilliseconds() == START_MS
    assert report.window.end_time.ToMilliseconds() == START_MS + 10_000
    assert (report.part, report.part_count, report.replica_count) == (0, 1, 3)
    assert report.active_profile == "balanced"
    assert [m.metric_name for m in report.metrics] == [m.name for m in snapshot.metrics]
    assert report.counts.received == snapshot.counts.received > 0
    assert report.counts.merged == snapshot.counts.merged
    latency = quantile_sketch_from_proto(report.batch_latency_seconds)
    assert latency.count == 500
    p99 = latency.quantile(0.99)
    assert p99 == pytest.approx(
        np.quantile(snapshot.batch_latency_seconds, 0.99, method="lower"), rel=0.01)
    [rejection] = report.rejected_policies
    assert (rejection.tenant, rejection.policy_id) == ("acme", "bad-regex")
    assert rejection.violations[0].field == "match.metric_name_regex"


def test_estimates_are_close_to_the_truth_and_the_sample_is_bottom_k() -> None:
    snapshot = tenant_snapshot(metrics=2, series_per_metric=5000)
    [report] = build_reports(snapshot, max_bytes=MIB)
    for metric, window in zip(snapshot.metrics, report.metrics, strict=True):
        assert window.metric_type == common_pb2.METRIC_TYPE_COUNTER
        assert window.input_series_estimate == pytest.approx(5000, rel=0.05)
        assert hll_estimate(window.input_series_hll) == pytest.approx(5000, rel=0.05)
        profiles = {p.profile_name: p for p in window.profiles}
        assert sorted(profiles) == sorted(PROFILES)
        assert [p.profile_name for p in window.profiles if p.active] == ["balanced"]
        for name, keys in metric.outputs.items():
            assert profiles[name].output_series_estimate == pytest.approx(keys.size, rel=0.05)
            assert profiles[name].output_points == metric.output_points[name]
        labels = {w.label_name: w.values_estimate for w in window.labels}
        assert labels.pop("user_id") == pytest.approx(5000, rel=0.05)
        assert labels == {"instance": 20, "job": 5, "method": 4}
        keys = np.sort(np.array([s.key for s in metric.series], dtype=np.uint64))
        sample = window.sample
        assert sample.k == 256 and len(sample.series) == 256
        assert [s.series_hash for s in sample.series] == keys[:256].tolist()
        assert sample.max_hash == int(keys[255])
        assert bottom_k_from_proto(sample).estimate() == pytest.approx(5000, rel=0.3)
        by_key = {s.key: s for s in metric.series}
        first = sample.series[0]
        seen = by_key[first.series_hash]
        assert [(lb.name, lb.value) for lb in first.labels] == [
            (n, v) for n, v in seen.labels if n != "__name__"]
        assert (first.points, first.last_value) == (seen.points, seen.last_value)
        assert first.priority_class == int(seen.priority)
        effects = {e.policy_id: e for e in window.policy_effects}
        assert effects["drop-user-id"].mode == state_pb2.POLICY_MODE_ENFORCE
        assert effects["drop-user-id"].matched_series == 5000
        assert effects["balanced/cap"].mode == state_pb2.POLICY_MODE_DRY_RUN
        assert window.counts.accepted == metric.counts.accepted


def test_a_small_metric_has_a_complete_sample() -> None:
    [report] = build_reports(tenant_snapshot(metrics=1, series_per_metric=40), max_bytes=MIB)
    sample = report.metrics[0].sample
    assert (sample.k, len(sample.series), sample.max_hash) == (256, 40, MAX_HASH)
    assert bottom_k_from_proto(sample).estimate() == 40


def test_split_parts_stay_under_the_limit_and_keep_every_metric_once() -> None:
    snapshot = tenant_snapshot(metrics=12, series_per_metric=3000)
    max_bytes = 60_000
    parts = build_reports(snapshot, max_bytes=max_bytes)
    assert len(parts) > 3
    assert [p.part for p in parts] == list(range(len(parts)))
    names = [m.metric_name for p in parts for m in p.metrics]
    assert sorted(names) == sorted(m.name for m in snapshot.metrics)
    assert len(names) == len(set(names))
    for part in parts:
        assert len(part.SerializeToString()) <= max_bytes
        assert part.part_count == len(parts)
        for field in HEADER_FIELDS:
            assert getattr(part, field) == getattr(parts[0], field), field
        tenant_fields = (part.HasField("counts"), part.HasField("batch_latency_seconds"),
                         len(part.rejected_policies) > 0)
        assert tenant_fields == ((part.part == 0),) * 3, part.part
        for metric in part.metrics:
            assert metric.sample.k == 256  # nothing needed trimming
    # Merging the parts' sketches gives the same view as one big report.
    [single] = build_reports(snapshot, max_bytes=64 * MIB)
    parted = {m.metric_name: m.input_series_hll for p in parts for m in p.metrics}
    assert {m.metric_name: m.input_series_hll for m in single.metrics} == parted
    everything = hll_union(parted.values())
    assert hll_estimate(everything) == pytest.approx(12 * 3000, rel=0.05)


def test_a_metric_too_big_for_a_part_keeps_a_trimmed_honest_sample() -> None:
    snapshot = tenant_snapshot(metrics=3, series_per_metric=3000)
    [full] = build_reports(snapshot, max_bytes=MIB)
    max_bytes = full.metrics[0].ByteSize() - 10_000  # every metric alone is too big
    parts = build_reports(snapshot, max_bytes=max_bytes)
    assert [len(p.metrics) for p in parts] == [0, 1, 1, 1]  # part 0: tenant fields only
    for part, original in zip(parts[1:], full.metrics, strict=True):
        assert len(part.SerializeToString()) <= max_bytes
        [metric] = part.metrics
        sample = metric.sample
        assert 0 < sample.k < 256 and len(sample.series) == sample.k
        assert list(sample.series) == list(original.sample.series)[: sample.k]
        assert sample.max_hash == sample.series[-1].series_hash
        assert bottom_k_from_proto(sample).estimate() == pytest.approx(3000, rel=0.6)
        original.ClearField("sample")
        metric.ClearField("sample")
        assert metric == original  # only the sample was cut


def test_a_header_that_does_not_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        build_reports(tenant_snapshot(metrics=1, series_per_metric=5), max_bytes=50)


def test_an_empty_window_is_one_part_with_counts() -> None:
    snapshot = tenant_snapshot(metrics=0, series_per_metric=0)
    [report] = build_reports(snapshot, max_bytes=MIB)
    assert report.part_count == 1 and not report.metrics
    assert report.HasField("counts") and report.HasField("batch_latency_seconds")


def test_a_ddsketch_round_trips_through_its_message() -> None:
    [report] = build_reports(tenant_snapshot(metrics=0, series_per_metric=0), max_bytes=MIB)
    message = report.batch_latency_seconds
    assert message.relative_accuracy == 0.01 and message.count == 500
    assert sum(message.positive_counts) + message.zero_count == 500
    assert quantile_sketch_to_proto(quantile_sketch_from_proto(message)) == message
    unset = quantile_sketch_from_proto(common_pb2.DDSketch())
    assert unset.count == 0 and unset.quantile(0.5) is None


_label = st.tuples(st.sampled_from(["__name__", "job", "a", "zone", "ä"]),
                   st.text(max_size=40) | st.sampled_from(["", "x" * 200]))
_series = st.tuples(
    st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2**64 - 1]),
    st.lists(_label, max_size=6, unique_by=lambda lb: lb[0]),
    st.integers(0, 2**40) | st.integers(0, 130),
    st.floats(allow_nan=True) | st.sampled_from([0.0, -0.0, math.inf, math.nan]),
    st.integers(0, 4))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(series=st.lists(_series, max_size=20), small=st.booleans())
def test_sampled_series_are_encoded_as_the_generated_code_encodes_them(
        series: list[tuple[int, list[tuple[str, str]], int, float, int]], small: bool) -> None:
    if small:  # every varint one byte: the array path
        series = [(k, lb, p % 128, v, c) for k, lb, p, v, c in series]
    columns = SeriesColumns(
        np.array([s[0] for s in series], dtype=np.uint64), [tuple(s[1]) for s in series],
        np.array([s[2] for s in series], dtype=np.int64),
        np.array([s[3] for s in series], dtype=np.float64),
        np.array([s[4] for s in series], dtype=np.int8))
    ours = b"".join(_field(_SERIES_TAG, _series_prefix(key, labels) + tail)
                    for key, labels, tail in zip(columns.keys.tolist(), columns.labels,
                                                 _series_tails(columns), strict=True))
    theirs = telemetry_pb2.SeriesSample(series=[telemetry_pb2.SampledSeries(
        series_hash=key, points=points, last_value=value,
        priority_class=common_pb2.PriorityClass.ValueType(priority),
        labels=[common_pb2.Label(name=n, value=v) for n, v in sorted(labels)
                if n != "__name__"]) for key, labels, points, value, priority in series])
    assert ours == theirs.SerializeToString()


def test_the_cache_and_the_serialised_form_change_nothing() -> None:
    """Window after window (metrics the same, changed, gone, back), the reports built with a
    reporter's cache equal those built without, and encode_reports is build_reports."""
    cache, encoded_cache = ReportCache(), ReportCache()
    base = tenant_snapshot(metrics=4, series_per_metric=600)
    changed = metric_snapshot("http_requests_1_total", 700, seed=9)
    windows = [base, base,
               dataclasses.replace(base, metrics=(base.metrics[0], changed, *base.metrics[2:])),
               dataclasses.replace(base, metrics=base.metrics[:2]), base, base]
    for number, window in enumerate(windows):
        window = dataclasses.replace(window, start_ms=START_MS + 10_000 * number)
        plain = build_reports(window, max_bytes=60_000)
        assert len(plain) > 1
        assert build_reports(window, max_bytes=60_000, cache=cache) == plain
        encoded = encode_reports(window, max_bytes=60_000, cache=encoded_cache)
        assert [telemetry_pb2.WindowReport.FromString(b) for b in encoded] == plain
        assert all(len(b) <= 60_000 for b in encoded)
