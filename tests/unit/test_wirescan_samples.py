"""_wirescan.samples (C) and its Python twin read exactly the samples upb decodes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenixcp.api.prometheus import remote_pb2
from phoenixcp.platform.ingest import _wirescan_py, decode_remote_write
from phoenixcp.platform.ingest.remote_write import SCANNER

pytestmark = pytest.mark.unit

series = st.lists(st.tuples(st.integers(0, 50),
                            st.lists(st.tuples(st.integers(-2**62, 2**62),
                                               st.floats(allow_nan=False)), max_size=4)),
                  min_size=1, max_size=20)


def request(data: list[tuple[int, list[tuple[int, float]]]]) -> bytes:
    req = remote_pb2.WriteRequest()
    for i, (name, points) in enumerate(data):
        s = req.timeseries.add()
        s.labels.add(name="__name__", value=f"m{name}")
        s.labels.add(name="i", value=str(i))
        for ts, v in points:
            s.samples.add(timestamp=ts, value=v)
    req.metadata.add(metric_family_name="m1", type=1)
    return req.SerializeToString()


@settings(max_examples=60, deadline=None)
@given(data=series, picks=st.lists(st.integers(0, 19), max_size=25))
def test_samples_of_chosen_series_equal_the_decoded_columns(
        data: list[tuple[int, list[tuple[int, float]]]], picks: list[int]) -> None:
    batch = decode_remote_write(request(data), tenant="t", content_encoding="identity")
    index = np.asarray([p % len(data) for p in picks], dtype=np.intp)
    got = batch.samples(index)
    cols = batch.subset(index).columns()
    for mine, want in zip(got, (cols.series_index, cols.timestamps, cols.values), strict=True):
        assert mine.tolist() == want.tolist()
    twin = _wirescan_py.samples(batch.write_request, batch.series_spans[index])
    assert [np.frombuffer(b, dtype=d).tolist() for b, d in
            zip(twin, (np.int32, np.int64, np.float64), strict=True)] == [
        a.tolist() for a in got]


def test_the_receivers_use_the_c_sampler() -> None:
    assert SCANNER == "c"
    batch = decode_remote_write(request([(1, [(5, 1.5)])]), tenant="t",
                                content_encoding="identity")
    assert batch.sampler is not None and batch.sampler.__module__ != _wirescan_py.__name__


def test_a_span_outside_the_buffer_is_refused() -> None:
    spans = np.asarray([[0, 10_000, 1, 0]], dtype=np.uint32)
    with pytest.raises(ValueError, match="outside"):
        decode_remote_write(request([(1, [(5, 1.5)])]), tenant="t",
                            content_encoding="identity").sampler(b"\x00" * 10, spans)  # type: ignore[misc]
