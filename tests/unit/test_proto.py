"""Pin petcd's protobuf schema to etcd 3.5's wire format.

The hand-picked tests run everywhere; the exhaustive test re-parses etcd's own .proto
files from the local mirror and compares every message, enum and service with ours.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor

from petcd.proto.authpb import auth_pb2
from petcd.proto.etcdserverpb import raft_internal_pb2, rpc_pb2, rpc_pb2_grpc
from petcd.proto.leasepb import lease_pb2
from petcd.proto.membershippb import membership_pb2
from petcd.proto.mvccpb import kv_pb2
from petcd.proto.v3electionpb import v3election_pb2, v3election_pb2_grpc
from petcd.proto.v3lockpb import v3lock_pb2, v3lock_pb2_grpc


def is_repeated(fd: FieldDescriptor) -> bool:
    # protobuf 7 dropped FieldDescriptor.label in favour of is_repeated.
    if hasattr(fd, "is_repeated"):
        return bool(fd.is_repeated)
    return fd.label == FieldDescriptor.LABEL_REPEATED


def numbers(msg: type) -> dict[str, int]:
    return {f.name: f.number for f in msg.DESCRIPTOR.fields}


# --------------------------------------------------------------------------- pinned


def test_keyvalue_fields() -> None:
    assert numbers(kv_pb2.KeyValue) == {
        "key": 1,
        "create_revision": 2,
        "mod_revision": 3,
        "version": 4,
        "value": 5,
        "lease": 6,
    }
    assert numbers(kv_pb2.Event) == {"type": 1, "kv": 2, "prev_kv": 3}
    assert kv_pb2.Event.PUT == 0 and kv_pb2.Event.DELETE == 1


def test_response_header() -> None:
    assert numbers(rpc_pb2.ResponseHeader) == {
        "cluster_id": 1,
        "member_id": 2,
        "revision": 3,
        "raft_term": 4,
    }
    d = rpc_pb2.ResponseHeader.DESCRIPTOR.fields_by_name
    assert d["cluster_id"].type == FieldDescriptor.TYPE_UINT64
    assert d["revision"].type == FieldDescriptor.TYPE_INT64


def test_range_request_fields() -> None:
    names = [
        "key",
        "range_end",
        "limit",
        "revision",
        "sort_order",
        "sort_target",
        "serializable",
        "keys_only",
        "count_only",
        "min_mod_revision",
        "max_mod_revision",
        "min_create_revision",
        "max_create_revision",
    ]
    assert numbers(rpc_pb2.RangeRequest) == {n: i for i, n in enumerate(names, 1)}
    assert rpc_pb2.RangeRequest.DESCEND == 2 and rpc_pb2.RangeRequest.VALUE == 4


def test_compare_oneof_and_range_end() -> None:
    d = rpc_pb2.Compare.DESCRIPTOR
    union = d.oneofs_by_name["target_union"]
    assert {f.name: f.number for f in union.fields} == {
        "version": 4,
        "create_revision": 5,
        "mod_revision": 6,
        "value": 7,
        "lease": 8,
    }
    assert d.fields_by_name["range_end"].number == 64
    assert d.fields_by_name["range_end"].containing_oneof is None
    assert rpc_pb2.Compare.NOT_EQUAL == 3 and rpc_pb2.Compare.LEASE == 4


def test_request_response_op_oneofs() -> None:
    req = rpc_pb2.RequestOp.DESCRIPTOR.oneofs_by_name["request"]
    assert {f.name: f.number for f in req.fields} == {
        "request_range": 1,
        "request_put": 2,
        "request_delete_range": 3,
        "request_txn": 4,
    }
    resp = rpc_pb2.ResponseOp.DESCRIPTOR.oneofs_by_name["response"]
    assert {f.name: f.number for f in resp.fields} == {
        "response_range": 1,
        "response_put": 2,
        "response_delete_range": 3,
        "response_txn": 4,
    }


def test_status_response_fields() -> None:
    assert numbers(rpc_pb2.StatusResponse) == {
        "header": 1,
        "version": 2,
        "dbSize": 3,
        "leader": 4,
        "raftIndex": 5,
        "raftTerm": 6,
        "raftAppliedIndex": 7,
        "errors": 8,
        "dbSizeInUse": 9,
        "isLearner": 10,
    }


def test_watch_and_internal_raft_request() -> None:
    assert numbers(rpc_pb2.WatchResponse)["events"] == 11
    assert is_repeated(rpc_pb2.WatchCreateRequest.DESCRIPTOR.fields_by_name["filters"])
    irr = numbers(raft_internal_pb2.InternalRaftRequest)
    assert irr["header"] == 100 and irr["ID"] == 1 and irr["txn"] == 6
    assert irr["auth_enable"] == 1000 and irr["authenticate"] == 1012
    assert irr["downgrade_info_set"] == 1302
    assert "v2" not in irr  # v2 API dropped; its tag stays reserved


def test_golden_bytes() -> None:
    # Byte strings as etcd's Go code emits them (ascending tag order, proto3 defaults omitted).
    put = rpc_pb2.PutRequest(key=b"foo", value=b"bar", lease=0x1234)
    assert put.SerializeToString() == b"\n\x03foo\x12\x03bar\x18\xb4\x24"
    kv = kv_pb2.KeyValue(key=b"k", create_revision=2, mod_revision=3, version=1, value=b"v")
    assert kv.SerializeToString() == b"\n\x01k\x10\x02\x18\x03 \x01*\x01v"
    cmp = rpc_pb2.Compare(key=b"k", target=rpc_pb2.Compare.MOD, mod_revision=0, range_end=b"\x00")
    # A oneof member set to its default is still written (presence is tracked).
    assert cmp.SerializeToString() == b"\x10\x02\x1a\x01k0\x00\x82\x04\x01\x00"


class _RecordingChannel:
    """Stands in for grpc.Channel: records how each stub method was registered."""

    def __init__(self) -> None:
        self.methods: dict[str, str] = {}

    def _reg(self, kind: str) -> Callable[..., object]:
        def register(path: str, *args: object, **kwargs: object) -> object:
            self.methods[path] = kind
            return object()

        return register

    def __getattr__(self, kind: str) -> Callable[..., object]:
        if kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            return self._reg(kind)
        raise AttributeError(kind)


def _stub_methods(*stubs: type) -> dict[str, str]:
    ch = _RecordingChannel()
    for stub in stubs:
        stub(ch)
    return ch.methods


def test_full_method_names_and_streaming() -> None:
    m = _stub_methods(
        rpc_pb2_grpc.KVStub,
        rpc_pb2_grpc.WatchStub,
        rpc_pb2_grpc.LeaseStub,
        rpc_pb2_grpc.ClusterStub,
        rpc_pb2_grpc.MaintenanceStub,
        rpc_pb2_grpc.AuthStub,
        v3lock_pb2_grpc.LockStub,
        v3election_pb2_grpc.ElectionStub,
    )
    assert m["/etcdserverpb.KV/Range"] == "unary_unary"
    assert m["/etcdserverpb.KV/Txn"] == "unary_unary"
    assert m["/etcdserverpb.Watch/Watch"] == "stream_stream"
    assert m["/etcdserverpb.Lease/LeaseKeepAlive"] == "stream_stream"
    assert m["/etcdserverpb.Maintenance/Snapshot"] == "unary_stream"
    assert m["/etcdserverpb.Maintenance/Downgrade"] == "unary_unary"
    assert m["/etcdserverpb.Auth/UserChangePassword"] == "unary_unary"
    assert m["/etcdserverpb.Cluster/MemberPromote"] == "unary_unary"
    assert m["/v3lockpb.Lock/Lock"] == "unary_unary"
    assert m["/v3lockpb.Lock/Unlock"] == "unary_unary"
    assert m["/v3electionpb.Election/Observe"] == "unary_stream"
    assert len(m) == 5 + 1 + 5 + 5 + 8 + 17 + 2 + 5


def test_packages() -> None:
    expected = {
        kv_pb2: "mvccpb",
        auth_pb2: "authpb",
        rpc_pb2: "etcdserverpb",
        raft_internal_pb2: "etcdserverpb",
        membership_pb2: "membershippb",
        lease_pb2: "leasepb",
        v3lock_pb2: "v3lockpb",
        v3election_pb2: "v3electionpb",
    }
    for mod, pkg in expected.items():
        assert mod.DESCRIPTOR.package == pkg
        proto = descriptor_pb2.FileDescriptorProto()
        mod.DESCRIPTOR.CopyToProto(proto)
        assert proto.syntax == "proto3"
        assert proto.name.startswith("petcd/proto/")


# ------------------------------------------------------- exhaustive vs. etcd sources

MIRROR = Path("/work/.mirror/etcd-io+etcd/repo")
TAG = "v3.5.9"
UPSTREAM: dict[str, FileDescriptor] = {
    "api/mvccpb/kv.proto": kv_pb2.DESCRIPTOR,
    "api/authpb/auth.proto": auth_pb2.DESCRIPTOR,
    "api/etcdserverpb/rpc.proto": rpc_pb2.DESCRIPTOR,
    "api/etcdserverpb/raft_internal.proto": raft_internal_pb2.DESCRIPTOR,
    "api/membershippb/membership.proto": membership_pb2.DESCRIPTOR,
    "server/lease/leasepb/lease.proto": lease_pb2.DESCRIPTOR,
    "server/etcdserver/api/v3lock/v3lockpb/v3lock.proto": v3lock_pb2.DESCRIPTOR,
    "server/etcdserver/api/v3election/v3electionpb/v3election.proto": v3election_pb2.DESCRIPTOR,
}
# Deliberate deviations: the v2 Request is not part of petcd (tag 2 is reserved instead).
DROPPED_FIELDS = {("InternalRaftRequest", "v2")}

SCALARS = {
    "double": FieldDescriptor.TYPE_DOUBLE,
    "float": FieldDescriptor.TYPE_FLOAT,
    "int64": FieldDescriptor.TYPE_INT64,
    "uint64": FieldDescriptor.TYPE_UINT64,
    "int32": FieldDescriptor.TYPE_INT32,
    "fixed64": FieldDescriptor.TYPE_FIXED64,
    "fixed32": FieldDescriptor.TYPE_FIXED32,
    "bool": FieldDescriptor.TYPE_BOOL,
    "string": FieldDescriptor.TYPE_STRING,
    "bytes": FieldDescriptor.TYPE_BYTES,
    "uint32": FieldDescriptor.TYPE_UINT32,
    "sfixed32": FieldDescriptor.TYPE_SFIXED32,
    "sfixed64": FieldDescriptor.TYPE_SFIXED64,
    "sint32": FieldDescriptor.TYPE_SINT32,
    "sint64": FieldDescriptor.TYPE_SINT64,
}


@dataclass
class PField:
    name: str
    number: int
    type: str
    repeated: bool
    oneof: str | None


@dataclass
class PMessage:
    name: str
    fields: list[PField] = field(default_factory=list)
    nested: list[PMessage] = field(default_factory=list)
    enums: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class PFile:
    package: str = ""
    messages: list[PMessage] = field(default_factory=list)
    enums: dict[str, dict[str, int]] = field(default_factory=dict)
    # service -> method -> (input, output, client_streaming, server_streaming)
    services: dict[str, dict[str, tuple[str, str, bool, bool]]] = field(default_factory=dict)


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[A-Za-z_][\w.]*|-?\d+|\S')


class _Parser:
    """A parser for the proto3 subset etcd uses; options are skipped, not interpreted."""

    def __init__(self, text: str) -> None:
        text = re.sub(r"//[^\n]*|/\*.*?\*/", " ", text, flags=re.S)
        self.toks = _TOKEN.findall(text)
        self.i = 0

    def peek(self) -> str:
        return self.toks[self.i]

    def next(self) -> str:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, tok: str) -> None:
        got = self.next()
        assert got == tok, f"expected {tok!r}, got {got!r}"

    def skip_statement(self) -> None:
        depth = 0
        while True:
            tok = self.next()
            if tok in "{[(":
                depth += 1
            elif tok in "}])":
                depth -= 1
                if depth == 0 and tok == "}":
                    return
            elif tok == ";" and depth == 0:
                return

    def parse_file(self) -> PFile:
        f = PFile()
        while self.i < len(self.toks):
            tok = self.next()
            if tok == "package":
                f.package = self.next()
                self.expect(";")
            elif tok == "message":
                f.messages.append(self.parse_message())
            elif tok == "enum":
                name, values = self.parse_enum()
                f.enums[name] = values
            elif tok == "service":
                name = self.next()
                f.services[name] = self.parse_service()
            elif tok == ";":
                continue
            else:  # syntax, import, option
                self.skip_statement()
        return f

    def parse_enum(self) -> tuple[str, dict[str, int]]:
        name = self.next()
        self.expect("{")
        values: dict[str, int] = {}
        while (tok := self.next()) != "}":
            if tok == "option":
                self.skip_statement()
                continue
            self.expect("=")
            values[tok] = int(self.next())
            if self.peek() == "[":
                self.skip_statement()
            else:
                self.expect(";")
        return name, values

    def parse_field(self, first: str, oneof: str | None) -> PField:
        repeated = first == "repeated"
        typ = self.next() if repeated else first
        name = self.next()
        self.expect("=")
        number = int(self.next())
        if self.peek() == "[":
            self.skip_statement()
        else:
            self.expect(";")
        return PField(name, number, typ, repeated, oneof)

    def parse_message(self) -> PMessage:
        msg = PMessage(self.next())
        self.expect("{")
        while (tok := self.next()) != "}":
            if tok == "message":
                msg.nested.append(self.parse_message())
            elif tok == "enum":
                name, values = self.parse_enum()
                msg.enums[name] = values
            elif tok == "oneof":
                oneof = self.next()
                self.expect("{")
                while (t := self.next()) != "}":
                    msg.fields.append(self.parse_field(t, oneof))
            elif tok in ("option", "reserved"):
                self.skip_statement()
            elif tok == ";":
                continue
            else:
                msg.fields.append(self.parse_field(tok, None))
        return msg

    def parse_service(self) -> dict[str, tuple[str, str, bool, bool]]:
        methods: dict[str, tuple[str, str, bool, bool]] = {}
        self.expect("{")
        while (tok := self.next()) != "}":
            if tok != "rpc":
                self.skip_statement()
                continue
            name = self.next()
            self.expect("(")
            cs = self.peek() == "stream"
            if cs:
                self.next()
            inp = self.next()
            self.expect(")")
            self.expect("returns")
            self.expect("(")
            ss = self.peek() == "stream"
            if ss:
                self.next()
            out = self.next()
            self.expect(")")
            if self.peek() == "{":  # option block, e.g. google.api.http
                self.skip_statement()
            else:
                self.expect(";")
            methods[name] = (inp, out, cs, ss)
        return methods


def _upstream(path: str) -> str:
    git = shutil.which("git")
    if git is None or not MIRROR.is_dir():
        pytest.skip(f"etcd mirror not available at {MIRROR} (or git missing)")
    res = subprocess.run(
        [git, "-C", str(MIRROR), "show", f"{TAG}:{path}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if res.returncode != 0:
        pytest.skip(f"{TAG}:{path} not in etcd mirror: {res.stderr.strip()}")
    return res.stdout


def _type_matches(upstream: str, fd: FieldDescriptor) -> bool:
    if upstream in SCALARS:
        return fd.type == SCALARS[upstream]
    target = fd.message_type or fd.enum_type
    return target is not None and _name_matches(upstream, target.full_name)


def _name_matches(upstream: str, full_name: str) -> bool:
    # Upstream names are relative ("KeyValue", "EventType") or package-qualified.
    return full_name == upstream or full_name.endswith("." + upstream)


def _compare_enums(where: str, ours: dict[str, object], theirs: dict[str, dict[str, int]]) -> None:
    assert set(ours) == set(theirs), f"{where}: enum set differs"
    for name, values in theirs.items():
        ed = ours[name]
        assert {v.name: v.number for v in ed.values} == values, f"{where}.{name}"  # type: ignore[attr-defined]


def _compare_message(pm: PMessage, md: Descriptor) -> None:
    where = md.full_name
    expected = [f for f in pm.fields if (pm.name, f.name) not in DROPPED_FIELDS]
    assert {f.name: f.number for f in md.fields} == {f.name: f.number for f in expected}, where
    for pf in expected:
        fd = md.fields_by_name[pf.name]
        assert _type_matches(pf.type, fd), f"{where}.{pf.name}: {pf.type} vs {fd.type}"
        assert is_repeated(fd) == pf.repeated, f"{where}.{pf.name}"
        oneof = fd.containing_oneof.name if fd.containing_oneof else None
        assert oneof == pf.oneof, f"{where}.{pf.name}: oneof {oneof} vs {pf.oneof}"
    assert {m.name for m in md.nested_types} == {m.name for m in pm.nested}, where
    for nested in pm.nested:
        _compare_message(nested, md.nested_types_by_name[nested.name])
    _compare_enums(where, dict(md.enum_types_by_name), pm.enums)


@pytest.mark.parametrize("path", sorted(UPSTREAM))
def test_exhaustive_against_etcd_source(path: str) -> None:
    pf = _Parser(_upstream(path)).parse_file()
    fdesc = UPSTREAM[path]
    assert fdesc.package == pf.package
    assert set(fdesc.message_types_by_name) == {m.name for m in pf.messages}
    assert pf.messages, "parser found no messages"
    for pm in pf.messages:
        _compare_message(pm, fdesc.message_types_by_name[pm.name])
    _compare_enums(fdesc.package, dict(fdesc.enum_types_by_name), pf.enums)
    assert set(fdesc.services_by_name) == set(pf.services)
    for sname, methods in pf.services.items():
        sd = fdesc.services_by_name[sname]
        assert set(sd.methods_by_name) == set(methods), sname
        for mname, (inp, out, cs, ss) in methods.items():
            md = sd.methods_by_name[mname]
            where = f"/{sd.full_name}/{mname}"
            assert _name_matches(inp, md.input_type.full_name), where
            assert _name_matches(out, md.output_type.full_name), where
            assert (md.client_streaming, md.server_streaming) == (cs, ss), where


def test_exhaustive_check_detects_drift() -> None:
    # Guards the guard: a renumbered or retyped field in the upstream text must be caught.
    text = _upstream("api/mvccpb/kv.proto")
    for bad in (
        text.replace("int64 lease = 6;", "int64 lease = 7;"),
        text.replace("int64 lease = 6;", "uint64 lease = 6;"),
        text.replace("bytes key = 1;", "repeated bytes key = 1;"),
    ):
        assert bad != text
        kv = next(m for m in _Parser(bad).parse_file().messages if m.name == "KeyValue")
        with pytest.raises(AssertionError):
            _compare_message(kv, kv_pb2.KeyValue.DESCRIPTOR)
