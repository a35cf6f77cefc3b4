"""The v3electionpb.Election service (etcd's server/etcdserver/api/v3election).

Campaign blocks until the lease's key (``<name>/<lease hex>``) is the oldest under the
election's prefix; Proclaim, Resign and Leader act on the current leader; Observe streams
leader changes. The recipes live in petcd.server.concurrency and run in-process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from petcd.api.v3.codec import field_bytes
from petcd.api.v3.lock import _stream_out, _unary
from petcd.proto.v3electionpb import v3election_pb2 as epb
from petcd.server.concurrency import ErrMissingLeaderKey, Recipes
from petcd.server.etcdserver import EtcdServer


class ElectionService:
    def __init__(self, srv: EtcdServer, recipes: Recipes | None = None) -> None:
        self.srv = srv
        self.recipes = recipes or Recipes(srv)

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "v3electionpb.Election",
            {
                "Campaign": _unary(self.campaign),
                "Proclaim": _unary(self.proclaim),
                "Leader": _unary(self.leader),
                "Observe": _stream_out(self.observe),
                "Resign": _unary(self.resign),
            },
        )

    def _header(self, rev: int) -> bytes:
        return self.srv.header.header(rev, self.srv.term)

    async def campaign(self, raw: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        req = epb.CampaignRequest.FromString(raw)
        key, rev, lease, hdr_rev = await self.recipes.campaign(req.name, req.lease, req.value)
        lk = epb.LeaderKey(name=req.name, key=key, rev=rev, lease=lease)
        return self._header(hdr_rev) + field_bytes(2, lk.SerializeToString())

    async def proclaim(self, raw: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        req = epb.ProclaimRequest.FromString(raw)
        if not req.HasField("leader"):
            raise ErrMissingLeaderKey()
        lk = req.leader
        return self._header(await self.recipes.proclaim(lk.key, lk.rev, lk.lease, req.value))

    async def resign(self, raw: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        req = epb.ResignRequest.FromString(raw)
        if not req.HasField("leader"):
            raise ErrMissingLeaderKey()
        lk = req.leader
        # etcd builds a session for the request's lease first: lease 0 grants one.
        await self.recipes.session_lease(lk.lease)
        return self._header(await self.recipes.resign(lk.key, lk.rev))

    async def leader(self, raw: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        req = epb.LeaderRequest.FromString(raw)
        kv, rev = await self.recipes.leader(req.name)
        return self._header(rev) + field_bytes(2, kv.SerializeToString())

    async def observe(self, raw: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        req = epb.LeaderRequest.FromString(raw)
        async for kv, rev in self.recipes.observe(req.name):
            yield self._header(rev) + field_bytes(2, kv)


__all__ = ["ElectionService"]
