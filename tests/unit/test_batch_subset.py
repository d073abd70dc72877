"""MetricBatch.subset(): a request made of some series' raw bytes plus the other fields."""

from __future__ import annotations

import dataclasses

import cramjam
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from phoenixcp.api.prometheus import remote_pb2, types_pb2
from phoenixcp.core.batch import MetricBatch, SpanGather, gather_spans
from phoenixcp.platform.ingest import _wirescan_py, remote_write
from phoenixcp.platform.ingest.otlp import decode_otlp
from phoenixcp.platform.ingest.remote_write import decode_remote_write, validate_write_request

pytestmark = pytest.mark.unit

SCANNERS: dict[str, remote_write.Scanner] = {"python": _wirescan_py.scan}
GATHERS: dict[str, SpanGather] = {"numpy": gather_spans}
if remote_write.SCANNER == "c":
    SCANNERS["c"] = remote_write._scan
    GATHERS["c"] = remote_write._gather


def series_entry(labels: list[tuple[str, str]], samples: int, histograms: int,
                 exemplar: bool) -> bytes:
    """One encoded top-level TimeSeries field (tag and length included)."""
    req = remote_pb2.WriteRequest()
    ts = req.timeseries.add()
    for name, value in labels:
        ts.labels.add(name=name, value=value)
    for i in range(samples):
        ts.samples.add(value=float(i), timestamp=1_700_000_000_000 + i)
    for _ in range(histograms):
        ts.histograms.add()
    if exemplar:
        ts.exemplars.add(value=1.5, timestamp=7).labels.add(name="trace_id", value="abc")
    return req.SerializeToString()


def metadata_entry(kind: int, family: str, help_text: str) -> bytes:
    req = remote_pb2.WriteRequest()
    req.metadata.add(type=kind, metric_family_name=family, help=help_text, unit="seconds")
    return req.SerializeToString()


names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: not n.startswith("__"))
series = st.builds(
    lambda metric, labels, samples, histograms, exemplar: (
        "series", series_entry([("__name__", metric), *sorted(labels.items())], samples,
                               histograms, exemplar), samples + histograms, histograms),
    st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,12}", fullmatch=True),
    st.dictionaries(names, st.text(min_size=1, max_size=12), max_size=4),
    st.integers(0, 3), st.integers(0, 2), st.booleans(),
)
metadata = st.builds(
    lambda kind, family, help_text: ("metadata", metadata_entry(kind, family, help_text), 0, 0),
    st.integers(0, 7), names, st.text(max_size=20),
)
unknown = st.sampled_from([  # fields a newer sender might add: kept verbatim
    ("unknown", b"\x28\x96\x01", 0, 0),  # field 5, varint
    ("unknown", b"\x32\x03abc", 0, 0),  # field 6, bytes
    ("unknown", b"\x11" + bytes(8), 0, 0),  # field 2, fixed64
])
Entry = tuple[str, bytes, int, int]
requests = st.lists(st.one_of(series, series, metadata, unknown), max_size=12)


def build(entries: list[Entry]) -> tuple[bytes, list[Entry], bytes]:
    """(request bytes, its series entries in order, its other fields in order)."""
    data = b"".join(e[1] for e in entries)
    other = b"".join(e[1] for e in entries if e[0] != "series")
    return data, [e for e in entries if e[0] == "series"], other


def batch_for(data: bytes) -> MetricBatch:
    return decode_remote_write(bytes(cramjam.snappy.compress_raw(data)), tenant="acme",
                               received_at=42)


@settings(max_examples=150, deadline=None)
@given(requests)
def test_both_scanners_find_the_same_spans_and_other_fields(entries: list[Entry]) -> None:
    data, chosen, other = build(entries)
    results = [scan(data) for scan in SCANNERS.values()]
    assert all(r == results[0] for r in results)
    scanned = validate_write_request(data)
    assert [data[s:e] for s, e, _, _ in scanned.spans.tolist()] == [e[1] for e in chosen]
    assert scanned.spans[:, 2:].tolist() == [[e[2], e[3]] for e in chosen]
    assert scanned.other_fields == other


