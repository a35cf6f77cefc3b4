"""The v3 Lease gRPC service (etcd's v3rpc/lease.go and the lease half of v3_server.go).

Grant and Revoke go through Raft; KeepAlive, TimeToLive and Leases are answered by the
leader's lessor without Raft, as etcd does. Handlers take and return raw bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from petcd import log
from petcd.api.v3.codec import field_varint
from petcd.api.v3.handlers import unary
from petcd.errors import (
    ErrLearnerNotSupported,
    ErrLeaseNotFound,
    ErrNoLeader,
    ErrTimeout,
    EtcdError,
)
from petcd.lease.lessor import FOREVER
from petcd.proto.etcdserverpb import rpc_pb2
from petcd.server.etcdserver import F_LEASE_GRANT, F_LEASE_REVOKE, EtcdServer

_log = log.get("v3rpc")

# etcd's quota cost of a LeaseGrant.
LEASE_OVERHEAD = 64
_ID_MASK = (1 << 63) - 1
_FOREVER_SECONDS = _ID_MASK // 1_000_000_000

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


class LeaseService:
    def __init__(self, srv: EtcdServer) -> None:
        self.srv = srv

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "etcdserverpb.Lease",
            {
                "LeaseGrant": unary(self.grant),
                "LeaseRevoke": unary(self.revoke),
                "LeaseKeepAlive": grpc.stream_stream_rpc_method_handler(self.keep_alive),
                "LeaseTimeToLive": unary(self.time_to_live),
                "LeaseLeases": unary(self.leases),
            },
        )

    def _is_primary(self) -> bool:
        """Whether this member answers renewals and TTLs itself; followers forward them."""
        srv = self.srv
        if srv.learner:
            raise ErrLearnerNotSupported()
        if srv.lead == 0:
            raise ErrNoLeader()
        return srv.lessor.primary and srv.is_leader()

    async def grant(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        req = rpc_pb2.LeaseGrantRequest.FromString(raw)
        if srv.learner:
            raise ErrLearnerNotSupported()
        srv.check_quota(LEASE_OVERHEAD)
        # etcd derives a server-chosen ID from the request ID generator (positive int64).
        while req.ID == 0:
            req.ID = srv.new_lease_id()
        res = await srv.propose(F_LEASE_GRANT, req.SerializeToString(), req)
        return srv.header.header(res.revision, srv.term) + res.resp.SerializeToString()

    async def revoke(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        req = rpc_pb2.LeaseRevokeRequest.FromString(raw)
        if srv.learner:
            raise ErrLearnerNotSupported()
        res = await srv.propose(F_LEASE_REVOKE, raw, req)
        return srv.header.header(res.revision, srv.term)

    async def renew(self, lease_id: int) -> int:
        """The new TTL of a renewed lease; 0 when it does not exist (or just expired)."""
        srv = self.srv
        if not self._is_primary():
            return await srv.forwarder.lease_renew(lease_id)
        lessor = srv.lessor
        if lessor.checkpointing and lessor.needs_clear(lease_id):
            # etcd clears a checkpointed remaining TTL through Raft before renewing, so that
            # a later leader does not resurrect it.
            await lessor.clear_checkpoint(lease_id)
        try:
            ttl = lessor.renew(lease_id)
        except ErrLeaseNotFound:
            return 0
        if ttl is None:
            # Expired, revoke pending: answer once the revoke is applied (etcd waits too).
            try:
                await lessor.wait_revoked(lease_id, srv.request_timeout_s)
            except TimeoutError:
                raise ErrTimeout() from None
            return 0
        return ttl

    async def keep_alive(
        self, requests: AsyncIterator[bytes], ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        srv = self.srv
        try:
            async for raw in requests:
                req = rpc_pb2.LeaseKeepAliveRequest.FromString(raw)
                # The header is taken before renewing: a client never sees a keep-alive
                # succeed at a revision after the lease's revoke.
                header = srv.header_bytes()
                ttl = await self.renew(req.ID)
                body = header
                if req.ID:
                    body += field_varint(2, req.ID)
                if ttl:
                    body += field_varint(3, ttl)
                yield body
        except EtcdError as e:
            await ctx.abort(e.code, e.message)

    async def time_to_live(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        req = rpc_pb2.LeaseTimeToLiveRequest.FromString(raw)
        if not self._is_primary():
            return await srv.forwarder.unary("/etcdserverpb.Lease/LeaseTimeToLive", raw)
        lease = srv.lessor.lookup(req.ID)
        if lease is None:
            resp = rpc_pb2.LeaseTimeToLiveResponse(ID=req.ID, TTL=-1)
        else:
            rem = srv.lessor.remaining(lease)
            # Go truncates the remaining duration's seconds toward zero; "forever" is
            # the largest Duration.
            ttl = int(rem) if rem != FOREVER else _FOREVER_SECONDS
            resp = rpc_pb2.LeaseTimeToLiveResponse(ID=req.ID, TTL=ttl, grantedTTL=lease.ttl)
            if req.keys:
                resp.keys.extend(lease.sorted_keys())
        return srv.header_bytes() + resp.SerializeToString()

    async def leases(self, raw: bytes, ctx) -> bytes:
        srv = self.srv
        resp = rpc_pb2.LeaseLeasesResponse()
        for lease in srv.lessor.sorted_leases():
            resp.leases.add(ID=lease.id)
        return srv.header_bytes() + resp.SerializeToString()
