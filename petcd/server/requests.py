"""The Raft entry payload: etcd's InternalRaftRequest, encoded without building objects.

Every proposal is an InternalRaftRequest{ID, <one request field>} (etcd's
raft_internal.proto field numbers), so entries are wire-compatible with etcd's shape and
any member can decode any entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from petcd.proto.etcdserverpb import raft_internal_pb2, rpc_pb2
from petcd.proto.membershippb import membership_pb2
from petcd.wire import read_varint, varint

# InternalRaftRequest field numbers (etcd's raft_internal.proto): the entry payload.
F_RANGE = 3
F_PUT = 4
F_DELETE_RANGE = 5
F_TXN = 6
F_COMPACTION = 7
F_LEASE_GRANT = 8
F_LEASE_REVOKE = 9
F_ALARM = 10
F_LEASE_CHECKPOINT = 11
F_CLUSTER_VERSION_SET = 1300
F_CLUSTER_MEMBER_ATTR_SET = 1301

_PARSERS: dict[int, Callable[[bytes], Any]] = {
    F_RANGE: rpc_pb2.RangeRequest.FromString,
    F_PUT: rpc_pb2.PutRequest.FromString,
    F_DELETE_RANGE: rpc_pb2.DeleteRangeRequest.FromString,
    F_TXN: rpc_pb2.TxnRequest.FromString,
    F_COMPACTION: rpc_pb2.CompactionRequest.FromString,
    F_LEASE_GRANT: rpc_pb2.LeaseGrantRequest.FromString,
    F_LEASE_REVOKE: rpc_pb2.LeaseRevokeRequest.FromString,
    F_ALARM: rpc_pb2.AlarmRequest.FromString,
    F_LEASE_CHECKPOINT: rpc_pb2.LeaseCheckpointRequest.FromString,
    F_CLUSTER_VERSION_SET: membership_pb2.ClusterVersionSetRequest.FromString,
    F_CLUSTER_MEMBER_ATTR_SET: membership_pb2.ClusterMemberAttrSetRequest.FromString,
}


_TAGS = {f: varint((f << 3) | 2) for f in _PARSERS}


_SMALL_CONT = tuple(bytes((i | 0x80,)) for i in range(0x80))  # a varint's first byte
_last_id: list[tuple[int, bytes]] = [(-2, b"")]  # the previous request ID and its varint


def _id_varint(req_id: int) -> bytes:
    # Request IDs count up by one: unless the low 7 bits wrap, only the first byte of the
    # (9-10 byte) varint changes, so the last encoding is reused.
    last_id, last_enc = _last_id[0]
    if req_id == last_id + 1 and req_id & 0x7F and req_id >= 0x80:
        enc = _SMALL_CONT[req_id & 0x7F] + last_enc[1:]
    else:
        enc = varint(req_id)
    _last_id[0] = (req_id, enc)
    return enc


def encode_internal(req_id: int, field_no: int, payload: bytes) -> bytes:
    """Serialize an InternalRaftRequest{ID, <field_no>: payload} without building objects."""
    tag = _TAGS.get(field_no) or varint((field_no << 3) | 2)
    return b"\x08" + _id_varint(req_id) + tag + varint(len(payload)) + payload


def decode_internal(data: bytes) -> tuple[int, int, Any]:
    """(request id, field number, parsed request) of an entry's InternalRaftRequest."""
    try:
        if data[0] == 0x08:
            rid, pos = read_varint(data, 1)
            tag, pos = read_varint(data, pos)
            n, pos = read_varint(data, pos)
            field_no = tag >> 3
            if tag & 7 == 2 and pos + n == len(data) and field_no in _PARSERS:
                return rid, field_no, _PARSERS[field_no](data[pos : pos + n])
    except IndexError:
        pass
    # Not our compact form: parse generically.
    r = raft_internal_pb2.InternalRaftRequest.FromString(data)
    for fd, value in r.ListFields():
        if fd.number in _PARSERS:
            return r.ID, fd.number, value
    return r.ID, 0, None
