"""Prometheus remote-write decoding and validation, with the C and the pure-Python scanner."""

from __future__ import annotations

import math
import re
import struct

import cramjam
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenixcp.api.prometheus import remote_pb2
from phoenixcp.core.series import STALE_NAN, series_key
from phoenixcp.errors import InvalidArgument
from phoenixcp.platform.ingest import _wirescan_py, remote_write
from phoenixcp.platform.ingest.remote_write import decode_remote_write, validate_write_request

pytestmark = pytest.mark.unit

SCANNERS: dict[str, remote_write.Scanner] = {"python": _wirescan_py.scan}
if remote_write.SCANNER == "c":
    SCANNERS["c"] = remote_write._scan


@pytest.fixture(params=sorted(SCANNERS))
def scanner(request: pytest.FixtureRequest) -> remote_write.Scanner:
    _wirescan_py._validated.clear()
    return SCANNERS[request.param]


def test_the_c_scanner_is_built() -> None:
    """CI builds the extension (pyproject ext-modules); without it decoding is ~30x slower."""
    assert remote_write.SCANNER == "c"


Labels = list[tuple[str, str]]


def request_bytes(*series: tuple[Labels, list[tuple[float, int]]]) -> bytes:
    req = remote_pb2.WriteRequest()
    for labels, samples in series:
        ts = req.timeseries.add()
        for name, value in labels:
            ts.labels.add(name=name, value=value)
        for value, t in samples:
            ts.samples.add(value=value, timestamp=t)
    return req.SerializeToString()


def snappy(data: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(data))


UP: Labels = [("__name__", "up"), ("job", "api")]


def test_accepts_a_valid_request(scanner: remote_write.Scanner) -> None:
    data = request_bytes((UP, [(1.0, 10), (0.0, 20)]), ([("__name__", "x"), ("a", "1")], []))
    keys, samples, histograms, metadata, spans, other = validate_write_request(
        data, scanner=scanner
    )
    assert list(keys) == [series_key(UP), series_key([("__name__", "x"), ("a", "1")])]
    assert (samples, histograms, metadata, other) == (2, 0, 0, b"")
    assert spans.dtype == np.uint32 and spans.shape == (2, 4)
    first = request_bytes((UP, [(1.0, 10), (0.0, 20)]))
    assert spans.tolist() == [[0, len(first), 2, 0], [len(first), len(data), 0, 0]]


def test_spans_cover_each_series_and_other_fields_keep_the_rest(
    scanner: remote_write.Scanner,
) -> None:
    req = remote_pb2.WriteRequest()
    ts = req.timeseries.add()
    ts.labels.add(name="__name__", value="up")
    ts.samples.add(value=1.0, timestamp=1)
    ts.histograms.add()
    ts.histograms.add()
    meta = remote_pb2.WriteRequest()
    meta.metadata.add(type=1, metric_family_name="up", help="h", unit="")
    series, metadata = req.SerializeToString(), meta.SerializeToString()
    unknown = b"\x28\x07"  # field 5, varint 7: kept verbatim
    data = metadata + series + unknown + series
    scanned = validate_write_request(data, scanner=scanner)
    start = len(metadata)
    second = start + len(series) + len(unknown)
    assert scanned.spans.tolist() == [[start, start + len(series), 3, 2],
                                      [second, second + len(series), 3, 2]]
    assert scanned.other_fields == metadata + unknown
    assert (scanned.samples, scanned.histograms, scanned.metadata) == (2, 4, 1)


def test_decode_gives_a_batch_that_passes_the_bytes_through() -> None:
    data = request_bytes((UP, [(1.0, 10)]))
    batch = decode_remote_write(snappy(data), tenant="acme")
    assert batch.write_request == data and batch.tenant == "acme"
    assert batch.series_count == 1 and batch.sample_count == 1
    assert batch.series_keys.dtype == np.uint64
    assert batch.series_spans.tolist() == [[0, len(data), 1, 0]] and batch.other_fields == b""
    cols = batch.columns()
    assert list(cols.values) == [1.0] and list(cols.timestamps) == [10]
    assert cols.label_sets == (tuple(UP),) and list(cols.series_index) == [0]


def test_unsorted_labels_are_accepted_with_the_same_key(scanner: remote_write.Scanner) -> None:
    data = request_bytes(([("job", "api"), ("__name__", "up"), ("empty", "")], [(1.0, 1)]))
    keys, *_ = validate_write_request(data, scanner=scanner)
    assert int(keys[0]) == series_key(UP)


def test_nan_inf_and_stale_markers_are_kept(scanner: remote_write.Scanner) -> None:
    values = [math.nan, math.inf, -math.inf, STALE_NAN]
    data = request_bytes((UP, [(v, i) for i, v in enumerate(values)]))
    assert validate_write_request(data, scanner=scanner).samples == 4
    batch = decode_remote_write(snappy(data), tenant="t")
    got = batch.columns().values
    assert struct.pack("<d", got[3]) == struct.pack("<Q", 0x7FF0000000000002)
    assert math.isinf(got[1]) and math.isinf(got[2]) and math.isnan(got[0])


