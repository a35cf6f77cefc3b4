"""etcdctl's output formats: simple, json, fields, protobuf and table.

Each printer writes bytes to `out` (stdout's buffer) because keys and values are raw bytes; the
text is what etcdctl 3.4's printers write for the same responses. Formats that etcdctl does not
support for a command raise `Unsupported` (etcdctl: `Error: <fmt> not supported as output
format`, exit 4).
"""

from __future__ import annotations

import base64
import sys
from typing import Any, BinaryIO

from petcd.ctl.gofmt import (
    HEX_ID_FIELDS,
    go_list,
    humanize_bytes,
    jenc,
    pb_json,
    quote,
)
from petcd.proto.etcdserverpb import rpc_pb2 as pb
from petcd.proto.mvccpb import kv_pb2 as mvccpb

__all__ = ["Printer", "Unsupported", "new_printer"]

_EVENT = {mvccpb.Event.PUT: "PUT", mvccpb.Event.DELETE: "DELETE"}
_ALARM = {pb.NONE: "NONE", pb.NOSPACE: "NOSPACE", pb.CORRUPT: "CORRUPT"}


class Unsupported(Exception):
    """etcdctl has no such output for this command and format."""


class Printer:
    """The interface; the base class implements nothing (every call is unsupported)."""

    name = ""

    def __init__(self, out: BinaryIO | None = None, *, is_hex: bool = False) -> None:
        self.out = out if out is not None else sys.stdout.buffer
        self.is_hex = is_hex
        self.value_only = False
        self.value_format = "raw"

    def w(self, s: str | bytes) -> None:
        self.out.write(s.encode() if isinstance(s, str) else s)

    def _no(self, *_: Any, **__: Any) -> None:
        raise Unsupported(f"{self.name} not supported as output format")

    get = put = delete = txn = watch = _no
    grant = revoke = keep_alive = time_to_live = leases = _no
    member_list = endpoint_health = endpoint_status = endpoint_hashkv = _no
    alarm = move_leader = db_status = _no


def _header_inline(h: pb.ResponseHeader, hex_ids: bool) -> dict[str, Any]:
    # clientv3's lease responses embed *pb.ResponseHeader: its fields are promoted.
    return pb_json(h, hex_ids)


class JSONPrinter(Printer):
    name = "json"

    def _p(self, obj: Any) -> None:
        self.w(jenc(obj) + "\n")

    def _pb(self, msg: Any) -> None:
        self._p(pb_json(msg, self.is_hex))

    def get(self, r: pb.RangeResponse) -> None:
        self._pb(r)

    put = delete = txn = member_list = alarm = get

    def revoke(self, lease_id: int, r: pb.LeaseRevokeResponse) -> None:
        self._pb(r)

    def move_leader(self, leader: int, target: int, r: pb.MoveLeaderResponse) -> None:
        self._pb(r)

    def watch(self, r: pb.WatchResponse) -> None:
        self._p(
            {
                "Header": pb_json(r.header, self.is_hex),
                "Events": [pb_json(e, self.is_hex) for e in r.events] or None,
                "CompactRevision": r.compact_revision,
                "Canceled": r.canceled,
                "Created": r.created,
            }
        )

    def _id(self, v: int) -> Any:
        return f"{v & 0xFFFFFFFFFFFFFFFF:x}" if self.is_hex else v

    def grant(self, r: pb.LeaseGrantResponse) -> None:
        d = _header_inline(r.header, self.is_hex)
        d.update({"ID": self._id(r.ID), "TTL": r.TTL, "Error": r.error})
        self._p(d)

    def keep_alive(self, r: pb.LeaseKeepAliveResponse) -> None:
        d = _header_inline(r.header, self.is_hex)
        d.update({"ID": self._id(r.ID), "TTL": r.TTL})
        self._p(d)

    def time_to_live(self, r: pb.LeaseTimeToLiveResponse, keys: bool) -> None:
        d = _header_inline(r.header, self.is_hex)
        d.update(
            {
                "id": self._id(r.ID),
                "ttl": r.TTL,
                "granted-ttl": r.grantedTTL,
                "keys": list(r.keys) if len(r.keys) else None,
            }
        )
        self._p(d)

    def leases(self, r: pb.LeaseLeasesResponse) -> None:
        d = _header_inline(r.header, self.is_hex)
        d["leases"] = [{"id": self._id(x.ID)} for x in r.leases]
        self._p(d)

    def endpoint_health(self, hs: list[dict[str, Any]]) -> None:
        self._p(hs)

    def endpoint_status(self, rows: list[tuple[str, pb.StatusResponse]]) -> None:
        self._p([{"Endpoint": ep, "Status": pb_json(r, self.is_hex)} for ep, r in rows])

    def endpoint_hashkv(self, rows: list[tuple[str, pb.HashKVResponse]]) -> None:
        self._p([{"Endpoint": ep, "HashKV": pb_json(r, self.is_hex)} for ep, r in rows])


