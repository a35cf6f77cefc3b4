#!/usr/bin/env python3
"""A one-thread HTTP/2 gRPC Put server (the `h2` library on uvloop): the ceiling without grpc.aio.

    pip install h2 uvloop
    python3 scripts/h2_ceiling.py [--port 42379] [--fsync]

Answers etcd's KV/Put with a constant PutResponse (after a write + fdatasync of the request
with --fsync), reading, answering and syncing on the event loop thread alone: no gRPC core
threads, no hand-offs between threads. Compare with scripts/grpc_ceiling.py under the bench
kit's loadgen:

    loadgen --endpoints=127.0.0.1:42379 --conns=1 --clients=1 put --total=4000 ...

A benchmark aid, not a test. Session 4 on the 2-core machine, 1 client, alternating runs:
without fsync 2,820-2,965 req/s against grpc.aio's 2,450-2,655; with fsync 1,420-1,460
against grpc.aio's 1,530-1,570. So leaving grpc.aio speeds up unsynced calls by about 10%,
but not a put that waits for fdatasync. On SIGTERM it prints the fdatasync latencies it saw.

Superseded in session 5: the `h2` library's per-frame Python cost hid the gain. A hand-rolled
server (frames parsed with struct, all-indexed header blocks cached, writes gathered per loop
turn) did 2,640-2,776 synced puts/s against grpc.aio's 1,392-1,626 and etcd's 1,636-1,735;
that design is petcd's own gRPC server, petcd/transport/grpc_http2.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import struct
import tempfile
import time

from petcd.proto.etcdserverpb import rpc_pb2

_RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
_TRAILERS = [(b"grpc-status", b"0")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=42379)
    ap.add_argument("--fsync", action="store_true", help="write + fdatasync each Put")
    args = ap.parse_args()
    try:
        import h2.config
        import h2.connection
        import h2.events
        import uvloop
    except ImportError as e:
        raise SystemExit(f"{e}: pip install h2 uvloop") from None

    fd = -1
    if args.fsync:
        fd, path = tempfile.mkstemp(prefix="h2-ceiling-", dir=".")
        os.unlink(path)  # the open descriptor keeps it until exit
        os.posix_fallocate(fd, 0, 64 << 20)
    syncs: list[float] = []
    rev = [1]
    config = h2.config.H2Configuration(
        client_side=False, header_encoding=None, validate_inbound_headers=False,
        validate_outbound_headers=False, normalize_inbound_headers=False,
        normalize_outbound_headers=False,
    )

    def put(raw: bytes) -> bytes:
        if fd >= 0:
            t0 = time.perf_counter()
            os.write(fd, raw)
            os.fdatasync(fd)
            syncs.append(time.perf_counter() - t0)
        rev[0] += 1
        header = rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, revision=rev[0], raft_term=2)
        body = rpc_pb2.PutResponse(header=header).SerializeToString()
        return b"\0" + struct.pack(">I", len(body)) + body

    class Connection(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport = transport
            self.conn = h2.connection.H2Connection(config=config)
            self.conn.initiate_connection()
            self.bodies: dict[int, bytearray] = {}
            transport.write(self.conn.data_to_send())

        def data_received(self, data: bytes) -> None:
            conn = self.conn
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    self.bodies[ev.stream_id] = bytearray()
                elif isinstance(ev, h2.events.DataReceived):
                    self.bodies[ev.stream_id] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    message = put(bytes(self.bodies.pop(ev.stream_id))[5:])
                    conn.send_headers(ev.stream_id, _RESPONSE_HEADERS)
                    conn.send_data(ev.stream_id, message)
                    conn.send_headers(ev.stream_id, _TRAILERS, end_stream=True)
            out = conn.data_to_send()
            if out:
                self.transport.write(out)

    def report() -> None:
        if syncs:
            syncs.sort()
            print(f"fdatasync n={len(syncs)} p50 {syncs[len(syncs) // 2] * 1e6:.0f} us "
                  f"mean {sum(syncs) / len(syncs) * 1e6:.0f} us", flush=True)
        os._exit(0)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, report)
        server = await loop.create_server(Connection, "127.0.0.1", args.port)
        await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
