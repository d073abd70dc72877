"""The pure-Python twin of the ``_wirescan`` C extension, used when it is not built.

Same contract: ``scan(buffer) -> (keys, samples, histograms, metadata, spans, other)`` where
``keys`` is one native-endian uint64 per ``TimeSeries`` (xxh64 of its canonical label bytes),
``spans`` four native uint32 per ``TimeSeries`` (start, end, points, histograms: see
``_wirescan.c``) and ``other`` the top-level fields that are not a ``TimeSeries``, verbatim;
else ``ValueError(kind, series_index, detail)``. ``gather(buffer, spans, tail)`` is
:func:`phoenixcp.core.batch.gather_spans`. ``labels(buffer, spans)`` gives the label set of
the series at each span row, sorted by name, empty values left out, its ``(name, value)``
pairs and names interned in a bounded cache (``label_cache_size()``,
``label_cache_clear()``). It is slower (a Python loop per label and per
sample); label sets already validated are remembered by their raw bytes so steady-state
series skip name validation and hashing. The cache is per process, bounded, and safe under
the GIL.
"""

from __future__ import annotations

import struct

import xxhash

from phoenixcp.core.batch import gather_spans as gather
from phoenixcp.core.series import canonical_label_bytes, label_name_problem

__all__ = ["gather", "label_cache_clear", "label_cache_size", "labels", "scan"]

_CACHE_MAX = 262_144
_validated: dict[bytes, int] = {}
_pairs: dict[tuple[bytes, bytes], tuple[str, str]] = {}
_names: dict[bytes, str] = {}
_METRIC_FIRST = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:")
_METRIC_REST = _METRIC_FIRST | frozenset(b"0123456789")


class _Malformed(Exception):
    pass


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while shift < 70:
        if pos >= end:
            raise _Malformed
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
    raise _Malformed


def _field(buf: bytes, pos: int, end: int) -> tuple[int, int, int, int]:
    """(field number, wire type, payload start, position after the field)."""
    tag, pos = _varint(buf, pos, end)
    num, wt = tag >> 3, tag & 7
    if num == 0 or num > 0x1FFFFFFF:
        raise _Malformed
    if wt == 0:
        _, after = _varint(buf, pos, end)
    elif wt == 1:
        after = pos + 8
    elif wt == 5:
        after = pos + 4
    elif wt == 2:
        n, pos = _varint(buf, pos, end)
        after = pos + n
    else:
        raise _Malformed
    if after > end:
        raise _Malformed
    return num, wt, pos, after


def _well_formed(buf: bytes, pos: int, end: int) -> None:
    while pos < end:
        pos = _field(buf, pos, end)[3]


def _label(buf: bytes, pos: int, end: int, si: int) -> tuple[str, str]:
    name = value = b""
    while pos < end:
        num, wt, start, pos = _field(buf, pos, end)
        if num in (1, 2):
            if wt != 2:
                raise ValueError("malformed", si, b"Label field with the wrong wire type")
            if num == 1:
                name = buf[start:pos]
            else:
                value = buf[start:pos]
    try:
        name_s = name.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("utf8_name", si, b"") from None
    try:
        return name_s, value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("utf8_value", si, name) from None


def _validate(labels: list[tuple[str, str]], si: int) -> int:
    if not labels:
        raise ValueError("no_labels", si, b"")
    ordered = sorted(labels, key=lambda nv: nv[0].encode())
    have_name = False
    for i, (name, value) in enumerate(ordered):
        if i and ordered[i - 1][0] == name:
            raise ValueError("duplicate_label", si, name.encode())
        if name == "__name__":
            have_name = True
            if not value:
                raise ValueError("empty_name", si, b"")
            vb = value.encode()
            if vb[0] not in _METRIC_FIRST or any(c not in _METRIC_REST for c in vb):
                raise ValueError("bad_metric_name", si, vb)
        elif (problem := label_name_problem(name)) is not None:
            kind = "reserved_label_name" if "reserved" in problem else "bad_label_name"
            raise ValueError(kind, si, name.encode())
    if not have_name:
        raise ValueError("no_name", si, b"")
    return xxhash.xxh64_intdigest(canonical_label_bytes(ordered))


def _series(buf: bytes, pos: int, end: int, si: int) -> tuple[int, int, int]:
    raw: list[bytes] = []
    samples = histograms = 0
    while pos < end:
        field_start = pos
        num, wt, start, pos = _field(buf, pos, end)
        if 1 <= num <= 4 and wt != 2:
            raise ValueError("malformed", si, b"TimeSeries field with the wrong wire type")
        if num == 1:
            raw.append(buf[field_start:pos])
        elif num == 2:
            _well_formed(buf, start, pos)
            samples += 1
        elif num == 3:
            p = start
            while p < pos:
                xn, xw, xs, p = _field(buf, p, pos)
                if xn == 1:
                    if xw != 2:
                        raise ValueError(
                            "malformed", si, b"Exemplar field with the wrong wire type"
                        )
                    _label(buf, xs, p, si)
        elif num == 4:
            _well_formed(buf, start, pos)
            histograms += 1
    blob = b"".join(raw)
    key = _validated.get(blob)
    if key is None:
        labels = []
        for item in raw:
            _, _, s, e = _field(item, 0, len(item))
            labels.append(_label(item, s, e, si))
        key = _validate(labels, si)
        if len(_validated) >= _CACHE_MAX:
            _validated.clear()
        _validated[blob] = key
    return key, samples, histograms


def _metadata(buf: bytes, pos: int, end: int, mi: int) -> None:
    while pos < end:
        num, wt, start, pos = _field(buf, pos, end)
        if num == 1 and wt != 0:
            raise ValueError("malformed", mi, b"MetricMetadata.type is not a varint")
        if num in (2, 4, 5):
            if wt != 2:
                raise ValueError("malformed", mi, b"MetricMetadata field with the wrong wire type")
            try:
                buf[start:pos].decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("utf8_metadata", mi, b"") from None