class ProtobufPrinter(Printer):
    name = "protobuf"

    def get(self, r: Any) -> None:
        self.w(r.SerializeToString())

    put = delete = txn = member_list = alarm = watch = get

    def move_leader(self, leader: int, target: int, r: pb.MoveLeaderResponse) -> None:
        self.w(r.SerializeToString())

    def _header_only(self, r: Any, *_: Any) -> None:
        # clientv3's lease responses embed *pb.ResponseHeader, whose Marshal is promoted:
        # etcdctl writes just the header.
        self.w(r.header.SerializeToString())

    grant = keep_alive = time_to_live = leases = _header_only

    def revoke(self, lease_id: int, r: pb.LeaseRevokeResponse) -> None:
        raise Unsupported("marshal unsupported for type clientv3.LeaseRevokeResponse")


def _kv_text(p: Printer, kv: mvccpb.KeyValue) -> bytes:
    k, v = kv.key, kv.value
    if p.is_hex:
        k = "".join(f"\\x{b:02x}" for b in k).encode()
        v = "".join(f"\\x{b:02x}" for b in v).encode()
    elif p.value_format == "hex":
        v = v.hex().encode()
    elif p.value_format == "base64":
        v = base64.b64encode(v)
    if p.value_only:
        return v + b"\n"
    return k + b"\n" + v + b"\n"


