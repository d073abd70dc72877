"""join_blocks: snappy blocks joined without compressing again decode to the joined data."""

from __future__ import annotations

import random

import cramjam
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenixcp.platform.export.snappy_blocks import join_blocks, uncompressed_length


def _compress(data: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(data))


def _repetitive(rng: random.Random, size: int) -> bytes:
    """Data with many back-references (label-like text), so blocks hold copies, not only
    literals."""
    words = [f"label_{i}=value_{rng.randrange(50)}".encode() for i in range(40)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words)
    return bytes(out[:size])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=300),
                          st.integers(0, 200_000).map(lambda n: _repetitive(random.Random(n),
                                                                             n))),
                min_size=1, max_size=6))
def test_joined_blocks_decode_to_the_joined_data(parts: list[bytes]) -> None:
    joined = join_blocks([_compress(p) for p in parts])
    assert bytes(cramjam.snappy.decompress_raw(joined)) == b"".join(parts)
    assert uncompressed_length(joined)[0] == sum(map(len, parts))


def test_a_long_join_crosses_the_64k_fragments_snappy_compresses_in() -> None:
    rng = random.Random(7)
    parts = [_repetitive(rng, 150_000) for _ in range(10)]  # a remote-write batch's size
    joined = join_blocks([_compress(p) for p in parts])
    assert bytes(cramjam.snappy.decompress_raw(joined)) == b"".join(parts)


@pytest.mark.parametrize("block", [b"", b"\x80", b"\xff\xff\xff\xff\x7f", b"\x80\x80\x80\x80\x80"])
def test_a_block_without_a_valid_length_preamble_is_refused(block: bytes) -> None:
    with pytest.raises(ValueError, match="not a snappy block"):
        join_blocks([_compress(b"ok"), block])