def scan(buffer: bytes) -> tuple[bytes, int, int, int, bytes, bytes]:
    """Scan and validate a WriteRequest; see the module docstring."""
    buf = bytes(buffer)
    if len(buf) > 0xFFFFFFFF:  # spans are uint32 offsets
        raise ValueError("too_large", 0, b"")
    keys: list[int] = []
    spans: list[int] = []
    other: list[bytes] = []
    samples = histograms = nmeta = 0
    pos, end = 0, len(buf)
    try:
        while pos < end:
            field_start = pos
            num, wt, start, pos = _field(buf, pos, end)
            if num in (1, 3) and wt != 2:
                raise ValueError(
                    "malformed", len(keys), b"WriteRequest field with the wrong wire type"
                )
            if num == 1:
                key, s, h = _series(buf, start, pos, len(keys))
                keys.append(key)
                spans += (field_start, pos, s + h, h)
                samples += s
                histograms += h
                continue
            if num == 3:
                _metadata(buf, start, pos, nmeta)
                nmeta += 1
            other.append(buf[field_start:pos])
    except _Malformed:
        raise ValueError("malformed", len(keys), b"truncated or invalid protobuf field") from None
    return (
        struct.pack(f"={len(keys)}Q", *keys),
        samples,
        histograms,
        nmeta,
        struct.pack(f"={len(spans)}I", *spans),
        b"".join(other),
    )


def _pair(name: bytes, value: bytes) -> tuple[str, str]:
    """The interned ``(name, value)`` of a label (names interned too)."""
    key = (name, value)
    pair = _pairs.get(key)
    if pair is None:
        name_s = _names.get(name)
        if name_s is None:
            name_s = name.decode("utf-8")
            if len(_names) >= _CACHE_MAX:
                _names.clear()
            _names[name] = name_s
        pair = (name_s, value.decode("utf-8"))
        if len(_pairs) >= _CACHE_MAX:
            _pairs.clear()
        _pairs[key] = pair
    return pair


def _label_fields(buf: bytes, pos: int, end: int) -> tuple[bytes, bytes]:
    name = value = b""
    while pos < end:
        num, wt, start, pos = _field(buf, pos, end)
        if num in (1, 2):
            if wt != 2:
                raise _Malformed
            if num == 1:
                name = buf[start:pos]
            else:
                value = buf[start:pos]
    return name, value


def labels(buffer: bytes, spans: object) -> list[tuple[tuple[str, str], ...]]:
    """The label sets of the series at ``spans`` (rows of four native uint32, any buffer:
    a ``MetricBatch.series_spans`` array or part of it); see the module docstring."""
    buf = bytes(buffer)
    raw = memoryview(spans).tobytes()  # type: ignore[arg-type]
    if len(raw) % 16:
        raise ValueError("spans must be rows of four uint32")
    out: list[tuple[tuple[str, str], ...]] = []
    for i, (start, end, _, _) in enumerate(struct.iter_unpack("=4I", raw)):
        if start > end or end > len(buf):
            raise ValueError(f"span {i} ({start}, {end}) is outside the {len(buf)}-byte buffer")
        found: list[tuple[bytes, bytes]] = []
        try:
            num, wt, pos, after = _field(buf, start, end)
            if num != 1 or wt != 2 or after != end:
                raise _Malformed
            while pos < end:
                num, wt, sub, pos = _field(buf, pos, end)
                if num != 1:
                    continue
                if wt != 2:
                    raise _Malformed
                name, value = _label_fields(buf, sub, pos)
                if value:
                    found.append((name, value))
        except _Malformed:
            raise ValueError(f"span {i} is not one well-formed TimeSeries entry") from None
        found.sort(key=lambda nv: nv[0])  # stable: a sorted series keeps its order
        out.append(tuple(_pair(name, value) for name, value in found))
    return out


def samples(buffer: bytes, spans: object) -> tuple[bytes, bytes, bytes]:
    """The float samples of some series (see _wirescan.c ``samples``)."""
    from phoenixcp.api.prometheus import remote_pb2

    buf = bytes(buffer)
    raw = spans.tobytes() if hasattr(spans, "tobytes") else bytes(spans)  # type: ignore[call-overload]
    if len(raw) % 16:
        raise ValueError("spans must be rows of four uint32")
    rows = struct.iter_unpack("=4I", raw)
    index: list[int] = []
    stamps: list[int] = []
    values: list[float] = []
    for i, (start, end, _points, _histograms) in enumerate(rows):
        if start > end or end > len(buf):
            raise ValueError(f"span {i} ({start}, {end}) is outside the {len(buf)}-byte buffer")
        try:
            request = remote_pb2.WriteRequest.FromString(buf[start:end])
        except Exception:
            raise ValueError(f"span {i} is not one well-formed TimeSeries entry") from None
        if len(request.timeseries) != 1:
            raise ValueError(f"span {i} is not one well-formed TimeSeries entry")
        for sample in request.timeseries[0].samples:
            index.append(i)
            stamps.append(sample.timestamp)
            values.append(sample.value)
    n = len(index)
    return (struct.pack(f"={n}i", *index), struct.pack(f"={n}q", *stamps),
            struct.pack(f"={n}d", *values))


def label_cache_size() -> tuple[int, int]:
    """(pairs, names) held by :func:`labels`' cache."""
    return len(_pairs), len(_names)


def label_cache_clear() -> None:
    """Empty :func:`labels`' cache (tests, benchmarks)."""
    _pairs.clear()
    _names.clear()