class SimplePrinter(Printer):
    name = "simple"

    def kv(self, kv: mvccpb.KeyValue) -> None:
        self.w(_kv_text(self, kv))

    def get(self, r: pb.RangeResponse) -> None:
        self.w(b"".join(_kv_text(self, kv) for kv in r.kvs))

    def put(self, r: pb.PutResponse) -> None:
        self.w("OK\n")
        if r.HasField("prev_kv"):
            self.kv(r.prev_kv)

    def delete(self, r: pb.DeleteRangeResponse) -> None:
        self.w(f"{r.deleted}\n")
        for kv in r.prev_kvs:
            self.kv(kv)

    def txn(self, r: pb.TxnResponse) -> None:
        self.w("SUCCESS\n" if r.succeeded else "FAILURE\n")
        for op in r.responses:
            self.w("\n")
            which = op.WhichOneof("response")
            if which == "response_range":
                self.get(op.response_range)
            elif which == "response_put":
                self.put(op.response_put)
            elif which == "response_delete_range":
                self.delete(op.response_delete_range)
            else:
                self.w(f"unexpected response {op}\n")

    def watch(self, r: pb.WatchResponse) -> None:
        parts = []
        for e in r.events:
            parts.append(_EVENT.get(e.type, str(e.type)).encode() + b"\n")
            if e.HasField("prev_kv"):
                parts.append(_kv_text(self, e.prev_kv))
            parts.append(_kv_text(self, e.kv))
        self.w(b"".join(parts))

    def grant(self, r: pb.LeaseGrantResponse) -> None:
        self.w(f"lease {r.ID:016x} granted with TTL({r.TTL}s)\n")

    def revoke(self, lease_id: int, r: pb.LeaseRevokeResponse) -> None:
        self.w(f"lease {lease_id:016x} revoked\n")

    def keep_alive(self, r: pb.LeaseKeepAliveResponse) -> None:
        self.w(f"lease {r.ID:016x} keepalived with TTL({r.TTL})\n")

    def time_to_live(self, r: pb.LeaseTimeToLiveResponse, keys: bool) -> None:
        if r.grantedTTL == 0 and r.TTL == -1:
            self.w(f"lease {r.ID:016x} already expired\n")
            return
        txt = f"lease {r.ID:016x} granted with TTL({r.grantedTTL}s), remaining({r.TTL}s)".encode()
        if keys:
            txt += b", attached keys([" + b" ".join(r.keys) + b"])"
        self.w(txt + b"\n")

    def leases(self, r: pb.LeaseLeasesResponse) -> None:
        self.w(f"found {len(r.leases)} leases\n" + "".join(f"{x.ID:016x}\n" for x in r.leases))

    def alarm(self, r: pb.AlarmResponse) -> None:
        for a in r.alarms:
            # gogoproto's compact text form of AlarmMember, as `%+v` prints it.
            parts = []
            if a.memberID:
                parts.append(f"memberID:{a.memberID}")
            if a.alarm:
                parts.append(f"alarm:{_ALARM.get(a.alarm, a.alarm)}")
            self.w(" ".join(parts) + " \n")

    def member_list(self, r: pb.MemberListResponse) -> None:
        self.w("".join(", ".join(row) + "\n" for row in member_rows(r)))

    def endpoint_health(self, hs: list[dict[str, Any]]) -> None:
        for h in hs:
            if not h.get("error"):
                msg = f"{h['endpoint']} is healthy: successfully committed proposal: took = {h['took']}\n"
            else:
                msg = f"{h['endpoint']} is unhealthy: failed to commit proposal: {h['error']}\n"
            sys.stderr.write(msg)

    def endpoint_status(self, rows: list[tuple[str, pb.StatusResponse]]) -> None:
        self.w("".join(", ".join(row) + "\n" for row in status_rows(rows)))

    def endpoint_hashkv(self, rows: list[tuple[str, pb.HashKVResponse]]) -> None:
        self.w("".join(f"{ep}, {r.hash}\n" for ep, r in rows))

    def move_leader(self, leader: int, target: int, r: pb.MoveLeaderResponse) -> None:
        self.w(f"Leadership transferred from {leader:x} to {target:x}\n")

    def db_status(self, st: dict[str, int]) -> None:
        self.w(", ".join(db_status_row(st)) + "\n")


def _fields_kv(pfx: str, kv: mvccpb.KeyValue) -> str:
    return (
        f'"{pfx}Key" : {quote(kv.key)}\n'
        f'"{pfx}CreateRevision" : {kv.create_revision}\n'
        f'"{pfx}ModRevision" : {kv.mod_revision}\n'
        f'"{pfx}Version" : {kv.version}\n'
        f'"{pfx}Value" : {quote(kv.value)}\n'
        f'"{pfx}Lease" : {kv.lease}\n'
    )


def _fields_hdr(h: pb.ResponseHeader) -> str:
    return (
        f'"ClusterID" : {h.cluster_id}\n"MemberID" : {h.member_id}\n'
        f'"Revision" : {h.revision}\n"RaftTerm" : {h.raft_term}\n'
    )


def _b(v: bool) -> str:
    return "true" if v else "false"


