#!/usr/bin/env python3
"""A grpc.aio server that does no work of its own: the ceiling petcd's API layer runs under.

    python3 scripts/grpc_ceiling.py [--port 42379] [--fsync] [--sync-server]

Serves etcd's KV/Put (a constant PutResponse, after a write + fdatasync of the request with
--fsync) and Watch/Watch (each Put fans one pre-encoded WatchResponse out to every watcher
of every stream, as a server with one key watched would). Drive it with the bench kit's
loadgen exactly as a real server, e.g.:

    loadgen --endpoints=127.0.0.1:42379 --conns=1 --clients=1 put --total=6000 ...
    loadgen --endpoints=127.0.0.1:42379 --conns=10 --clients=1000 watch-latency --put-rate=100

A benchmark aid, not a test. Session 3 measured on the 2-core machine: unary put at 1 client
2,700-2,900/s (1,850-2,030/s with --fsync; the sync server 3,200/s); 20-25k watch messages/s
with the loop thread at 100% CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import tempfile
from concurrent import futures

import grpc

from petcd.proto.etcdserverpb import rpc_pb2
from petcd.proto.mvccpb.kv_pb2 import KeyValue


def _header(rev: int) -> rpc_pb2.ResponseHeader:
    return rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, revision=rev, raft_term=2)


class Ceiling:
    def __init__(self, fsync: bool) -> None:
        self.rev = 1
        self.streams: dict[int, tuple[collections.deque, asyncio.Event, list[int]]] = {}
        self.fd = -1
        if fsync:
            self.fd, path = tempfile.mkstemp(prefix="grpc-ceiling-")
            os.unlink(path)  # the open descriptor keeps it until exit
            os.posix_fallocate(self.fd, 0, 64 << 20)

    def put_sync(self, raw: bytes, ctx) -> bytes:
        if self.fd >= 0:
            os.write(self.fd, raw)
            os.fdatasync(self.fd)
        req = rpc_pb2.PutRequest.FromString(raw)
        self.rev += 1
        kv = KeyValue(key=req.key, value=req.value, create_revision=2, mod_revision=self.rev,
                      version=self.rev - 1)
        if self.streams:
            head = rpc_pb2.WatchResponse(header=_header(self.rev)).SerializeToString()
            body = rpc_pb2.WatchResponse(events=[{"kv": kv}]).SerializeToString()
            for q, ev, ids in self.streams.values():
                for wid in ids:
                    q.append(head + rpc_pb2.WatchResponse(watch_id=wid).SerializeToString() + body)
                ev.set()
        return rpc_pb2.PutResponse(header=_header(self.rev)).SerializeToString()

    async def put(self, raw: bytes, ctx) -> bytes:
        return self.put_sync(raw, ctx)

    async def watch(self, requests, ctx):
        q: collections.deque[bytes] = collections.deque()
        ev = asyncio.Event()
        ids: list[int] = []

        async def read() -> None:
            async for _raw in requests:  # every request is taken as a create
                ids.append(len(ids))
                q.append(rpc_pb2.WatchResponse(header=_header(self.rev), watch_id=ids[-1],
                                               created=True).SerializeToString())
                ev.set()

        reader = asyncio.get_running_loop().create_task(read())
        key = id(q)
        self.streams[key] = (q, ev, ids)
        try:
            while True:
                while q:
                    yield q.popleft()
                ev.clear()
                if not q:
                    await ev.wait()
        finally:
            del self.streams[key]
            reader.cancel()


def _handlers(c: Ceiling, sync: bool) -> list[grpc.GenericRpcHandler]:
    put = c.put_sync if sync else c.put
    hs = [grpc.method_handlers_generic_handler(
        "etcdserverpb.KV", {"Put": grpc.unary_unary_rpc_method_handler(put)})]
    if not sync:
        hs.append(grpc.method_handlers_generic_handler(
            "etcdserverpb.Watch", {"Watch": grpc.stream_stream_rpc_method_handler(c.watch)}))
    return hs


async def _serve_aio(port: int, c: Ceiling) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(_handlers(c, False))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=42379)
    ap.add_argument("--fsync", action="store_true", help="write + fdatasync each Put")
    ap.add_argument("--sync-server", action="store_true", help="grpc.server, Put only")
    args = ap.parse_args()
    c = Ceiling(args.fsync)
    if args.sync_server:
        server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers(_handlers(c, True))
        server.add_insecure_port(f"127.0.0.1:{args.port}")
        server.start()
        server.wait_for_termination()
        return
    try:
        import uvloop

        uvloop.run(_serve_aio(args.port, c))
    except ImportError:
        asyncio.run(_serve_aio(args.port, c))


if __name__ == "__main__":
    main()
