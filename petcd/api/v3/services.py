"""The v3 gRPC services: KV, Maintenance and Cluster here; Watch, Lease, Lock, Election and
gRPC's Health in their own modules; `all_handlers` registers them all.

Handlers are registered as generic handlers that take and return raw bytes: requests
are parsed once with the C protobuf runtime, and hot responses are assembled by byte
concatenation (header + body) instead of building message objects. Services that later
issues build (Auth, the rest of Cluster) are not registered, so gRPC answers them with
UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from collections.abc import AsyncIterator

import grpc

from petcd import log
from petcd.api.v3.handlers import stream_out, unary
from petcd.cli.flags import FlagValueError, parse_url
from petcd.errors import (
    ErrLearnerNotReady,
    ErrLearnerNotSupported,
    ErrMemberBadURLs,
    ErrMemberNotFound,
    ErrMemberNotLearner,
    ErrNotLeader,
    ErrRequestTooLarge,
)
from petcd.proto.etcdserverpb import rpc_pb2
from petcd.raft.types import ConfChange, ConfChangeType
from petcd.server import apply_kv
from petcd.server.etcdserver import (
    F_ALARM,
    F_COMPACTION,
    F_DELETE_RANGE,
    F_PUT,
    F_TXN,
    SNAPSHOT_RPC_TMP_PREFIX,
    EtcdServer,
)
from petcd.server.ids import member_id
from petcd.server.membership import Member

_log = log.get("v3rpc")

SNAPSHOT_CHUNK = 32 * 1024
# etcd's quota cost of a request: its size plus the bolt overhead of a key.
KV_OVERHEAD = 256

class KVService:
    def __init__(self, srv: EtcdServer) -> None:
        self.srv = srv

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "etcdserverpb.KV",
            {
                "Range": unary(self.range),
                "Put": unary(self.put),
                "DeleteRange": unary(self.delete_range),
                "Txn": unary(self.txn),
                "Compact": unary(self.compact),
            },
        )

    async def range(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        req = rpc_pb2.RangeRequest.FromString(raw)
        if not req.serializable:
            await srv.linearizable_barrier()
        return srv.applier.range_encoded(req, srv.header_bytes())

    def _check_size(self, raw: bytes) -> None:
        if len(raw) > self.srv.max_request_bytes:
            raise ErrRequestTooLarge()

    async def put(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        req = rpc_pb2.PutRequest.FromString(raw)
        if srv.learner:
            raise ErrLearnerNotSupported()
        apply_kv.check_put_request(req)
        self._check_size(raw)
        srv.check_quota(len(raw) + KV_OVERHEAD)
        res = await srv.propose(F_PUT, raw, req)
        return srv.header.header(res.revision, srv.term) + res.resp.SerializeToString()

    async def delete_range(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        req = rpc_pb2.DeleteRangeRequest.FromString(raw)
        if srv.learner:
            raise ErrLearnerNotSupported()
        apply_kv.check_delete_request(req)
        self._check_size(raw)
        res = await srv.propose(F_DELETE_RANGE, raw, req)
        return srv.header.header(res.revision, srv.term) + res.resp.SerializeToString()

    async def txn(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        req = rpc_pb2.TxnRequest.FromString(raw)
        if srv.learner:
            raise ErrLearnerNotSupported()
        apply_kv.check_txn_request(req, srv.max_txn_ops)
        self._check_size(raw)
        if apply_kv.is_txn_readonly(req):
            # etcd serves read-only txns without Raft (after the ReadIndex barrier unless serializable)
            if not apply_kv.is_txn_serializable(req):
                await srv.linearizable_barrier()
            resp = srv.applier.txn(req)
            return srv.header_bytes() + resp.SerializeToString()
        if apply_kv.txn_has_put(req):
            srv.check_quota(len(raw) + KV_OVERHEAD)
        res = await srv.propose(F_TXN, raw, req)
        return srv.header.header(res.revision, srv.term) + res.resp.SerializeToString()

    async def compact(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        req = rpc_pb2.CompactionRequest.FromString(raw)
        if srv.learner:
            raise ErrLearnerNotSupported()
        # The applier compacts synchronously, so `physical` holds once the entry is applied.
        res = await srv.propose(F_COMPACTION, raw, req)
        return srv.header.header(res.revision, srv.term)


class MaintenanceService:
    def __init__(self, srv: EtcdServer) -> None:
        self.srv = srv

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "etcdserverpb.Maintenance",
            {
                "Alarm": unary(self.alarm),
                "Status": unary(self.status),
                "Defragment": unary(self.defragment),
                "Hash": unary(self.hash),
                "HashKV": unary(self.hash_kv),
                "Snapshot": stream_out(self.snapshot),
                "MoveLeader": unary(self.move_leader),
            },
        )

    def _header(self) -> rpc_pb2.ResponseHeader:
        srv = self.srv
        return rpc_pb2.ResponseHeader(
            cluster_id=srv.cluster.cluster_id,
            member_id=srv.id,
            revision=srv.kv.rev,
            raft_term=srv.term,
        )

    async def alarm(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        req = rpc_pb2.AlarmRequest.FromString(raw)
        if req.action == rpc_pb2.AlarmRequest.GET:
            resp = rpc_pb2.AlarmResponse(alarms=srv.alarms.list(req.memberID, req.alarm))
            resp.header.CopyFrom(self._header())
            return resp.SerializeToString()
        res = await srv.propose(F_ALARM, raw, req)
        return srv.header.header(res.revision, srv.term) + res.resp.SerializeToString()

    async def status(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        resp = rpc_pb2.StatusResponse(
            version=srv.version(),
            dbSize=srv.backend.size(),
            leader=srv.lead,
            raftIndex=srv.committed_index,
            raftTerm=srv.term,
            raftAppliedIndex=srv.applied_index,
            errors=[_alarm_string(a) for a in srv.alarms.list()],
            dbSizeInUse=srv.backend.size_in_use(),
            isLearner=srv.learner,
        )
        resp.header.CopyFrom(self._header())
        return resp.SerializeToString()

    async def defragment(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        _log.info("starting defragment")
        # Like etcd, defragmentation blocks this member (the apply loop runs on this thread).
        srv.commit_backend()
        srv.backend.defrag()
        srv.db_size = srv.backend.size()
        _log.info("finished defragment")
        resp = rpc_pb2.DefragmentResponse()
        resp.header.CopyFrom(self._header())
        return resp.SerializeToString()

    async def hash(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        srv.commit_backend()
        resp = rpc_pb2.HashResponse(hash=srv.kv.hash())
        resp.header.CopyFrom(self._header())
        return resp.SerializeToString()

    async def hash_kv(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        req = rpc_pb2.HashKVRequest.FromString(raw)
        h, compact_rev, hash_rev = srv.kv.hash_kv(req.revision)
        resp = rpc_pb2.HashKVResponse(hash=h, compact_revision=compact_rev)
        if hasattr(resp, "hash_revision"):
            resp.hash_revision = hash_rev
        resp.header.CopyFrom(self._header())
        return resp.SerializeToString()

    async def snapshot(self, raw: bytes, ctx) -> AsyncIterator[bytes]:
        srv = self.srv
        loop = asyncio.get_running_loop()
        srv.commit_backend()
        fd, path = tempfile.mkstemp(prefix=SNAPSHOT_RPC_TMP_PREFIX, dir=srv.snap_dir)
        os.close(fd)
        try:
            await loop.run_in_executor(None, srv.backend.snapshot, path)
            total = os.path.getsize(path)
            _log.info("sending database snapshot to client", **{"size-bytes": total})
            header = self._header()
            sha = hashlib.sha256()
            sent = 0
            with open(path, "rb") as f:
                while sent < total:
                    buf = await loop.run_in_executor(None, f.read, SNAPSHOT_CHUNK)
                    if not buf:
                        break
                    sent += len(buf)
                    sha.update(buf)
                    resp = rpc_pb2.SnapshotResponse(
                        header=header, remaining_bytes=total - sent, blob=buf
                    )
                    yield resp.SerializeToString()
            yield rpc_pb2.SnapshotResponse(
                header=header, remaining_bytes=0, blob=sha.digest()
            ).SerializeToString()
            _log.info("sent database snapshot to client", **{"size-bytes": total})
        finally:
            os.unlink(path)

    async def move_leader(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        req = rpc_pb2.MoveLeaderRequest.FromString(raw)
        if not srv.is_leader():
            raise ErrNotLeader()
        await srv.move_leader(req.targetID)
        resp = rpc_pb2.MoveLeaderResponse()
        resp.header.CopyFrom(self._header())
        return resp.SerializeToString()


def _alarm_string(a) -> str:
    # etcd prints AlarmMember in protobuf text form: "memberID:<id> alarm:NOSPACE "
    return f"memberID:{a.memberID} alarm:{rpc_pb2.AlarmType.Name(a.alarm)} "


class ClusterService:
    def __init__(self, srv: EtcdServer) -> None:
        self.srv = srv

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "etcdserverpb.Cluster",
            {
                "MemberList": unary(self.member_list),
                "MemberAdd": unary(self.member_add),
                "MemberRemove": unary(self.member_remove),
                "MemberUpdate": unary(self.member_update),
                "MemberPromote": unary(self.member_promote),
            },
        )

    def _header(self) -> rpc_pb2.ResponseHeader:
        srv = self.srv
        return rpc_pb2.ResponseHeader(
            cluster_id=srv.cluster.cluster_id, member_id=srv.id, raft_term=srv.term
        )

    @staticmethod
    def _members(resp, members: list[Member]) -> None:
        for m in members:
            resp.members.add(
                ID=m.id,
                name=m.name,
                peerURLs=m.peer_urls,
                clientURLs=m.client_urls,
                isLearner=m.is_learner,
            )

    async def member_list(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        req = rpc_pb2.MemberListRequest.FromString(raw)
        if req.linearizable:
            await srv.linearizable_barrier()
        resp = rpc_pb2.MemberListResponse()
        self._members(resp, srv.cluster.member_list())
        resp.header.CopyFrom(self._header())
        return resp.SerializeToString()

    async def member_add(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        req = rpc_pb2.MemberAddRequest.FromString(raw)
        urls = _peer_urls(list(req.peerURLs))
        # etcd: NewMember("", urls, "", now) — the time makes the ID unique
        mid = member_id(urls, "", now=time.time())
        if srv.cfg.strict_reconfig_check and not req.isLearner:
            srv.check_add_voter()
        m = Member(mid, "", urls, [], req.isLearner)
        cc = ConfChange(
            ConfChangeType.ADD_LEARNER_NODE if req.isLearner else ConfChangeType.ADD_NODE,
            mid,
            m.to_json(),
        )
        members = await srv.propose_conf_change(cc)
        resp = rpc_pb2.MemberAddResponse(
            member=rpc_pb2.Member(ID=mid, peerURLs=urls, isLearner=req.isLearner)
        )
        self._members(resp, members)
        resp.header.CopyFrom(self._header())
        return resp.SerializeToString()

    async def member_remove(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        req = rpc_pb2.MemberRemoveRequest.FromString(raw)
        if srv.cfg.strict_reconfig_check:
            srv.check_remove_member(req.ID)
        members = await srv.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, req.ID))
        resp = rpc_pb2.MemberRemoveResponse()
        self._members(resp, members)
        resp.header.CopyFrom(self._header())
        return resp.SerializeToString()

    async def member_update(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        req = rpc_pb2.MemberUpdateRequest.FromString(raw)
        urls = _peer_urls(list(req.peerURLs))
        m = Member(req.ID, "", urls, [])
        members = await srv.propose_conf_change(
            ConfChange(ConfChangeType.UPDATE_NODE, req.ID, m.to_json())
        )
        resp = rpc_pb2.MemberUpdateResponse()
        self._members(resp, members)
        resp.header.CopyFrom(self._header())
        return resp.SerializeToString()

    async def member_promote(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        req = rpc_pb2.MemberPromoteRequest.FromString(raw)
        if not srv.is_leader():
            # Only the leader knows whether the learner has caught up: ask it (etcd
            # forwards over the peer URLs; we use the leader's client URLs).
            return await srv.forwarder.unary("/etcdserverpb.Cluster/MemberPromote", raw)
        cur = srv.cluster.members.get(req.ID)
        if cur is not None and cur.is_learner and not srv.learner_in_sync(req.ID):
            raise ErrLearnerNotReady()
        if cur is None:
            raise ErrMemberNotFound()
        if not cur.is_learner:
            raise ErrMemberNotLearner()
        m = Member(cur.id, cur.name, list(cur.peer_urls), [], False)
        members = await srv.propose_conf_change(
            ConfChange(ConfChangeType.ADD_NODE, req.ID, m.to_json())
        )
        resp = rpc_pb2.MemberPromoteResponse()
        self._members(resp, members)
        resp.header.CopyFrom(self._header())
        return resp.SerializeToString()


def _peer_urls(raw: list[str]) -> list[str]:
    """etcd's types.NewURLs over a request's peer URLs: validated and sorted."""
    try:
        urls = sorted(parse_url(u).text for u in raw)
    except FlagValueError:
        raise ErrMemberBadURLs() from None
    if not urls:
        raise ErrMemberBadURLs()
    return urls


def all_handlers(srv: EtcdServer) -> list[grpc.GenericRpcHandler]:
    from petcd.api.v3.election import ElectionService
    from petcd.api.v3.health import HealthService
    from petcd.api.v3.lease import LeaseService
    from petcd.api.v3.lock import LockService
    from petcd.api.v3.watch import WatchService
    from petcd.server.concurrency import Recipes

    return [
        KVService(srv).handlers(),
        MaintenanceService(srv).handlers(),
        ClusterService(srv).handlers(),
        WatchService(srv).handlers(),
        LeaseService(srv).handlers(),
        LockService(srv, recipes := Recipes(srv)).handlers(),
        ElectionService(srv, recipes).handlers(),
        HealthService().handlers(),
    ]
