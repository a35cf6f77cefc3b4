"""Hand-rolled protobuf encoding for the hot paths.

Responses on the request path are built by byte concatenation (header + raw KeyValue
bytes straight from the backend) instead of building message objects; these helpers
produce exactly what the generated classes would serialize.
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


class HeaderEncoder:
    """Serialized etcdserverpb.ResponseHeader for a fixed cluster and member."""

    __slots__ = ("_prefix", "_rev", "_term", "_term_bytes", "_cache")

    def __init__(self, cluster_id: int, member_id: int) -> None:
        self._prefix = (field_varint(1, cluster_id) if cluster_id else b"") + (
            field_varint(2, member_id) if member_id else b""
        )
        self._rev = -1
        self._term = -1
        self._term_bytes = b""
        self._cache = b""

    def header(self, revision: int, term: int) -> bytes:
        """The header as the body of field 1 of a response (tag and length included)."""
        if revision == self._rev and term == self._term:
            return self._cache
        if term != self._term:
            self._term = term
            self._term_bytes = b"\x20" + varint(term) if term else b""
        body = self._prefix
        if revision:
            body += b"\x18" + varint(revision)
        body += self._term_bytes
        out = b"\x0a" + _SMALL[len(body)] + body  # a header is always < 128 bytes
        self._rev = revision
        self._cache = out
        return out
