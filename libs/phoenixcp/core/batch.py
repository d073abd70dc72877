"""The one internal batch format every receiver produces and everything after it consumes.

A :class:`MetricBatch` carries a request as bytes plus the little the data path needs to work
per batch rather than per point: the tenant, the 64-bit key of every series (see
:mod:`phoenixcp.core.series`) as one numpy array, and counts. The bytes are an
**uncompressed, validated** Prometheus remote-write ``WriteRequest``: the queue stores them
and the exporters send them (or translate them) without decoding the samples again.

Only a policy that must change points asks for :meth:`MetricBatch.columns`, a columnar view
(numpy arrays of series index, timestamp and value; label sets as interned tuples; metric
types from the request's metadata). It is decoded on first use by a function the receiver
supplies, because decoding protobuf belongs to the adapters, not to this pure module.

A policy that must change only some series asks for :meth:`MetricBatch.subset`: a batch
made of the raw bytes of the chosen series (found by ``series_spans``, their byte ranges in
the request) plus the request's other top-level fields (metadata), so the series no policy
touches are passed on without being decoded. The labels of some series alone (a series seen
for the first time) come from :meth:`MetricBatch.label_sets`, read from those series' bytes
by a function the receiver supplies (the C scanner's ``labels``).

Batches are immutable values; ``columns()`` is computed at most once per batch under normal
use (a race between two threads may decode twice; both results are equal).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "BatchColumns",
    "ColumnsDecoder",
    "LabelDecoder",
    "LabelSet",
    "MetricBatch",
    "MetricType",
    "SampleDecoder",
    "SpanGather",
    "gather_spans",
]

LabelSet = tuple[tuple[str, str], ...]
"""A series' labels as ``((name, value), ...)``, ``__name__`` included: in arrival order in
:class:`BatchColumns`, sorted by name from :meth:`MetricBatch.label_sets`."""


class MetricType(enum.Enum):
    """Prometheus metric family types, as in remote-write ``MetricMetadata.type``."""

    UNKNOWN = 0
    COUNTER = 1
    GAUGE = 2
    HISTOGRAM = 3
    GAUGEHISTOGRAM = 4
    SUMMARY = 5
    INFO = 6
    STATESET = 7


@dataclass(frozen=True, slots=True)
class BatchColumns:
    """A batch's float samples as columns.

    ``series_index[i]``, ``timestamps[i]`` (ms since the epoch) and ``values[i]`` describe
    sample ``i``; ``label_sets[series_index[i]]`` is its series and
    ``series_keys[series_index[i]]`` (on the batch) its key. ``metric_types`` maps a metric
    family name to its type when the request's metadata said so. Native histograms are not
    columns; they stay in the batch's bytes.
    """

    series_index: npt.NDArray[np.int32]
    timestamps: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    label_sets: tuple[LabelSet, ...]
    metric_types: Mapping[str, MetricType]

    def __len__(self) -> int:
        return int(self.values.shape[0])


ColumnsDecoder = Callable[[bytes], BatchColumns]
"""Decodes a validated ``WriteRequest`` into columns; supplied by the receiver."""

SpanGather = Callable[[bytes, npt.NDArray[np.uint32], bytes], bytes]
"""``(data, spans, tail) -> bytes``: ``data[start:end]`` for each row ``(start, end, ...)`` of
``spans`` (uint32, shape (k, 4), C-contiguous), in row order, then ``tail``. Raises
ValueError or IndexError on a span outside ``data``. :func:`gather_spans` is the numpy one;
a receiver may supply a faster one (the C scanner's)."""


LabelDecoder = Callable[[bytes, npt.NDArray[np.uint32]], list[LabelSet]]
SampleDecoder = Callable[[bytes, npt.NDArray[np.uint32]], tuple[bytes, bytes, bytes]]
"""``(buffer, spans) -> (series index int32, timestamps int64, values float64)`` as bytes,
for the float samples of the series whose spans are given (the receiver's C scanner)."""
"""``(data, spans) -> label sets``: for each row ``(start, end, ...)`` of ``spans`` (uint32,
shape (k, 4), C-contiguous), the labels of the validated ``TimeSeries`` entry
``data[start:end]`` (tag and length included), sorted by name (byte order), labels with an
empty value left out; equal pairs may be one shared object. Raises ValueError on a span
outside ``data`` or bytes that are not one entry. Supplied by the receiver (the C scanner's
``labels``)."""


def gather_spans(data: bytes, spans: npt.NDArray[np.uint32], tail: bytes) -> bytes:
    """The :data:`SpanGather` contract with numpy index arithmetic (no Python loop per span).

    It builds one source position per output byte (a running sum of ones that jumps at each
    span's start), so it costs a few ns per byte: ~30x the C one (see docs/adr/0005).
    """
    starts = spans[:, 0].astype(np.int64)
    lengths = spans[:, 1].astype(np.int64) - starts
    if lengths.size and int(lengths.min()) < 0:
        raise ValueError("a span ends before it starts")
    nonempty = lengths > 0
    starts, lengths = starts[nonempty], lengths[nonempty]
    out_ends = np.cumsum(lengths)
    index_type = np.int32 if len(data) < 2**31 else np.int64
    step: npt.NDArray[np.signedinteger[Any]] = np.ones(
        int(out_ends[-1]) if out_ends.size else 0, dtype=index_type
    )
    # step is 1 inside a span; at a span's first output byte it jumps from the last source
    # byte of the span before (from 0 for the first span) to this span's start
    before = np.empty_like(starts)
    before[:1] = 0
    before[1:] = starts[:-1] + lengths[:-1] - 1
    step[out_ends - lengths] = starts - before
    np.cumsum(step, out=step, dtype=index_type)
    return np.frombuffer(data, dtype=np.uint8).take(step).tobytes() + tail


_NO_SPANS: npt.NDArray[np.uint32] = np.zeros((0, 4), dtype=np.uint32)
_NO_SPANS.flags.writeable = False


def _no_spans() -> npt.NDArray[np.uint32]:
    return _NO_SPANS


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricBatch:
    """One accepted request, validated, as bytes plus per-series keys.

    ``series_keys`` has one uint64 per ``TimeSeries`` of ``write_request``, in order.
    ``sample_count`` counts float samples and native histogram samples. ``received_at`` is
    ``time.monotonic_ns()`` when the receiver started on the request (for latency only).

    ``series_spans`` (uint32, shape (n, 4), one row per ``TimeSeries`` in order) holds
    ``(start, end, points, histograms)``: ``write_request[start:end]`` is the series' whole
    top-level entry (tag and length included), ``points`` its float samples plus native
    histograms, ``histograms`` the latter alone; so ``sample_count`` is the sum of column 2
    and ``histogram_count`` of column 3. ``other_fields`` is every top-level field of the
    request that is not a ``TimeSeries`` (metadata, unknown fields), verbatim and in order.
    Both come from the receiver's scanner; a batch built by hand without them works for
    everything but :meth:`subset` and :meth:`label_sets`. ``gather`` builds
    :meth:`subset`'s bytes (default: :func:`gather_spans`); ``labeler`` reads
    :meth:`label_sets` from the spans (default: decode the subset's columns).
    """

    tenant: str
    write_request: bytes
    series_keys: npt.NDArray[np.uint64]
    sample_count: int
    received_at: int
    histogram_count: int = 0
    metadata_count: int = 0
    series_spans: npt.NDArray[np.uint32] = field(default_factory=_no_spans, repr=False)
    other_fields: bytes = field(default=b"", repr=False)
    compressed: bytes | None = field(default=None, repr=False, compare=False)
    """``write_request`` snappy-compressed (block format) as the sender sent it, when it did:
    queues and exporters then pass it on without compressing it again."""
    decoder: ColumnsDecoder | None = field(default=None, repr=False, compare=False)
    gather: SpanGather | None = field(default=None, repr=False, compare=False)
    labeler: LabelDecoder | None = field(default=None, repr=False, compare=False)
    sampler: SampleDecoder | None = field(default=None, repr=False, compare=False)
    _columns: list[BatchColumns] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    @property
    def series_count(self) -> int:
        """How many ``TimeSeries`` the request holds."""
        return int(self.series_keys.shape[0])

    @property
    def nbytes(self) -> int:
        """Size of the uncompressed ``WriteRequest``."""
        return len(self.write_request)

    def columns(self) -> BatchColumns:
        """The columnar view, decoded on first call and kept; raises RuntimeError without a
        decoder (a batch built by hand for a test)."""
        if not self._columns:
            if self.decoder is None:
                raise RuntimeError("this MetricBatch has no columns decoder")
            self._columns.append(self.decoder(self.write_request))
        return self._columns[0]

    def subset(self, index: npt.NDArray[np.integer[Any]]) -> MetricBatch:
        """A new batch with only the series at ``index`` (a 1-d numpy integer array, numpy
        indexing rules), in the order given, followed by ``other_fields`` once.

        The new ``write_request`` is the chosen series' bytes as they arrived (not decoded,
        not re-encoded); keys, spans (rebased), ``sample_count`` and ``histogram_count`` are
        recomputed, ``metadata_count``, tenant, ``received_at``, ``decoder``, ``gather`` and
        ``labeler`` are kept, ``compressed`` is None. An empty ``index`` gives a request
        holding only ``other_fields``. Pure and thread-safe. Raises RuntimeError when the
        batch has no ``series_spans`` (built by hand), TypeError for a non-integer index,
        IndexError for an index out of range.
        """
        picked = self._picked_spans(index, "subset")
        data = (self.gather or gather_spans)(self.write_request, picked, self.other_fields)
        if len(data) > 0xFFFFFFFF:
            raise ValueError("the subset request would be over 4 GiB; choose fewer series")
        samples = int(picked[:, 2].sum(dtype=np.uint64))
        histograms = int(picked[:, 3].sum(dtype=np.uint64))
        lengths = picked[:, 1] - picked[:, 0]
        picked[:, 1] = np.cumsum(lengths, dtype=np.uint32)  # picked is a copy: rebase it
        picked[:, 0] = picked[:, 1] - lengths
        return MetricBatch(
            tenant=self.tenant,
            write_request=data,
            series_keys=np.take(self.series_keys, index),
            sample_count=samples,
            histogram_count=histograms,
            metadata_count=self.metadata_count,
            received_at=self.received_at,
            series_spans=picked,
            other_fields=self.other_fields,
            decoder=self.decoder,
            gather=self.gather,
            labeler=self.labeler,
            sampler=self.sampler,
        )

    def label_sets(self, index: npt.NDArray[np.integer[Any]]) -> list[LabelSet]:
        """The label sets of the series at ``index`` (as for :meth:`subset`), in the order
        given: each sorted by name (byte order), labels with an empty value left out.

        With a ``labeler`` (what the receivers build) only those series' bytes are read and
        equal ``(name, value)`` pairs are shared objects; without one the subset's columns are
        decoded. Raises as :meth:`subset` does.
        """
        if self.labeler is not None:
            return self.labeler(self.write_request, self._picked_spans(index, "label_sets"))
        return [
            tuple(sorted((pair for pair in labels if pair[1]), key=_pair_name))
            for labels in self.subset(index).columns().label_sets
        ]

    def samples(self, index: npt.NDArray[np.integer[Any]]
                ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """The float samples of the series at ``index``: ``(i, timestamps, values)`` where
        ``i[j]`` is the position in ``index`` of sample ``j``'s series. With a ``sampler``
        only those series' bytes are read, in C; without one the subset is decoded."""
        if self.sampler is not None:
            i, ts, values = self.sampler(self.write_request, self._picked_spans(index, "samples"))
            return (np.frombuffer(i, dtype=np.int32), np.frombuffer(ts, dtype=np.int64),
                    np.frombuffer(values, dtype=np.float64))
        cols = self.subset(index).columns()
        return cols.series_index, cols.timestamps, cols.values

    def _picked_spans(self, index: npt.NDArray[np.integer[Any]],
                      caller: str) -> npt.NDArray[np.uint32]:
        """The rows of ``series_spans`` at ``index``: a new C-contiguous (k, 4) array."""
        spans = self.series_spans
        if spans is _NO_SPANS or spans.shape != (self.series_count, 4):
            raise RuntimeError(
                "this MetricBatch has no series_spans (one (start, end, points, histograms) "
                f"row per series), so {caller}() cannot pick series from it; build it with a "
                "receiver's decoder"
            )
        index = np.asarray(index)
        if index.ndim != 1 or index.dtype.kind not in "iu":
            raise TypeError(
                f"{caller}() takes a 1-d integer array of series positions, not {index.dtype} "
                f"with shape {index.shape}"
            )
        return np.take(spans, index, axis=0)  # a quarter of the time of spans[index]


def _pair_name(pair: tuple[str, str]) -> str:
    return pair[0]  # str order is code point order, which is UTF-8 byte order
