"""Prometheus remote-write 1.0 bodies → validated :class:`~phoenixcp.core.batch.MetricBatch`.

The request is checked in one pass over its bytes by ``_wirescan`` (a C extension, see
docs/adr/0005; a pure-Python twin with the same contract runs when it is not built). No
Python object is made per series or per sample: the result is the decompressed bytes, one
uint64 key and one byte span per series, the request's other top-level fields (metadata) and
counts; the spans let :meth:`~phoenixcp.core.batch.MetricBatch.subset` pass on the bytes of
the series no policy touches. A request is accepted whole or refused whole, as remote-write
has no partial success.

What is refused (:class:`~phoenixcp.errors.InvalidArgument`, HTTP 400): a body or
decompressed request over ``max_bytes`` (the snappy length header is read first, so a
"snappy bomb" is refused before any memory is spent), bad snappy, an unknown
``Content-Encoding`` (``field="Content-Encoding"``, HTTP 415), malformed protobuf, a series
without labels, without ``__name__`` or with an empty one, a metric name or label name that
breaks the Prometheus patterns, a reserved label name (``__`` prefix other than
``__name__``), the same label name twice in a series, any string that is not UTF-8.

What is accepted, as Prometheus does: labels in any order (the key is computed on the sorted
set, so it does not depend on the order; the bytes are passed on unchanged), NaN, ±Inf and
the staleness marker as values, series with no samples, native histograms and exemplars
(passed through; histograms are counted in ``sample_count``), labels with empty values (they
do not change the series key).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import cramjam
import numpy as np
import numpy.typing as npt

from phoenixcp.core.batch import LabelDecoder, MetricBatch, SampleDecoder, SpanGather
from phoenixcp.core.series import LABEL_NAME_PATTERN, METRIC_NAME_PATTERN
from phoenixcp.errors import InvalidArgument
from phoenixcp.platform.ingest import _wirescan_py
from phoenixcp.platform.ingest.columns import decode_columns

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SCANNER",
    "ScannedRequest",
    "Scanner",
    "batch_from_scan",
    "decode_remote_write",
    "validate_write_request",
]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024

Scanner = Callable[[bytes], tuple[bytes, int, int, int, bytes, bytes]]
"""``_wirescan.scan``'s contract: (keys, samples, histograms, metadata, spans, other)."""

try:
    from phoenixcp.platform.ingest import _wirescan  # type: ignore[attr-defined]

    _scan: Scanner = _wirescan.scan
    _gather: SpanGather = _wirescan.gather
    _labels: LabelDecoder = _wirescan.labels
    _samples: SampleDecoder = _wirescan.samples
    SCANNER = "c"
except ImportError:  # the extension is not built: same contract, slower
    _scan = _wirescan_py.scan
    _gather = _wirescan_py.gather
    _labels = _wirescan_py.labels
    _samples = _wirescan_py.samples
    SCANNER = "python"


class ScannedRequest(NamedTuple):
    """What :func:`validate_write_request` found in a valid ``WriteRequest``.

    ``spans`` has one row ``(start, end, points, histograms)`` per series, in order:
    ``data[start:end]`` is its whole top-level entry, tag and length included (see
    :class:`~phoenixcp.core.batch.MetricBatch`). ``other_fields`` is the request's top-level
    fields that are not series (metadata, unknown fields), verbatim and in order.
    """

    keys: npt.NDArray[np.uint64]
    samples: int
    histograms: int
    metadata: int
    spans: npt.NDArray[np.uint32]
    other_fields: bytes


def _show(detail: bytes) -> str:
    text = detail.decode("utf-8", "replace")
    return repr(text if len(text) <= 100 else text[:100] + "…")


def _message(kind: str, index: int, detail: bytes) -> str:
    where = f"series {index}"
    if kind == "malformed":
        return (
            f"the request is not a valid Prometheus remote-write WriteRequest: "
            f"{detail.decode('utf-8', 'replace')} (at or after series {index})"
        )
    if kind == "too_large":
        return "the request is 4 GiB or more; send smaller batches"
    if kind == "utf8_metadata":
        return f"metadata entry {index}: a string is not valid UTF-8; strings must be UTF-8"
    messages = {
        "no_labels": "has no labels; every series needs at least __name__, the metric name",
        "no_name": "has no __name__ label; every series needs a metric name",
        "empty_name": "has an empty metric name (label __name__); it must match "
        + METRIC_NAME_PATTERN,
        "bad_metric_name": f"metric name {_show(detail)} is not valid; metric names must match "
        + METRIC_NAME_PATTERN,
        "bad_label_name": f"label name {_show(detail)} is not valid; label names must match "
        + LABEL_NAME_PATTERN,
        "reserved_label_name": f"label name {_show(detail)} is reserved; names starting with __ "
        "are internal to Prometheus (only __name__ may be sent)",
        "duplicate_label": f"label {_show(detail)} appears more than once; label names must be "
        "unique within a series",
        "utf8_name": "has a label name that is not valid UTF-8; strings must be UTF-8",
        "utf8_value": f"the value of label {_show(detail)} is not valid UTF-8; strings must be "
        "UTF-8",
    }
    return f"{where}: {messages.get(kind, kind)}"


