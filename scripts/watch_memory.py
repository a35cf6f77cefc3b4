#!/usr/bin/env python3
"""Server memory per watcher: start a server, open N watchers on one key range, compare RSS.

    python3 scripts/watch_memory.py [--server petcd|etcd] [--watchers 100000] [--streams 10]

Prints the server's RSS before and after and the bytes per watcher. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from harness import ETCD, ServerProcess  # noqa: E402

from petcd.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc  # noqa: E402


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def open_watchers(endpoint: str, n: int, streams: int) -> list:
    per = n // streams
    channels, calls = [], []
    for _ in range(streams):
        ch = grpc.aio.insecure_channel(endpoint)
        channels.append(ch)
        call = rpc_pb2_grpc.WatchStub(ch).Watch()
        calls.append(call)

    async def fill(call) -> None:
        req = rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(key=b"/registry/", range_end=b"/registry0")
        )
        for _ in range(per):
            await call.write(req)
        created = 0
        while created < per:
            resp = await call.read()
            if resp.created:
                created += 1

    await asyncio.gather(*(fill(c) for c in calls))
    return channels + calls


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default="petcd", choices=["petcd", "etcd"])
    ap.add_argument("--watchers", type=int, default=100_000)
    ap.add_argument("--streams", type=int, default=10)
    args = ap.parse_args()
    server = ServerProcess(cmd=[ETCD] if args.server == "etcd" else None).start()
    try:
        time.sleep(1.0)
        before = rss_bytes(server.proc.pid)
        t0 = time.monotonic()
        keep = await open_watchers(server.endpoint, args.watchers, args.streams)
        took = time.monotonic() - t0
        time.sleep(2.0)
        after = rss_bytes(server.proc.pid)
        n = args.watchers
        print(
            f"{args.server}: {n} watchers in {took:.1f}s; RSS {before / 2**20:.1f} MiB -> "
            f"{after / 2**20:.1f} MiB; {(after - before) / n:.0f} bytes per watcher"
        )
        for obj in keep:
            if isinstance(obj, grpc.aio.Channel):
                await obj.close()
    finally:
        server.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
