"""Series identity and Prometheus naming rules (phoenixcp.core.series)."""

from __future__ import annotations

import math
import struct

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from phoenixcp.core import series

pytestmark = pytest.mark.unit


def test_canonical_bytes_are_the_remote_write_encoding_of_sorted_labels() -> None:
    got = series.canonical_label_bytes([("job", "api"), ("__name__", "up")])
    name = b"\x0a\x08__name__\x12\x02up"
    job = b"\x0a\x03job\x12\x03api"
    assert got == b"\x0a" + bytes([len(name)]) + name + b"\x0a" + bytes([len(job)]) + job


def test_key_ignores_order_and_empty_values() -> None:
    a = series.series_key([("__name__", "up"), ("job", "api"), ("zone", "")])
    b = series.series_key([("job", "api"), ("__name__", "up")])
    assert a == b == xxhash.xxh64_intdigest(series.canonical_label_bytes([("job", "api"),
                                                                          ("__name__", "up")]))
    assert a != series.series_key([("__name__", "up"), ("job", "web")])


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate label name 'job'"):
        series.canonical_label_bytes([("job", "a"), ("job", "b")])


@pytest.mark.parametrize("name", ["up", "http_requests_total", ":rule:x", "_a1"])
def test_valid_metric_names(name: str) -> None:
    assert series.is_valid_metric_name(name)
    assert series.metric_name_problem(name) is None


@pytest.mark.parametrize("name", ["", "1up", "a-b", "a b", "é", "up\n"])
def test_invalid_metric_names(name: str) -> None:
    assert not series.is_valid_metric_name(name)
    assert series.metric_name_problem(name) is not None


@pytest.mark.parametrize("name", ["job", "_x", "__name__", "A9_"])
def test_valid_label_names(name: str) -> None:
    assert series.is_valid_label_name(name)


@pytest.mark.parametrize(
    ("name", "why"),
    [("a:b", "does not match"), ("", "does not match"), ("9a", "does not match"),
     ("__meta", "reserved"), ("__", "reserved")],
)
def test_invalid_label_names(name: str, why: str) -> None:
    assert why in (series.label_name_problem(name) or "")


def test_stale_marker() -> None:
    assert struct.pack("<d", series.STALE_NAN) == struct.pack("<Q", 0x7FF0000000000002)
    assert series.is_stale_marker(series.STALE_NAN)
    assert not series.is_stale_marker(math.nan)
    assert not series.is_stale_marker(1.0)


@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True),
                       st.text(max_size=20), min_size=1, max_size=8))
def test_key_is_stable_under_permutation(labels: dict[str, str]) -> None:
    items = list(labels.items())
    assert series.series_key(items) == series.series_key(list(reversed(items)))
