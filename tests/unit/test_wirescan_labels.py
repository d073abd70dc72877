"""_wirescan.labels() and its Python twin, and MetricBatch.label_sets() built on them."""

from __future__ import annotations

import dataclasses
import gc
import sys
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenixcp.core.batch import LabelDecoder, LabelSet
from phoenixcp.platform.ingest import _wirescan_py, remote_write
from phoenixcp.platform.ingest.columns import decode_columns
from phoenixcp.platform.ingest.remote_write import decode_remote_write, validate_write_request
from tests.unit.test_batch_subset import metadata, series_entry, unknown
from tests.unit.test_ingest_remote_write import label_sets, names, request_bytes

pytestmark = pytest.mark.unit

LABELERS: dict[str, LabelDecoder] = {"python": _wirescan_py.labels}
if remote_write.SCANNER == "c":
    LABELERS["c"] = remote_write._labels


def _module(kind: str) -> object:
    if kind == "python":
        return _wirescan_py
    from phoenixcp.platform.ingest import _wirescan  # type: ignore[attr-defined]

    return _wirescan


@pytest.fixture(params=sorted(LABELERS))
def labeler(request: pytest.FixtureRequest) -> Iterator[LabelDecoder]:
    yield LABELERS[request.param]
    _module(request.param).label_cache_clear()  # type: ignore[attr-defined]


def expected_labels(items: list[tuple[str, str]]) -> LabelSet:
    return tuple(sorted(((n, v) for n, v in items if v), key=lambda p: p[0].encode()))


Entry = tuple[str, bytes, LabelSet]


@st.composite
def any_series(draw: st.DrawFn) -> Entry:
    """A series with its labels in any order, some empty values, maybe exemplars and
    histograms; and the label set labels() must give for it."""
    metric, labels = draw(label_sets)
    empty = draw(st.lists(names.filter(lambda n: n not in labels), max_size=2, unique=True))
    items = draw(st.permutations([("__name__", metric), *labels.items(),
                                  *((n, "") for n in empty)]))
    entry = series_entry(items, draw(st.integers(0, 2)), draw(st.integers(0, 1)),
                         draw(st.booleans()))
    return "series", entry, expected_labels(items)


others = st.one_of(metadata, unknown).map(lambda e: (e[0], e[1], ()))
requests = st.lists(st.one_of(any_series(), any_series(), others), max_size=10)


@settings(max_examples=200, deadline=None)
@given(requests, st.data())
def test_both_give_each_chosen_series_labels_sorted_without_empty_values(
    entries: list[Entry], data_strategy: st.DataObject
) -> None:
    data = b"".join(e[1] for e in entries)
    want = [e[2] for e in entries if e[0] == "series"]
    spans = validate_write_request(data).spans
    for labels in LABELERS.values():
        assert labels(data, spans) == want
    # the old path (upb columns, then sorted) agrees
    old = decode_columns(data).label_sets
    assert [expected_labels(list(s)) for s in old] == want
    index = np.array(data_strategy.draw(st.lists(st.integers(0, max(len(want) - 1, 0)),
                                                 max_size=12 if want else 0)), dtype=np.intp)
    picked = np.take(spans, index, axis=0)
    results = [labels(data, picked) for labels in LABELERS.values()]
    assert all(r == [want[i] for i in index] for r in results)


def test_equal_pairs_and_names_are_one_object(labeler: LabelDecoder) -> None:
    data = request_bytes(
        ([("__name__", "up"), ("job", "api"), ("pod", "a-1"), ("zone", "é✓𝄞")], []),
        ([("job", "api"), ("__name__", "up"), ("pod", "b-2"), ("zone", "é✓𝄞")], []),
    )
    spans = validate_write_request(data).spans
    first, second = labeler(data, spans)
    again = labeler(bytes(data), spans)  # another buffer, the same strings
    assert first == (("__name__", "up"), ("job", "api"), ("pod", "a-1"), ("zone", "é✓𝄞"))
    assert second == (("__name__", "up"), ("job", "api"), ("pod", "b-2"), ("zone", "é✓𝄞"))
    for i in (0, 1, 3):  # __name__="up", job="api", the non-ASCII zone
        assert first[i] is second[i] is again[0][i]
    assert first[2] is not second[2]
    assert first[2][0] is second[2][0]  # the name "pod" is one str


def test_label_sets_reads_only_the_chosen_series_with_or_without_a_labeler() -> None:
    series = [([("__name__", "m"), ("z", "1"), ("a", ""), ("b", str(i))], [(1.0, i)])
              for i in range(5)]
    batch = decode_remote_write(request_bytes(*series), tenant="t",
                                content_encoding="identity")
    assert batch.labeler is remote_write._labels
    index = np.array([3, 0, 3], dtype=np.intp)
    want = [(("__name__", "m"), ("b", str(i)), ("z", "1")) for i in (3, 0, 3)]
    assert batch.label_sets(index) == want
    for labeler in (*LABELERS.values(), None):
        assert dataclasses.replace(batch, labeler=labeler).label_sets(index) == want
    part = batch.subset(np.array([4, 1]))
    assert part.labeler is batch.labeler
    assert part.label_sets(np.array([1, 0])) == [expected_labels(series[i][0]) for i in (1, 4)]
    assert batch.label_sets(np.empty(0, dtype=np.intp)) == []
    with pytest.raises(TypeError, match="1-d integer array"):
        batch.label_sets(np.array([0.5]))
    with pytest.raises(IndexError):
        batch.label_sets(np.array([5]))