def validate_write_request(data: bytes, *, scanner: Scanner | None = None) -> ScannedRequest:
    """Validate an uncompressed ``WriteRequest``; return (series keys, float samples,
    histogram samples, metadata entries, series spans, other fields) as a
    :class:`ScannedRequest`. Raises InvalidArgument naming the series and the problem.
    ``scanner`` picks an implementation (tests run both); default: the C one if built.
    """
    try:
        raw, samples, histograms, metadata, spans, other = (scanner or _scan)(data)
    except ValueError as exc:
        kind, index, detail = exc.args
        where = None if kind == "too_large" else f"timeseries[{index}]"
        raise InvalidArgument(_message(kind, index, detail), field=where) from None
    return ScannedRequest(
        np.frombuffer(raw, dtype=np.uint64),
        samples,
        histograms,
        metadata,
        np.frombuffer(spans, dtype=np.uint32).reshape(-1, 4),
        other,
    )


def _snappy_length(body: bytes) -> int:
    """The uncompressed length a snappy block says it has (its leading varint)."""
    result = shift = 0
    for i in range(min(len(body), 5)):
        b = body[i]
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result
        shift += 7
    raise InvalidArgument("the body is not snappy-compressed: its length header is invalid")


_inflate = threading.local()
"""Per thread, ``buffer``: a bytearray snappy inflates into, kept between requests."""


def _inflated(body: bytes, length: int) -> bytes:
    """The snappy block ``body`` inflated; ``length`` is what its header announces.

    It is inflated into a buffer kept per thread, then copied once into the bytes the batch
    keeps: no second buffer of that size is allocated and freed per request (at these sizes
    that often costs page faults as well). cramjam raises the same errors for the same
    bodies as ``decompress_raw``: it checks the header against the room it is given and
    writes only what the header announces.
    """
    buffer: bytearray | None = getattr(_inflate, "buffer", None)
    if buffer is None or len(buffer) < length:
        buffer = _inflate.buffer = bytearray(length)
    written = cramjam.snappy.decompress_raw_into(body, buffer)
    return bytes(memoryview(buffer)[:written])


def decompress(body: bytes, *, content_encoding: str | None, max_bytes: int) -> bytes:
    """The uncompressed ``WriteRequest`` of a remote-write body, within ``max_bytes``.

    Safe from any thread; each thread that inflates keeps one buffer as large as the
    largest request it inflated (so at most the largest ``max_bytes`` it was given)."""
    if len(body) > max_bytes:
        raise InvalidArgument(
            f"the request body is {len(body)} bytes, over the limit of {max_bytes} bytes; "
            "send smaller batches"
        )
    encoding = (content_encoding or "snappy").strip().lower()
    if encoding == "identity":
        return body
    if encoding != "snappy":
        raise InvalidArgument(
            f"Content-Encoding {content_encoding!r} is not supported; remote-write bodies "
            "must be snappy-compressed (Content-Encoding: snappy)",
            field="Content-Encoding",
        )
    if not body:
        raise InvalidArgument("the request body is empty; expected a snappy-compressed "
                              "WriteRequest")
    length = _snappy_length(body)
    if length > max_bytes:
        raise InvalidArgument(
            f"the request decompresses to {length} bytes, over the limit of {max_bytes} "
            "bytes; send smaller batches"
        )
    try:
        data = _inflated(body, length)
    except Exception as exc:  # cramjam raises its own DecompressionError and others
        raise InvalidArgument(f"the body is not valid snappy (block format): {exc}") from None
    if len(data) != length:
        raise InvalidArgument("the body is not valid snappy: its length header does not match")
    return data


def decode_remote_write(
    body: bytes,
    *,
    tenant: str,
    content_encoding: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    received_at: int | None = None,
) -> MetricBatch:
    """Decompress and validate one remote-write body into a batch for ``tenant``.

    ``content_encoding`` is the HTTP header (None means snappy, the only encoding
    remote-write 1.0 defines; ``identity`` is accepted for tests and tools). Pure CPU work,
    no I/O; safe to call from any thread (the C scanner releases the GIL).
    """
    start = time.monotonic_ns() if received_at is None else received_at
    data = decompress(body, content_encoding=content_encoding, max_bytes=max_bytes)
    scanned = validate_write_request(data)
    return batch_from_scan(data, scanned, tenant=tenant, received_at=start,
                           compressed=body if data is not body else None)


def batch_from_scan(
    data: bytes,
    scanned: ScannedRequest,
    *,
    tenant: str,
    received_at: int,
    compressed: bytes | None = None,
) -> MetricBatch:
    """The batch of a ``WriteRequest`` that :func:`validate_write_request` accepted, with
    this module's columns decoder and the fastest span gather and label reader built."""
    return MetricBatch(
        tenant=tenant,
        write_request=data,
        series_keys=scanned.keys,
        sample_count=scanned.samples + scanned.histograms,
        histogram_count=scanned.histograms,
        metadata_count=scanned.metadata,
        series_spans=scanned.spans,
        other_fields=scanned.other_fields,
        received_at=received_at,
        compressed=compressed,
        decoder=decode_columns,
        gather=_gather,
        labeler=_labels,
        sampler=_samples,
    )
