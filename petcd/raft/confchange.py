"""ConfChange <-> Entry.data, in the wire format of etcd's raftpb.ConfChange.

Fields: id=1 (uint64), type=2 (enum), node_id=3 (uint64), context=4 (bytes).
gogoproto non-nullable scalars are always written, so the bytes match etcd's.
"""

from __future__ import annotations

from .types import ConfChange


def _varint(n: int, out: bytearray) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def encode_conf_change(cc: ConfChange) -> bytes:
    out = bytearray(b"\x08")
    _varint(cc.id, out)
    out.append(0x10)
    _varint(int(cc.type), out)
    out.append(0x18)
    _varint(cc.node_id, out)
    if cc.context:
        out.append(0x22)
        _varint(len(cc.context), out)
        out += cc.context
    return bytes(out)


def decode_conf_change(data: bytes) -> ConfChange:
    fields: dict[int, int | bytes] = {}
    i, n = 0, len(data)
    while i < n:
        key = 0
        shift = 0
        while True:
            b = data[i]
            i += 1
            key |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        num, wt = key >> 3, key & 7
        if wt == 0:
            v = 0
            shift = 0
            while True:
                b = data[i]
                i += 1
                v |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            fields[num] = v
        elif wt == 2:
            ln = 0
            shift = 0
            while True:
                b = data[i]
                i += 1
                ln |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            fields[num] = bytes(data[i : i + ln])
            i += ln
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        else:
            raise ValueError(f"bad wire type {wt} in ConfChange")
    ctx = fields.get(4, b"")
    return ConfChange(
        type=int(fields.get(2, 0)),  # type: ignore[arg-type]
        node_id=int(fields.get(3, 0)),  # type: ignore[arg-type]
        context=ctx if isinstance(ctx, bytes) else b"",
        id=int(fields.get(1, 0)),  # type: ignore[arg-type]
    )