MALFORMED = "the request is not a valid Prometheus remote-write WriteRequest"
BAD: list[tuple[str, bytes, str]] = [
    ("no labels", request_bytes(([], [(1.0, 1)])), "series 0: has no labels"),
    ("no name", request_bytes(([("job", "a")], [(1.0, 1)])), "series 0: has no __name__"),
    ("empty name", request_bytes(([("__name__", ""), ("job", "a")], [])),
     "series 0: has an empty metric name"),
    ("bad metric name", request_bytes((UP, []), ([("__name__", "a-b")], [])),
     "series 1: metric name 'a-b' is not valid"),
    ("bad label name", request_bytes(([("__name__", "up"), ("a.b", "1")], [])),
     "series 0: label name 'a.b' is not valid; label names must match ^[a-zA-Z_]"),
    ("reserved label", request_bytes(([("__name__", "up"), ("__x", "1")], [])),
     "series 0: label name '__x' is reserved"),
    ("duplicate label", request_bytes(([("__name__", "up"), ("a", "1"), ("a", "2")], [])),
     "series 0: label 'a' appears more than once"),
    ("malformed", b"\x0a\x05\x0a\x03", MALFORMED),
    ("group wire type", b"\x0b", MALFORMED),
    ("wrong wire type", b"\x08\x01", MALFORMED),
]


@pytest.mark.parametrize(("case", "data", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_are_refused_whole(
    scanner: remote_write.Scanner, case: str, data: bytes, message: str
) -> None:
    with pytest.raises(InvalidArgument, match="^" + re.escape(message)):
        validate_write_request(data, scanner=scanner)


def _with_raw_value(value: bytes) -> bytes:
    label = b"\x0a\x03job\x12" + bytes([len(value)]) + value
    name = b"\x0a\x08__name__\x12\x02up"
    series = b"\x0a" + bytes([len(name)]) + name + b"\x0a" + bytes([len(label)]) + label
    return b"\x0a" + bytes([len(series)]) + series


@pytest.mark.parametrize("value", [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"ok\xe2\x82"])
def test_non_utf8_values_are_refused(scanner: remote_write.Scanner, value: bytes) -> None:
    with pytest.raises(InvalidArgument, match="the value of label 'job' is not valid UTF-8"):
        validate_write_request(_with_raw_value(value), scanner=scanner)


def test_utf8_values_are_accepted(scanner: remote_write.Scanner) -> None:
    keys, *_ = validate_write_request(_with_raw_value("é€😀".encode()), scanner=scanner)
    assert int(keys[0]) == series_key([("__name__", "up"), ("job", "é€😀")])


def test_bad_snappy_and_limits() -> None:
    data = request_bytes((UP, [(1.0, 1)]))
    with pytest.raises(InvalidArgument, match="not valid snappy"):
        decode_remote_write(b"\x10garbage-garbage", tenant="t")
    with pytest.raises(InvalidArgument, match="over the limit of 10 bytes"):
        decode_remote_write(snappy(data), tenant="t", max_bytes=10)
    bomb = snappy(b"\0" * 100_000)
    assert len(bomb) < 10_000
    with pytest.raises(InvalidArgument, match="decompresses to 100000 bytes, over the"):
        decode_remote_write(bomb, tenant="t", max_bytes=10_000)
    with pytest.raises(InvalidArgument, match="Content-Encoding 'gzip' is not supported") as e:
        decode_remote_write(snappy(data), tenant="t", content_encoding="gzip")
    assert e.value.field == "Content-Encoding"
    with pytest.raises(InvalidArgument, match="empty"):
        decode_remote_write(b"", tenant="t")
    assert decode_remote_write(data, tenant="t", content_encoding="identity").sample_count == 1


names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True).filter(
    lambda n: not n.startswith("__"))
label_sets = st.tuples(
    st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,20}", fullmatch=True),
    st.dictionaries(names, st.text(min_size=1, max_size=30), max_size=6),
)
samples = st.lists(st.tuples(st.floats(allow_nan=True), st.integers(-(2**62), 2**62)),
                   max_size=3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(label_sets, samples), max_size=8), st.randoms())
def test_round_trip(series: list[tuple[tuple[str, dict[str, str]], list[tuple[float, int]]]],
                    rnd: object) -> None:
    built = []
    for (metric, labels), points in series:
        items = [("__name__", metric), *labels.items()]
        rnd.shuffle(items)  # type: ignore[attr-defined]
        built.append((items, points))
    data = request_bytes(*built)
    expected = [series_key(items) for items, _ in built]
    results = [scanner(data) for scanner in SCANNERS.values()]
    assert all(r == results[0] for r in results)  # keys, counts, spans, other fields
    scanned = validate_write_request(data)
    assert [int(k) for k in scanned.keys] == expected
    assert scanned.samples == sum(len(p) for _, p in built)
    assert [data[s:e] for s, e, _, _ in scanned.spans.tolist()] == [
        request_bytes(one) for one in built
    ]
    assert scanned.spans[:, 2].tolist() == [len(p) for _, p in built]
    batch = decode_remote_write(snappy(data), tenant="t")
    cols = batch.columns()
    flat = [v for _, pts in built for v, _ in pts]
    assert np.array_equal(cols.values, np.array(flat, dtype=np.float64), equal_nan=True)
    assert list(cols.timestamps) == [t for _, pts in built for _, t in pts]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 200), st.integers(0, 255))
def test_corrupted_requests_never_crash_and_both_scanners_agree(
    noise: bytes, position: int, byte: int
) -> None:
    data = bytearray(request_bytes((UP, [(1.0, 1)]), ([("__name__", "x"), ("b", "é")], [])))
    data[position % len(data)] = byte
    data += noise
    results = []
    for scanner in SCANNERS.values():
        try:
            keys, n, h, m, spans, other = validate_write_request(bytes(data), scanner=scanner)
            results.append(("ok", [int(k) for k in keys], n, h, m, spans.tolist(), other))
        except InvalidArgument as exc:
            results.append(("refused", str(exc).split(":")[0]))
    assert all(r[0] == results[0][0] for r in results), results
    if results[0][0] == "ok":
        assert all(r == results[0] for r in results)
