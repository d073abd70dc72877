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

Batches are immutable values; ``columns()`` is computed at most once per batch under normal
use (a race between two threads may decode twice; both results are equal).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["BatchColumns", "ColumnsDecoder", "LabelSet", "MetricBatch", "MetricType"]

LabelSet = tuple[tuple[str, str], ...]
"""A series' labels as ``((name, value), ...)``, ``__name__`` included, in arrival order."""


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


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricBatch:
    """One accepted request, validated, as bytes plus per-series keys.

    ``series_keys`` has one uint64 per ``TimeSeries`` of ``write_request``, in order.
    ``sample_count`` counts float samples and native histogram samples. ``received_at`` is
    ``time.monotonic_ns()`` when the receiver started on the request (for latency only).
    """

    tenant: str
    write_request: bytes
    series_keys: npt.NDArray[np.uint64]
    sample_count: int
    received_at: int
    histogram_count: int = 0
    metadata_count: int = 0
    compressed: bytes | None = field(default=None, repr=False, compare=False)
    """``write_request`` snappy-compressed (block format) as the sender sent it, when it did:
    queues and exporters then pass it on without compressing it again."""
    decoder: ColumnsDecoder | None = field(default=None, repr=False, compare=False)
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
