"""Wrappers that turn raw-bytes coroutines into gRPC method handlers with etcd's errors.

An EtcdError raised by a handler becomes a gRPC status with etcd's exact message, under
its own code, or under `code` when given (the Lock and Election services answer every
error as Unknown, because etcd serves them through its Go client).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from petcd.errors import EtcdError

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]
StreamHandler = Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[bytes]]


def unary(fn: Handler, code: grpc.StatusCode | None = None) -> grpc.RpcMethodHandler:
    async def call(raw: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        try:
            return await fn(raw, ctx)
        except EtcdError as e:
            await ctx.abort(code or e.code, e.message)
            raise  # unreachable: abort raises

    return grpc.unary_unary_rpc_method_handler(call)


def stream_out(fn: StreamHandler, code: grpc.StatusCode | None = None) -> grpc.RpcMethodHandler:
    async def call(raw: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        try:
            async for chunk in fn(raw, ctx):
                yield chunk
        except EtcdError as e:
            await ctx.abort(code or e.code, e.message)

    return grpc.unary_stream_rpc_method_handler(call)
