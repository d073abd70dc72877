"""Protobuf wire-format pieces that Phoenix writes by hand (label keys, remote-write from
OTLP, window reports), where building messages would cost more than the bytes."""

from __future__ import annotations

__all__ = ["varint"]


def varint(value: int) -> bytes:
    """A protobuf varint (negative values as 64-bit two's complement, as int64/int32/enum)."""
    if 0 <= value < 0x80:
        return bytes((value,))
    if 0 <= value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    value &= 0xFFFF_FFFF_FFFF_FFFF
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
