"""kill -9 at random moments under concurrent writers: nothing acknowledged is ever lost.

Every iteration: writer threads put distinct keys through the gRPC API and record each
acknowledged (key, value, revision); the server is SIGKILLed at a random moment and
restarted; then every acknowledged write must be readable with exactly its revision,
acknowledged revisions must be unique, and the store's revision never goes backwards.
PETCD_CRASH_ITERATIONS raises the iteration count (default 8).
"""

from __future__ import annotations

import os
import random
import threading
import time

import grpc
import pytest
from harness import ServerProcess

from petcd.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ITERATIONS = int(os.environ.get("PETCD_CRASH_ITERATIONS", "8"))


def _writer(endpoint: str, wid: int, it: int, acked: list, stop: threading.Event) -> None:
    ch = grpc.insecure_channel(endpoint)
    kv = rpc_pb2_grpc.KVStub(ch)
    i = 0
    try:
        while not stop.is_set():
            key = f"it{it}/w{wid}/{i}".encode()
            val = os.urandom(16).hex().encode()
            try:
                resp = kv.Put(rpc_pb2.PutRequest(key=key, value=val), timeout=5)
            except grpc.RpcError:
                return  # server died: this write may or may not have happened
            acked.append((key, val, resp.header.revision))
            i += 1
    finally:
        ch.close()


def _current_revision(kv) -> int:
    return kv.Range(rpc_pb2.RangeRequest(key=b"\x00"), timeout=10).header.revision


# One writer exercises the inline path (the handler runs the Raft cycle itself); several
# exercise group commit with the fsync off the event loop.
@pytest.mark.parametrize("writers", [1, 8])
def test_kill9_loses_no_acknowledged_write(writers):
    rng = random.Random(int(os.environ.get("PETCD_CRASH_SEED", time.time_ns())))
    server = ServerProcess().start()
    all_acked: list[tuple[bytes, bytes, int]] = []
    last_rev = 1
    try:
        for it in range(ITERATIONS):
            acked: list = []
            stop = threading.Event()
            threads = [
                threading.Thread(target=_writer, args=(server.endpoint, w, it, acked, stop))
                for w in range(writers)
            ]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.2, 1.5))
            server.kill()
            stop.set()
            for t in threads:
                t.join(10)
            assert acked, "no write was acknowledged before the kill"
            all_acked.extend(acked)
            revs = [r for _, _, r in all_acked]
            assert len(set(revs)) == len(revs), "two acknowledged writes share a revision"
            assert min(r for _, _, r in acked) > last_rev, "revision went backwards"

            server.start()
            with grpc.insecure_channel(server.endpoint) as ch:
                kv = rpc_pb2_grpc.KVStub(ch)
                cur = _current_revision(kv)
                assert cur >= max(revs)
                got = kv.Range(rpc_pb2.RangeRequest(key=b"it", range_end=b"iu"), timeout=30)
                stored = {x.key: (x.value, x.mod_revision) for x in got.kvs}
                for key, val, rev in all_acked:
                    assert key in stored, f"acknowledged key {key!r} lost"
                    assert stored[key] == (val, rev), f"acknowledged key {key!r} changed"
            last_rev = cur
    finally:
        server.cleanup()
