"""The v3lockpb.Lock service (etcd's server/etcdserver/api/v3lock).

Lock blocks until the named lock is held by the request's lease and answers with the
owned key (``<name>/<lease hex>``); Unlock deletes that key. The recipe itself lives in
petcd.server.concurrency and runs in-process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from petcd.api.v3.codec import field_bytes
from petcd.errors import EtcdError
from petcd.proto.v3lockpb import v3lock_pb2
from petcd.server.concurrency import Recipes
from petcd.server.etcdserver import EtcdServer


def _unary(
    fn: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]],
) -> grpc.RpcMethodHandler:
    async def call(raw: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        try:
            return await fn(raw, ctx)
        except EtcdError as e:
            # etcd runs these services over its Go client, which turns a status into a plain
            # error: clients get code Unknown with etcd's message.
            await ctx.abort(grpc.StatusCode.UNKNOWN, e.message)
            raise  # unreachable: abort raises

    return grpc.unary_unary_rpc_method_handler(call)


def _stream_out(
    fn: Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[bytes]],
) -> grpc.RpcMethodHandler:
    async def call(raw: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        try:
            async for chunk in fn(raw, ctx):
                yield chunk
        except EtcdError as e:
            await ctx.abort(grpc.StatusCode.UNKNOWN, e.message)

    return grpc.unary_stream_rpc_method_handler(call)


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
