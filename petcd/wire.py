"""Protobuf wire-format primitives for hand-built messages on the hot paths.

The bottom layer: the API layer assembles responses by byte concatenation and MVCC
encodes KeyValues with these, producing exactly what the generated classes would.
"""

from __future__ import annotations

_SMALL = tuple(bytes((i,)) for i in range(0x80))


def varint(n: int) -> bytes:
    if n < 0x80:
        if n >= 0:
            return _SMALL[n]
        n &= (1 << 64) - 1  # int64 negatives are 10-byte two's complement on the wire
    elif n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    elif n < 0x200000:
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, n >> 14))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a varint at pos; return (value, next position)."""
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def field_bytes(field_no: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint((field_no << 3) | 2) + varint(len(payload)) + payload


def field_varint(field_no: int, value: int) -> bytes:
    """A varint field (wire type 0); proto3 omits zero values, so callers skip 0."""
    return varint(field_no << 3) + varint(value)
