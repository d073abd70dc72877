"""Series identity and Prometheus naming rules, shared by every receiver and by the policies.

A series is identified by its label set, ``__name__`` included. Its **canonical label bytes**
are the Prometheus remote-write encoding of that set (field 1 of ``prometheus.TimeSeries``):
labels sorted by name (byte order), each written as ``0x0a len(entry) entry`` where ``entry``
is ``0x0a len(name) name 0x12 len(value) value``, lengths as protobuf varints. Labels whose
value is empty are left out, as Prometheus treats an empty value as an absent label. The
**series key** is ``xxh64(canonical label bytes, seed=0)`` as an unsigned 64-bit integer.

Because the canonical bytes are the wire encoding a conforming remote-write client already
sends (sorted labels, no empty values), a receiver can hash a series' label bytes as they
arrive and obtain the same key that :func:`series_key` computes from decoded strings.

Everything here is pure and thread-safe.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable

import xxhash

from phoenixcp.core.wire import varint as _varint

__all__ = [
    "LABEL_NAME_PATTERN",
    "METRIC_NAME_LABEL",
    "METRIC_NAME_PATTERN",
    "STALE_NAN",
    "STALE_NAN_BITS",
    "canonical_label_bytes",
    "is_stale_marker",
    "is_valid_label_name",
    "is_valid_metric_name",
    "label_name_problem",
    "metric_name_problem",
    "series_key",
    "series_key_of_canonical",
]

METRIC_NAME_LABEL = "__name__"
METRIC_NAME_PATTERN = "^[a-zA-Z_:][a-zA-Z0-9_:]*$"
LABEL_NAME_PATTERN = "^[a-zA-Z_][a-zA-Z0-9_]*$"
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

STALE_NAN_BITS = 0x7FF0000000000002
"""Bit pattern of Prometheus' staleness marker: a NaN that means "this series ended"."""
STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]
"""The staleness marker as a float; compare bits with :func:`is_stale_marker`, never with ==."""


def is_stale_marker(value: float) -> bool:
    """Whether ``value`` is Prometheus' staleness marker (not any other NaN)."""
    return math.isnan(value) and struct.pack("<d", value) == struct.pack("<Q", STALE_NAN_BITS)


def is_valid_metric_name(name: str) -> bool:
    """Whether ``name`` matches ``^[a-zA-Z_:][a-zA-Z0-9_:]*$``."""
    return _METRIC_NAME.match(name) is not None


def is_valid_label_name(name: str) -> bool:
    """Whether ``name`` is a usable label name: the pattern, and ``__`` only for ``__name__``."""
    return label_name_problem(name) is None


def metric_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a metric name, or None when it can."""
    if not name:
        return "the metric name (label __name__) is empty"
    if _METRIC_NAME.match(name) is None:
        return f"metric name {name!r} does not match {METRIC_NAME_PATTERN}"
    return None


def label_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a label name, or None when it can."""
    if _LABEL_NAME.match(name) is None:
        return f"label name {name!r} does not match {LABEL_NAME_PATTERN}"
    if name.startswith("__") and name != METRIC_NAME_LABEL:
        return f"label name {name!r} is reserved: names starting with __ are internal"
    return None


def canonical_label_bytes(labels: Iterable[tuple[str, str]]) -> bytes:
    """The canonical bytes of a label set (see the module docstring).

    Raises ValueError when two labels have the same name. Names are not validated here.
    """
    encoded: list[tuple[bytes, bytes]] = []
    for name, value in labels:
        if value:
            encoded.append((name.encode("utf-8"), value.encode("utf-8")))
    encoded.sort()
    out = bytearray()
    previous: bytes | None = None
    for name_b, value_b in encoded:
        if name_b == previous:
            raise ValueError(f"duplicate label name {name_b.decode()!r}")
        previous = name_b
        entry = b"\x0a" + _varint(len(name_b)) + name_b + b"\x12" + _varint(len(value_b)) + value_b
        out += b"\x0a" + _varint(len(entry)) + entry
    return bytes(out)


def series_key_of_canonical(canonical: bytes) -> int:
    """The 64-bit series key of canonical label bytes."""
    return xxhash.xxh64_intdigest(canonical)


def series_key(labels: Iterable[tuple[str, str]]) -> int:
    """The 64-bit series key of a label set (``__name__`` included as a label)."""
    return xxhash.xxh64_intdigest(canonical_label_bytes(labels))