class FieldsPrinter(Printer):
    name = "fields"

    def get(self, r: pb.RangeResponse) -> None:
        self.w(
            _fields_hdr(r.header)
            + "".join(_fields_kv("", kv) for kv in r.kvs)
            + f'"More" : {_b(r.more)}\n"Count" : {r.count}\n'
        )

    def put(self, r: pb.PutResponse) -> None:
        s = _fields_hdr(r.header)
        if r.HasField("prev_kv"):
            s += _fields_kv("Prev", r.prev_kv)
        self.w(s)

    def delete(self, r: pb.DeleteRangeResponse) -> None:
        self.w(
            _fields_hdr(r.header)
            + f'"Deleted" : {r.deleted}\n'
            + "".join(_fields_kv("Prev", kv) for kv in r.prev_kvs)
        )

    def txn(self, r: pb.TxnResponse) -> None:
        self.w(_fields_hdr(r.header) + f'"Succeeded" : {_b(r.succeeded)}\n')
        for op in r.responses:
            which = op.WhichOneof("response")
            if which == "response_range":
                self.get(op.response_range)
            elif which == "response_put":
                self.put(op.response_put)
            elif which == "response_delete_range":
                self.delete(op.response_delete_range)

    def watch(self, r: pb.WatchResponse) -> None:
        s = _fields_hdr(r.header)
        for e in r.events:
            s += f'"Type" : {_EVENT.get(e.type, e.type)}\n'
            if e.HasField("prev_kv"):
                s += _fields_kv("Prev", e.prev_kv)
            s += _fields_kv("", e.kv)
        self.w(s)

    def grant(self, r: pb.LeaseGrantResponse) -> None:
        self.w(_fields_hdr(r.header) + f'"ID" : {r.ID}\n"TTL" : {r.TTL}\n')

    def revoke(self, lease_id: int, r: pb.LeaseRevokeResponse) -> None:
        self.w(_fields_hdr(r.header))

    keep_alive = grant

    def time_to_live(self, r: pb.LeaseTimeToLiveResponse, keys: bool) -> None:
        self.w(
            _fields_hdr(r.header)
            + f'"ID" : {r.ID}\n"TTL" : {r.TTL}\n"GrantedTTL" : {r.grantedTTL}\n'
            + "".join(f'"Key" : {quote(k)}\n' for k in r.keys)
        )

    def leases(self, r: pb.LeaseLeasesResponse) -> None:
        self.w(_fields_hdr(r.header) + "".join(f'"ID" : {x.ID}\n' for x in r.leases))

    def member_list(self, r: pb.MemberListResponse) -> None:
        s = _fields_hdr(r.header)
        for m in r.members:
            s += f'"ID" : {m.ID}\n"Name" : {quote(m.name)}\n'
            s += "".join(f'"PeerURL" : {quote(u)}\n' for u in m.peerURLs)
            s += "".join(f'"ClientURL" : {quote(u)}\n' for u in m.clientURLs)
            s += f'"IsLearner" : {_b(m.isLearner)}\n\n'
        self.w(s)

    def endpoint_health(self, hs: list[dict[str, Any]]) -> None:
        self.w(
            "".join(
                f'"Endpoint" : {quote(h["endpoint"])}\n"Health" : {_b(h["health"])}\n'
                f'"Took" : {h["took"]}\n"Error" : {h.get("error", "")}\n\n'
                for h in hs
            )
        )

    def endpoint_status(self, rows: list[tuple[str, pb.StatusResponse]]) -> None:
        s = ""
        for ep, r in rows:
            s += _fields_hdr(r.header)
            s += f'"Version" : {quote(r.version)}\n"DBSize" : {r.dbSize}\n'
            s += f'"Leader" : {r.leader}\n"IsLearner" : {_b(r.isLearner)}\n'
            s += f'"RaftIndex" : {r.raftIndex}\n"RaftTerm" : {r.raftTerm}\n'
            s += f'"RaftAppliedIndex" : {r.raftAppliedIndex}\n'
            s += f'"Errors" : {go_list(list(r.errors))}\n"Endpoint" : {quote(ep)}\n\n'
        self.w(s)

    def endpoint_hashkv(self, rows: list[tuple[str, pb.HashKVResponse]]) -> None:
        self.w(
            "".join(
                _fields_hdr(r.header) + f'"Endpoint" : {quote(ep)}\n"Hash" : {r.hash}\n\n'
                for ep, r in rows
            )
        )

    def alarm(self, r: pb.AlarmResponse) -> None:
        self.w(
            _fields_hdr(r.header)
            + "".join(
                f'"MemberID" : {a.memberID}\n"AlarmType" : {_ALARM.get(a.alarm, a.alarm)}\n\n'
                for a in r.alarms
            )
        )

    def db_status(self, st: dict[str, int]) -> None:
        self.w(
            f'"Hash" : {st["hash"]}\n"Revision" : {st["revision"]}\n'
            f'"Keys" : {st["totalKey"]}\n"Size" : {st["totalSize"]}\n'
        )


