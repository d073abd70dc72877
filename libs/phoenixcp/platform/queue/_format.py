"""The on-disk format of queue segments and the commit checkpoint (all little-endian).

A segment file ``<seq:020d>.seg`` starts with the 8-byte magic ``PHXQSEG1`` and holds records
back to back::

    u32 payload_len | u32 crc32 | u64 enqueued_unix_ns | u64 count | u16 tenant_len
    | tenant (UTF-8) | payload

``crc32`` (zlib) covers everything after it: the three numbers, the tenant and the payload, so
a torn or corrupt record is found by its length running past the file or by its CRC. A
preallocated segment (written with zeros ahead of use) ends in zeros: all-zero bytes where a
record would start are a clean end (a real record's header is never all zero). The
checkpoint file ``checkpoint`` is ``u64 segment | u64 offset | u32 crc32(first 16 bytes)``:
the position of the first record not yet committed, replaced atomically (write, fsync,
rename, fsync the directory).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

__all__ = [
    "HEAD_SIZE",
    "MAGIC",
    "Entry",
    "decode_checkpoint",
    "encode_checkpoint",
    "encode_record",
    "iter_records",
    "peek_enqueued_at",
    "peek_length",
    "record_size",
    "segment_name",
    "segment_seq",
]

MAGIC: Final = b"PHXQSEG1"
_LEN_CRC: Final = struct.Struct("<II")
_REST: Final = struct.Struct("<QQH")
_HEAD: Final = struct.Struct("<IIQQH")
HEAD_SIZE: Final = _HEAD.size
_ZERO_HEAD: Final = bytes(HEAD_SIZE)
_CHECKPOINT: Final = struct.Struct("<QQI")
_SUFFIX: Final = ".seg"


@dataclass(frozen=True, slots=True)
class Entry:
    """One record read from a queue: its bytes, its caller-given ``count`` and where it lies.

    ``segment``/``offset`` identify it (they are what ``commit`` records); ``end`` is the
    offset just past it; ``enqueued_at`` is the wall-clock time (Unix seconds) of ``append``.
    """

    segment: int
    offset: int
    end: int
    payload: bytes
    count: int
    enqueued_at: float
    tenant: str

    @property
    def size(self) -> int:
        """Bytes the record takes on disk, header included."""
        return self.end - self.offset


def segment_name(seq: int) -> str:
    """The file name of segment ``seq``."""
    return f"{seq:020d}{_SUFFIX}"


def segment_seq(name: str) -> int | None:
    """The sequence number of a segment file name, or None for any other file."""
    if not name.endswith(_SUFFIX) or len(name) != 20 + len(_SUFFIX):
        return None
    stem = name[:20]
    return int(stem) if stem.isdigit() else None


def record_size(payload_len: int, tenant_len: int) -> int:
    """Bytes a record with these lengths takes on disk."""
    return HEAD_SIZE + tenant_len + payload_len


def encode_record(payload: bytes, *, count: int, enqueued_ns: int, tenant: bytes) -> bytes:
    """The header (and tenant) to write before ``payload``; the payload is not copied."""
    rest = _REST.pack(enqueued_ns, count, len(tenant)) + tenant
    crc = zlib.crc32(payload, zlib.crc32(rest))
    return _LEN_CRC.pack(len(payload), crc) + rest


def iter_records(
    buf: bytes, *, segment: int, base: int, start: int = 0, verify: bool = True
) -> Iterator[Entry | str]:
    """Records in ``buf`` (which holds the file from offset ``base``) from ``buf[start:]``.

    Yields entries in order; at the first record that is incomplete or corrupt it yields a
    string saying why and stops. A clean end (no bytes left) yields nothing more. With
    ``verify=False`` the CRC is not recomputed (lengths are still checked): for records this
    process wrote moments ago, where recovery on open has already checked everything older.
    """
    pos = start
    size = len(buf)
    while pos < size:
        if _zero_from(buf, pos):  # a preallocated segment's unwritten tail: a clean end
            return
        if size - pos < HEAD_SIZE:
            yield f"torn header: {size - pos} of {HEAD_SIZE} bytes"
            return
        payload_len, crc, enqueued_ns, count, tenant_len = _HEAD.unpack_from(buf, pos)
        end = pos + HEAD_SIZE + tenant_len + payload_len
        if end > size:
            yield f"torn record: needs {end - pos} bytes, {size - pos} present"
            return
        view = memoryview(buf)
        if verify and zlib.crc32(view[pos + 8:end]) != crc:
            yield "CRC mismatch"
            return
        tenant_end = pos + HEAD_SIZE + tenant_len
        try:
            tenant = bytes(view[pos + HEAD_SIZE:tenant_end]).decode()
        except UnicodeDecodeError:
            yield "tenant is not UTF-8"
            return
        yield Entry(segment=segment, offset=base + pos, end=base + end,
                    payload=bytes(view[tenant_end:end]), count=count,
                    enqueued_at=enqueued_ns / 1e9, tenant=tenant)
        pos = end


def _zero_from(buf: bytes, pos: int) -> bool:
    """Whether ``buf[pos:]`` is all zero bytes. No record starts with a zero header (its
    CRC would have to be 0 over zero fields, and it is not), so zeros are never data."""
    return buf[pos:pos + HEAD_SIZE] == _ZERO_HEAD and buf.count(0, pos) == len(buf) - pos


def peek_length(buf: bytes, pos: int) -> int | None:
    """The full size of the record whose header starts at ``buf[pos]``, if the header is there."""
    if len(buf) - pos < HEAD_SIZE:
        return None
    payload_len, _crc, _ns, _count, tenant_len = _HEAD.unpack_from(buf, pos)
    return int(HEAD_SIZE + tenant_len + payload_len)


def peek_enqueued_at(head: bytes) -> float | None:
    """The enqueue time in a record header, or None when ``head`` is short."""
    if len(head) < HEAD_SIZE:
        return None
    return int(_HEAD.unpack_from(head, 0)[2]) / 1e9


def encode_checkpoint(segment: int, offset: int) -> bytes:
    """The checkpoint file's bytes for the position (segment, offset)."""
    body = struct.pack("<QQ", segment, offset)
    return body + struct.pack("<I", zlib.crc32(body))


def decode_checkpoint(data: bytes) -> tuple[int, int] | None:
    """The position in a checkpoint file's bytes, or None when they are not a valid one."""
    if len(data) != _CHECKPOINT.size:
        return None
    segment, offset, crc = _CHECKPOINT.unpack(data)
    if zlib.crc32(data[:16]) != crc:
        return None
    return int(segment), int(offset)