def _spans(*rows: tuple[int, int]) -> npt.NDArray[np.uint32]:
    return np.array([(s, e, 0, 0) for s, e in rows], dtype=np.uint32).reshape(-1, 4)


def test_bad_spans_and_bytes_are_value_errors(labeler: LabelDecoder) -> None:
    data = request_bytes(([("__name__", "up")], []), ([("__name__", "x"), ("a", "b")], []))
    (s0, e0, _, _), (_, e1, _, _) = validate_write_request(data).spans.tolist()
    with pytest.raises(ValueError, match="outside the"):
        labeler(data, _spans((s0, len(data) + 1)))
    with pytest.raises(ValueError, match="outside the"):
        labeler(data, _spans((e0, s0)))
    with pytest.raises(ValueError, match="rows of four uint32"):
        labeler(data, np.zeros(3, dtype=np.uint32))
    for start, end in [(s0, e1), (s0 + 1, e0), (s0, e0 - 1), (s0, s0)]:
        with pytest.raises(ValueError, match="not one well-formed TimeSeries"):
            labeler(data, _spans((start, end)))
    bad_value = b"\x0a\x0b\x0a\x09\x0a\x01a\x12\x04ok\xc0\x80"  # a=<overlong NUL>
    with pytest.raises(UnicodeDecodeError):
        labeler(bad_value, _spans((0, len(bad_value))))
    assert labeler(data, _spans()) == []


CLEAN = request_bytes(([("__name__", "up"), ("job", "é")], [(1.0, 1)]),
                      ([("b", "x"), ("__name__", "y")], []))
CLEAN_ROWS = [(s, e) for s, e, _, _ in validate_write_request(CLEAN).spans.tolist()]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=48), st.integers(0, 120), st.integers(0, 255),
       st.lists(st.one_of(st.sampled_from(CLEAN_ROWS),
                          st.tuples(st.integers(0, 130), st.integers(0, 130))), max_size=3))
def test_corrupted_bytes_and_spans_never_crash_and_both_agree(
    noise: bytes, position: int, byte: int, rows: list[tuple[int, int]]
) -> None:
    data = bytearray(CLEAN)
    data[position % len(data)] = byte
    data += noise
    spans = _spans(*rows)
    outcomes = []
    for labels in LABELERS.values():
        try:
            outcomes.append(("ok", labels(bytes(data), spans)))
        except UnicodeDecodeError:
            outcomes.append(("utf8", None))
        except ValueError as exc:
            outcomes.append(("bad", str(exc)))
    assert all(o == outcomes[0] for o in outcomes), outcomes


def _wide_series(count: int) -> bytes:
    """One TimeSeries entry with ``count`` distinct labels (names and values)."""
    body = b"".join(
        b"\x0a" + bytes([len(lab)]) + lab
        for i in range(count)
        for lab in [b"\x0a\x07n%06d\x12\x07v%06d" % (i, i)]
    )
    n, head = len(body), bytearray()
    while True:
        head.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    return b"\x0a" + bytes(head) + body


def test_the_cache_is_bounded_and_cleared_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    if "c" in LABELERS:  # the C cache holds 262,144 pairs (and names)
        wirescan = _module("c")
        data = _wide_series(270_000)
        got = LABELERS["c"](data, _spans((0, len(data))))[0]
        assert len(got) == 270_000 and got[269_999] == ("n269999", "v269999")
        pairs, names_held = wirescan.label_cache_size()  # type: ignore[attr-defined]
        assert 0 < pairs < 262_144 and 0 < names_held < 262_144
        wirescan.label_cache_clear()  # type: ignore[attr-defined]
        assert wirescan.label_cache_size() == (0, 0)  # type: ignore[attr-defined]
    _wirescan_py.label_cache_clear()
    monkeypatch.setattr(_wirescan_py, "_CACHE_MAX", 8)
    data = _wide_series(20)
    got = _wirescan_py.labels(data, _spans((0, len(data))))[0]
    assert got == tuple((f"n{i:06d}", f"v{i:06d}") for i in range(20))
    assert _wirescan_py.label_cache_size() == (4, 4)
    _wirescan_py.label_cache_clear()


def test_repeated_calls_hold_no_new_memory() -> None:
    data = request_bytes(*[([("__name__", "m"), ("i", str(i)), ("job", "api")], [])
                           for i in range(50)])
    spans = validate_write_request(data).spans
    for labels in LABELERS.values():
        for _ in range(20):
            labels(data, spans)
        gc.collect()
        before = sys.getallocatedblocks()
        for _ in range(500):
            labels(data, spans)
        gc.collect()
        assert sys.getallocatedblocks() - before < 20


def test_spans_may_be_bytes_or_an_array_view() -> None:
    data = request_bytes(([("__name__", "up")], []))
    spans = validate_write_request(data).spans
    for labels in LABELERS.values():
        assert labels(data, spans.tobytes()) == [(("__name__", "up"),)]  # type: ignore[arg-type]
        assert labels(memoryview(data), spans) == [(("__name__", "up"),)]  # type: ignore[arg-type]
