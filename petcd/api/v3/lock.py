"""The v3lockpb.Lock service (etcd's server/etcdserver/api/v3lock).

Lock blocks until the named lock is held by the request's lease and answers with the
owned key (``<name>/<lease hex>``); Unlock deletes that key. The recipe itself lives in
petcd.server.concurrency and runs in-process.
"""

from __future__ import annotations

import grpc

from petcd.api.v3.codec import field_bytes
from petcd.api.v3.handlers import stream_out, unary
from petcd.proto.v3lockpb import v3lock_pb2
from petcd.server.concurrency import Recipes
from petcd.server.etcdserver import EtcdServer


def _unary(fn) -> grpc.RpcMethodHandler:
    # etcd runs these services over its Go client, which turns a status into a plain error:
    # clients get code Unknown with etcd's message.
    return unary(fn, grpc.StatusCode.UNKNOWN)


def _stream_out(fn) -> grpc.RpcMethodHandler:
    return stream_out(fn, grpc.StatusCode.UNKNOWN)


class LockService:
    def __init__(self, srv: EtcdServer, recipes: Recipes | None = None) -> None:
        self.srv = srv
        self.recipes = recipes or Recipes(srv)

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "v3lockpb.Lock", {"Lock": _unary(self.lock), "Unlock": _unary(self.unlock)}
        )

    def _header(self, rev: int) -> bytes:
        return self.srv.header.header(rev, self.srv.term)

    async def lock(self, raw: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        req = v3lock_pb2.LockRequest.FromString(raw)
        key, rev = await self.recipes.lock(req.name, req.lease)
        return self._header(rev) + field_bytes(2, key)

    async def unlock(self, raw: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        req = v3lock_pb2.UnlockRequest.FromString(raw)
        return self._header(await self.recipes.unlock(req.key))


__all__ = ["LockService"]