# -- tables ------------------------------------------------------------------------------------


def member_rows(r: pb.MemberListResponse) -> list[list[str]]:
    return [
        [
            f"{m.ID:x}",
            "started" if m.name else "unstarted",
            m.name,
            ",".join(m.peerURLs),
            ",".join(m.clientURLs),
            _b(m.isLearner),
        ]
        for m in r.members
    ]


def status_rows(rows: list[tuple[str, pb.StatusResponse]]) -> list[list[str]]:
    return [
        [
            ep,
            f"{r.header.member_id:x}",
            r.version,
            humanize_bytes(r.dbSize),
            _b(r.leader == r.header.member_id),
            _b(r.isLearner),
            str(r.raftTerm),
            str(r.raftIndex),
            str(r.raftAppliedIndex),
            ", ".join(r.errors),
        ]
        for ep, r in rows
    ]


def db_status_row(st: dict[str, int]) -> list[str]:
    return [
        f"{st['hash']:x}",
        str(st["revision"]),
        str(st["totalKey"]),
        humanize_bytes(st["totalSize"]),
    ]


def render_table(hdr: list[str], rows: list[list[str]]) -> str:
    """olekukonko/tablewriter with etcdctl's settings: centred upper-case header, cells
    right-aligned, one space of padding."""
    hdr = [h.replace("_", " ").replace(".", " ").strip().upper() for h in hdr]
    widths = [len(h) for h in hdr]
    for row in rows:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+\n"

    def centre(s: str, w: int) -> str:
        gap = w - len(s)
        left = gap // 2
        return " " * left + s + " " * (gap - left)

    out = [
        line,
        "|" + "|".join(" " + centre(h, w) + " " for h, w in zip(hdr, widths, strict=True)) + "|\n",
    ]
    out.append(line)
    for row in rows:
        out.append(
            "|" + "|".join(" " + c.rjust(w) + " " for c, w in zip(row, widths, strict=True)) + "|\n"
        )
    out.append(line)
    return "".join(out)


class TablePrinter(Printer):
    name = "table"

    def member_list(self, r: pb.MemberListResponse) -> None:
        hdr = ["ID", "Status", "Name", "Peer Addrs", "Client Addrs", "Is Learner"]
        self.w(render_table(hdr, member_rows(r)))

    def endpoint_health(self, hs: list[dict[str, Any]]) -> None:
        rows = [[h["endpoint"], _b(h["health"]), h["took"], h.get("error", "")] for h in hs]
        self.w(render_table(["endpoint", "health", "took", "error"], rows))

    def endpoint_status(self, rows: list[tuple[str, pb.StatusResponse]]) -> None:
        hdr = [
            "endpoint",
            "ID",
            "version",
            "db size",
            "is leader",
            "is learner",
            "raft term",
            "raft index",
            "raft applied index",
            "errors",
        ]
        self.w(render_table(hdr, status_rows(rows)))

    def endpoint_hashkv(self, rows: list[tuple[str, pb.HashKVResponse]]) -> None:
        self.w(render_table(["endpoint", "hash"], [[ep, str(r.hash)] for ep, r in rows]))

    def db_status(self, st: dict[str, int]) -> None:
        hdr = ["hash", "revision", "total keys", "total size"]
        self.w(render_table(hdr, [db_status_row(st)]))


_PRINTERS: dict[str, type[Printer]] = {
    "simple": SimplePrinter,
    "json": JSONPrinter,
    "fields": FieldsPrinter,
    "protobuf": ProtobufPrinter,
    "table": TablePrinter,
}


def new_printer(kind: str, *, is_hex: bool = False, out: BinaryIO | None = None) -> Printer | None:
    cls = _PRINTERS.get(kind)
    if cls is None:
        return None
    p = cls(out, is_hex=is_hex)
    # Only the simple printer honours --hex in etcdctl 3.4; json uses it for IDs (as 3.5).
    if kind not in ("simple", "json"):
        p.is_hex = False
    return p


# IDs in JSON, exposed for tests.
JSON_HEX_ID_FIELDS = HEX_ID_FIELDS
