"""Watch end to end: the real etcdctl watch (plain, --prefix, range, --rev, --prev-kv, -i),
raw gRPC streams (ids, cancel, progress, compaction, filters, fragments), and a differential
etcdctl watch session against real etcd."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import threading
import time

import grpc
import pytest
from harness import ETCDCTL, ServerProcess

from petcd.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

pytestmark = pytest.mark.e2e


class CtlWatch:
    """A running `etcdctl watch ...` whose stdout lines are collected as they arrive."""

    def __init__(self, server: ServerProcess, *args: str, interactive: bool = False) -> None:
        env = dict(os.environ, ETCDCTL_API="3")
        self.p = subprocess.Popen(
            [ETCDCTL, f"--endpoints={server.endpoint}", "watch", *args],
            stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def wait(self, n: int, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.lines) < n and time.monotonic() < deadline:
            if self.p.poll() is not None:
                self._t.join(2)
                break
            time.sleep(0.02)
        return list(self.lines)

    def stop(self) -> tuple[list[str], str]:
        if self.p.poll() is None:
            self.p.terminate()
        try:
            _, err = self.p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            _, err = self.p.communicate()
        self._t.join(5)
        return list(self.lines), err or ""


def _put_until_seen(server: ServerProcess, w: CtlWatch, key: str, value: str) -> None:
    """A watch without --rev only sees writes after it is registered: retry until one lands."""
    for _ in range(100):
        server.ctl("put", key, value)
        if w.wait(1, timeout=0.2):
            return
    raise AssertionError("watch never saw a write")


class GrpcWatch:
    """A raw Watch stream: requests in through a queue, responses out through another."""

    def __init__(self, server: ServerProcess) -> None:
        self.ch = grpc.insecure_channel(server.endpoint)
        self.reqs: queue.Queue = queue.Queue()
        self.resps: queue.Queue = queue.Queue()
        stub = rpc_pb2_grpc.WatchStub(self.ch)
        self.call = stub.Watch(iter(self.reqs.get, None))
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        try:
            for r in self.call:
                self.resps.put(r)
        except grpc.RpcError as e:
            self.resps.put(e)

    def create(self, key: bytes, range_end: bytes = b"", **kw) -> None:
        self.reqs.put(
            rpc_pb2.WatchRequest(
                create_request=rpc_pb2.WatchCreateRequest(key=key, range_end=range_end, **kw)
            )
        )

    def cancel(self, wid: int) -> None:
        self.reqs.put(rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=wid)))

    def progress(self) -> None:
        self.reqs.put(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))

    def get(self, timeout: float = 10.0) -> rpc_pb2.WatchResponse:
        r = self.resps.get(timeout=timeout)
        if isinstance(r, Exception):
            raise r
        return r

    def none_within(self, seconds: float) -> bool:
        try:
            self.resps.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.reqs.put(None)
        self.call.cancel()
        self.ch.close()


# -- etcdctl --------------------------------------------------------------------------------


def test_ctl_watch_key_prints_put_key_value(shared_petcd):
    s = shared_petcd
    w = CtlWatch(s, "plain")
    try:
        _put_until_seen(s, w, "plain", "bar")
        n = len(w.lines)
        s.ctl("del", "plain")
        w.wait(n + 3)
    finally:
        lines, _ = w.stop()
    assert lines[:3] == ["PUT", "plain", "bar"]
    assert lines[-3:] == ["DELETE", "plain", ""]


def test_ctl_watch_rev_history_prefix_range_prev_kv(shared_petcd):
    s = shared_petcd
    s.ctl("put", "hist", "bar")
    rev = int(s.ctl("get", "hist", "-w", "json").stdout.split('"revision":')[1].split(",")[0])
    s.ctl("put", "hist", "bar_new")
    s.ctl("put", "histz1", "z")
    s.ctl("put", "hist9", "nine")
    hist = CtlWatch(s, f"--rev={rev}", "hist")
    pref = CtlWatch(s, f"--rev={rev}", "--prefix", "hist")
    rng = CtlWatch(s, f"--rev={rev}", "hist", "hist9")
    prev = CtlWatch(s, f"--rev={rev + 1}", "--prev-kv", "hist")
    try:
        s.ctl("put", "hist", "bar_latest")
        assert hist.wait(9)[:9] == ["PUT", "hist", "bar", "PUT", "hist", "bar_new",
                                    "PUT", "hist", "bar_latest"]
        assert pref.wait(15)[:15] == [
            "PUT", "hist", "bar", "PUT", "hist", "bar_new", "PUT", "histz1", "z",
            "PUT", "hist9", "nine", "PUT", "hist", "bar_latest",
        ]
        assert rng.wait(9)[:9] == ["PUT", "hist", "bar", "PUT", "hist", "bar_new",
                                   "PUT", "hist", "bar_latest"]
        assert prev.wait(10)[:10] == [
            "PUT", "hist", "bar", "hist", "bar_new",
            "PUT", "hist", "bar_new", "hist", "bar_latest",
        ]
    finally:
        for w in (hist, pref, rng, prev):
            w.stop()
    assert len(rng.lines) == 9  # hist9 is outside [hist, hist9)


def test_ctl_watch_interactive(shared_petcd):
    s = shared_petcd
    s.ctl("put", "ifoo", "0")
    rev = int(s.ctl("get", "ifoo", "-w", "json").stdout.split('"revision":')[1].split(",")[0])
    w = CtlWatch(s, "-i", interactive=True)
    try:
        w.send(f"watch --rev={rev + 1} ifoo")
        w.send(f"watch --rev={rev + 1} izoo")
        s.ctl("put", "ifoo", "1")
        s.ctl("put", "izoo", "2")
        lines = w.wait(6)
    finally:
        lines, _ = w.stop()
    got = sorted(zip(lines[0::3], lines[1::3], lines[2::3], strict=False))
    assert got == [("PUT", "ifoo", "1"), ("PUT", "izoo", "2")]


# -- raw gRPC ---------------------------------------------------------------------------------


def test_grpc_created_ids_events_and_cancel(shared_petcd):
    s = shared_petcd
    g = GrpcWatch(s)
    try:
        g.create(b"g1")
        r = g.get()
        assert r.created and not r.canceled and r.watch_id == 0
        assert r.header.revision > 0 and r.header.member_id and r.header.cluster_id
        g.create(b"g1", watch_id=7)
        assert g.get().watch_id == 7
        g.create(b"g1", watch_id=7)
        dup = g.get()
        assert (dup.created, dup.canceled, dup.watch_id) == (True, True, -1)
        assert dup.cancel_reason == "mvcc: duplicate watch ID provided on the WatchStream"
        g.create(b"b", range_end=b"a")
        bad = g.get()
        assert bad.canceled and bad.cancel_reason == "mvcc: watcher range is empty"
        g.create(b"g1")
        assert g.get().watch_id == 1
        s.ctl("put", "g1", "v")
        got = sorted((g.get().watch_id, ) for _ in range(3))
        assert got == [(0,), (1,), (7,)]
        g.cancel(7)
        c = g.get()
        assert c.canceled and c.watch_id == 7 and not c.created
        g.cancel(12345)  # unknown: ignored
        s.ctl("put", "g1", "w")
        assert sorted(g.get().watch_id for _ in range(2)) == [0, 1]
        assert g.none_within(0.3)
    finally:
        g.close()


def test_grpc_filters_prev_kv_and_delete_event(shared_petcd):
    s = shared_petcd
    s.ctl("put", "fk", "old")
    g = GrpcWatch(s)
    try:
        g.create(b"fk", filters=[rpc_pb2.WatchCreateRequest.NOPUT], prev_kv=True)
        g.create(b"fk", filters=[rpc_pb2.WatchCreateRequest.NODELETE])
        assert g.get().created and g.get().created
        s.ctl("put", "fk", "new")
        s.ctl("del", "fk")
        a, b = g.get(), g.get()
        (put, dele) = (a, b) if a.watch_id == 1 else (b, a)
        assert put.watch_id == 1 and put.events[0].type == 0 and put.events[0].kv.value == b"new"
        assert dele.watch_id == 0 and dele.events[0].type == 1
        ev = dele.events[0]
        assert ev.kv.key == b"fk" and ev.kv.mod_revision == dele.header.revision
        assert ev.kv.version == 0 and ev.prev_kv.value == b"new"
        assert g.none_within(0.3)
    finally:
        g.close()


def test_grpc_compacted_start_revision(shared_petcd):
    s = shared_petcd
    for i in range(3):
        s.ctl("put", "ck", str(i))
    rev = int(s.ctl("get", "ck", "-w", "json").stdout.split('"revision":')[1].split(",")[0])
    s.ctl("compact", str(rev - 1))
    g = GrpcWatch(s)
    try:
        g.create(b"ck", start_revision=rev - 2)
        c = g.get()
        assert c.created and not c.canceled
        r = g.get()
        assert r.canceled and r.compact_revision == rev - 1 and r.watch_id == c.watch_id
        assert r.header.revision == 0 and not r.events
        g.create(b"ck", start_revision=rev - 1)
        assert g.get().created
        r = g.get()
        assert [e.kv.value for e in r.events] == [b"1", b"2"]
    finally:
        g.close()


def test_grpc_progress_request(shared_petcd):
    s = shared_petcd
    g = GrpcWatch(s)
    try:
        g.create(b"pk")
        g.get()
        s.ctl("put", "other-key", "x")
        g.progress()
        r = g.get()
        assert r.watch_id == -1 and not r.events and not r.created
        cur = int(s.ctl("get", "pk", "-w", "json").stdout.split('"revision":')[1].split(",")[0])
        assert r.header.revision == cur
    finally:
        g.close()


def test_grpc_fragment_splits_large_catch_up(shared_petcd):
    s = shared_petcd
    big = b"x" * (1 << 20)
    ch = grpc.insecure_channel(s.endpoint)
    kv = rpc_pb2_grpc.KVStub(ch)
    first = kv.Put(rpc_pb2.PutRequest(key=b"frag", value=big)).header.revision
    for _ in range(2):
        kv.Put(rpc_pb2.PutRequest(key=b"frag", value=big))
    ch.close()
    g = GrpcWatch(s)
    try:
        g.create(b"frag", start_revision=first, fragment=True)
        g.get()
        parts = [g.get() for _ in range(3)]
        assert [p.fragment for p in parts] == [True, True, False]
        assert [len(p.events) for p in parts] == [1, 1, 1]
        assert [p.events[0].kv.mod_revision for p in parts] == [first, first + 1, first + 2]
        g.create(b"frag", start_revision=first)  # no fragment: one response
        g.get()
        whole = g.get()
        assert not whole.fragment and len(whole.events) == 3
    finally:
        g.close()


def test_grpc_many_writes_in_order_without_gaps(shared_petcd):
    s = shared_petcd
    base = int(s.ctl("get", "x", "-w", "json").stdout.split('"revision":')[1].split(",")[0])
    g = GrpcWatch(s)
    try:
        g.create(b"ord/", range_end=b"ord0", start_revision=base + 1)
        g.get()
        ch = grpc.insecure_channel(s.endpoint)
        kv = rpc_pb2_grpc.KVStub(ch)
        for i in range(300):
            kv.Put(rpc_pb2.PutRequest(key=b"ord/%d" % (i % 7), value=b"%d" % i))
        ch.close()
        revs = []
        while len(revs) < 300:
            revs += [e.kv.mod_revision for e in g.get().events]
        assert revs == list(range(base + 1, base + 301))
    finally:
        g.close()


def test_progress_notify_interval_flag():
    s = ServerProcess(extra_args=["--experimental-watch-progress-notify-interval=200ms"]).start()
    g = GrpcWatch(s)
    try:
        g.create(b"tick", progress_notify=True)
        c = g.get()
        r = g.get(timeout=5)
        assert r.watch_id == c.watch_id and not r.events and not r.canceled
        assert r.header.revision == c.header.revision
    finally:
        g.close()
        s.cleanup()


# -- differential ------------------------------------------------------------------------------


_IDS = re.compile(r'"(cluster_id|member_id|raft_term)":\d+')


def _watch_session(s: ServerProcess) -> list[list[str]]:
    for k, v in (("foo", "bar"), ("foo1", "bar1"), ("foo", "bar_new"), ("zoo", "z")):
        s.ctl("put", k, v)
    s.ctl("del", "foo1")
    outs = []
    for args in (
        ("--rev=2", "foo"),
        ("--rev=1", "--prefix", "foo"),
        ("--rev=2", "--prev-kv", "--prefix", "foo"),
        ("--rev=1", "foo", "foo9"),
        ("--rev=4", "-w", "json", "--prefix", "foo"),
        ("--rev=1", "--prefix", ""),
        ("--rev=3", "-w", "json", "foo"),
    ):
        w = CtlWatch(s, *args)
        w.wait(1, timeout=5)
        time.sleep(0.3)
        lines, _ = w.stop()
        outs.append([_IDS.sub(r'"\1":0', ln) for ln in lines])
    s.ctl("compact", "4")
    w = CtlWatch(s, "--rev=2", "foo")
    w.wait(1, timeout=5)
    time.sleep(0.3)
    lines, err = w.stop()
    outs.append(lines + [ln for ln in err.splitlines() if "compacted" in ln])
    return outs


@pytest.mark.compat
def test_differential_watch_session(petcd_server, etcd_server):
    assert _watch_session(petcd_server) == _watch_session(etcd_server)