@settings(max_examples=150, deadline=None)
@given(requests, st.data())
def test_subset_is_the_chosen_series_in_order_plus_the_other_fields(
    entries: list[Entry], data_strategy: st.DataObject
) -> None:
    data, chosen, other = build(entries)
    batch = batch_for(data)
    picks = data_strategy.draw(st.lists(st.booleans(), min_size=len(chosen),
                                        max_size=len(chosen)))
    index = np.flatnonzero(np.array(picks, dtype=bool))
    part = batch.subset(index)

    assert part.write_request == b"".join(chosen[i][1] for i in index) + other
    whole = remote_pb2.WriteRequest.FromString(data)
    got = remote_pb2.WriteRequest.FromString(part.write_request)
    assert list(got.timeseries) == [whole.timeseries[i] for i in index]
    assert list(got.metadata) == list(whole.metadata)

    again = validate_write_request(part.write_request)
    assert np.array_equal(again.keys, batch.series_keys[index])
    assert np.array_equal(part.series_keys, again.keys)
    assert np.array_equal(part.series_spans, again.spans)
    assert part.series_spans.dtype == np.uint32 and part.series_spans.shape == (len(index), 4)
    assert again.other_fields == part.other_fields == other
    assert part.sample_count == again.samples + again.histograms
    assert part.histogram_count == again.histograms
    assert part.metadata_count == again.metadata == batch.metadata_count
    assert (part.tenant, part.received_at, part.compressed) == ("acme", 42, None)
    assert part.decoder is batch.decoder and part.gather is batch.gather

    for gather in GATHERS.values():  # C and numpy give the same bytes
        same = dataclasses.replace(batch, gather=gather).subset(index)
        assert same.write_request == part.write_request
        assert np.array_equal(same.series_spans, part.series_spans)


@settings(max_examples=60, deadline=None)
@given(requests, st.data())
def test_any_order_and_repeats_and_subsets_of_subsets(
    entries: list[Entry], data_strategy: st.DataObject
) -> None:
    data, chosen, other = build(entries)
    batch = batch_for(data)
    positions = st.integers(0, max(len(chosen) - 1, 0))
    index = np.array(data_strategy.draw(st.lists(positions, max_size=8) if chosen
                                        else st.just([])), dtype=np.int64)
    part = batch.subset(index)
    assert part.write_request == b"".join(chosen[i][1] for i in index) + other
    assert part.sample_count == sum(chosen[i][2] for i in index)
    again = part.subset(np.arange(part.series_count)[::-1])
    assert again.write_request == b"".join(chosen[i][1] for i in index[::-1]) + other
    assert np.array_equal(again.series_keys, batch.series_keys[index[::-1]])


def test_an_empty_subset_is_a_valid_request_with_only_the_other_fields() -> None:
    meta = metadata_entry(1, "up", "is it up")
    data = series_entry([("__name__", "up")], 2, 1, False) + meta
    part = batch_for(data).subset(np.array([], dtype=np.intp))
    assert part.write_request == part.other_fields == meta
    assert (part.series_count, part.sample_count, part.histogram_count) == (0, 0, 0)
    assert part.series_spans.shape == (0, 4) and part.metadata_count == 1
    got = remote_pb2.WriteRequest.FromString(part.write_request)
    assert len(got.timeseries) == 0
    assert got.metadata[0].type == types_pb2.MetricMetadata.COUNTER


def test_a_batch_without_spans_cannot_be_subset() -> None:
    batch = MetricBatch(tenant="t", write_request=b"wr", series_keys=np.array([7], np.uint64),
                        sample_count=1, received_at=0)
    with pytest.raises(RuntimeError, match="no series_spans"):
        batch.subset(np.array([0]))


def test_bad_indices_are_refused() -> None:
    batch = batch_for(series_entry([("__name__", "up")], 1, 0, False))
    with pytest.raises(TypeError, match="1-d integer array"):
        batch.subset(np.array([0.0]))
    with pytest.raises(TypeError, match="1-d integer array"):
        batch.subset(np.array([[0]]))
    with pytest.raises(IndexError):
        batch.subset(np.array([1]))


@pytest.mark.parametrize("name", sorted(GATHERS))
def test_gather_refuses_spans_outside_the_buffer(name: str) -> None:
    gather = GATHERS[name]
    data = bytes(range(10))
    assert gather(data, np.array([[2, 4, 0, 0], [0, 1, 0, 0]], np.uint32), b"!") == b"\2\3\0!"
    for bad in ([[5, 4, 0, 0]], [[0, 11, 0, 0]]):
        with pytest.raises((ValueError, IndexError)):
            gather(data, np.array(bad, dtype=np.uint32), b"")


def test_otlp_batches_can_be_subset() -> None:
    req = ExportMetricsServiceRequest()
    metrics = req.resource_metrics.add().scope_metrics.add().metrics
    for name in ("a", "b", "c"):
        metrics.add(name=name).gauge.data_points.add(as_double=1.0, time_unix_nano=10**15)
    batch, _ = decode_otlp(req, tenant="t")
    assert batch.series_spans.shape == (3, 4)
    part = batch.subset(np.array([2, 0]))
    got = remote_pb2.WriteRequest.FromString(part.write_request)
    names = [next(x.value for x in ts.labels if x.name == "__name__") for ts in got.timeseries]
    assert names == ["c", "a"]
    assert part.sample_count == 2 and len(got.metadata) == batch.metadata_count
