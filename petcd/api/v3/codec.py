"""Hand-rolled protobuf encoding for the hot paths.

Responses on the request path are built by byte concatenation (header + raw KeyValue
bytes straight from the backend) instead of building message objects; these helpers
produce exactly what the generated classes would serialize.
"""

from __future__ import annotations

from petcd.wire import _SMALL, field_bytes, field_varint, read_varint, varint

__all__ = ["HeaderEncoder", "field_bytes", "field_varint", "read_varint", "varint"]


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
