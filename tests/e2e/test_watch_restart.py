"""Watch resume across server restarts (a property test).

Writer threads put to keys under a prefix through gRPC while a watcher records every event
on the prefix. The server is restarted mid-stream (SIGTERM and kill -9, alternately); the
watcher reconnects each time with start_revision = last received revision + 1. At the end,
the events received must be exactly the MVCC history of the prefix: contiguous revisions,
no gap, no duplicate, in order, each event carrying what was written at its revision.

PETCD_WATCH_RESTARTS sets the number of restarts (default 2: one of each kind).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from harness import ServerProcess

from petcd.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from petcd.proto.mvccpb import kv_pb2

pytestmark = pytest.mark.e2e

RESTARTS = int(os.environ.get("PETCD_WATCH_RESTARTS", "2"))
WRITERS = 2
PREFIX = b"wr/"
PREFIX_END = b"wr0"
# Reconnect quickly after a restart instead of gRPC's default 1 s+ backoff.
CHANNEL_OPTS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
]

Event = tuple[int, int, bytes, bytes]  # (mod revision, type, key, value)


def _channel(s: ServerProcess) -> grpc.Channel:
    return grpc.insecure_channel(s.endpoint, options=CHANNEL_OPTS)


class Writer(threading.Thread):
    """Puts unique values; records acknowledged (key, value, revision) and the rest."""

    def __init__(self, s: ServerProcess, wid: int) -> None:
        super().__init__(daemon=True)
        self.s = s
        self.wid = wid
        self.acked: list[tuple[bytes, bytes, int]] = []
        self.unacked: list[tuple[bytes, bytes]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        ch = _channel(self.s)
        kv = rpc_pb2_grpc.KVStub(ch)
        i = 0
        try:
            while not self.stop.is_set():
                key = PREFIX + b"%d/%d" % (self.wid, i % 5)
                value = b"w%d-%d" % (self.wid, i)
                i += 1
                try:
                    r = kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=2)
                except grpc.RpcError:
                    self.unacked.append((key, value))  # may or may not have been applied
                    time.sleep(0.02)
                    continue
                self.acked.append((key, value, r.header.revision))
        finally:
            ch.close()


def _requests(first: rpc_pb2.WatchRequest, closed: threading.Event) -> Iterator:
    yield first
    closed.wait()  # keep the send side open while the stream lives


class ResumingWatcher(threading.Thread):
    """One Watch stream at a time on the prefix; resumes after the last revision seen."""

    def __init__(self, s: ServerProcess, start_rev: int) -> None:
        super().__init__(daemon=True)
        self.s = s
        self.next_rev = start_rev
        self.events: list[Event] = []
        self.starts: list[int] = []  # start revision of every stream that was created
        self.failure: str | None = None
        self.done = threading.Event()
        self._call = None

    def run(self) -> None:
        while not self.done.is_set():
            ch = _channel(self.s)
            closed = threading.Event()
            req = rpc_pb2.WatchRequest(
                create_request=rpc_pb2.WatchCreateRequest(
                    key=PREFIX, range_end=PREFIX_END, start_revision=self.next_rev
                )
            )
            try:
                self._call = call = rpc_pb2_grpc.WatchStub(ch).Watch(_requests(req, closed))
                if self.done.is_set():
                    call.cancel()
                for resp in call:
                    if resp.created:
                        self.starts.append(req.create_request.start_revision)
                    if resp.canceled or resp.compact_revision:
                        self.failure = f"watch canceled: {resp}"
                        return
                    for ev in resp.events:
                        self.events.append((ev.kv.mod_revision, ev.type, ev.kv.key, ev.kv.value))
                        self.next_rev = ev.kv.mod_revision + 1
            except grpc.RpcError:
                pass  # the server went away: resume from next_rev
            finally:
                closed.set()
                ch.close()
            if not self.done.is_set():
                time.sleep(0.05)

    def finish(self) -> None:
        self.done.set()
        if self._call is not None:
            self._call.cancel()
        self.join(10)


def _current_rev(s: ServerProcess, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    with _channel(s) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        while True:
            try:
                r = kv.Range(rpc_pb2.RangeRequest(key=PREFIX, range_end=PREFIX_END,
                                                  count_only=True), timeout=2)
                return r.header.revision
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def _history(s: ServerProcess, start: int, end: int) -> list[Event]:
    """The prefix's MVCC history [start, end] through one uninterrupted watch."""
    out: list[Event] = []
    closed = threading.Event()
    req = rpc_pb2.WatchRequest(
        create_request=rpc_pb2.WatchCreateRequest(
            key=PREFIX, range_end=PREFIX_END, start_revision=start
        )
    )
    with _channel(s) as ch:
        call = rpc_pb2_grpc.WatchStub(ch).Watch(_requests(req, closed), timeout=20)
        try:
            for resp in call:
                for ev in resp.events:
                    out.append((ev.kv.mod_revision, ev.type, ev.kv.key, ev.kv.value))
                if out and out[-1][0] >= end:
                    break
        finally:
            closed.set()
            call.cancel()
    return out


def _wait_progress(writers: list[Writer], watcher: ResumingWatcher, more: int) -> None:
    """Until ``more`` writes were acknowledged and the watcher has seen one of them."""
    want = sum(len(w.acked) for w in writers) + more
    deadline = time.monotonic() + 20
    while sum(len(w.acked) for w in writers) < want:
        assert time.monotonic() < deadline, "writers made no progress"
        time.sleep(0.02)
    seen = max(w.acked[-1][2] for w in writers if w.acked)
    while watcher.next_rev <= seen:
        assert time.monotonic() < deadline, "watcher made no progress"
        time.sleep(0.02)


def test_watch_resumes_across_restarts_without_gap_or_duplicate(tmp_path):
    s = ServerProcess(data_dir=str(tmp_path / "data")).start()
    writers = [Writer(s, i) for i in range(WRITERS)]
    watcher = None
    try:
        start = _current_rev(s) + 1
        watcher = ResumingWatcher(s, start)
        watcher.start()
        for w in writers:
            w.start()
        for n in range(RESTARTS):
            # mid-stream: the watcher is live and writes are in flight
            _wait_progress(writers, watcher, 30)
            if n % 2:
                s.kill()
                s.start()
            else:
                s.restart()
        _wait_progress(writers, watcher, 30)
        for w in writers:
            w.stop.set()
        for w in writers:
            w.join(10)
        final = _current_rev(s)
        deadline = time.monotonic() + 20
        while watcher.next_rev <= final and watcher.failure is None:
            assert time.monotonic() < deadline, (watcher.next_rev, final)
            time.sleep(0.02)
        watcher.finish()
        assert watcher.failure is None, watcher.failure
        # every restart broke the stream, and it resumed past what it had seen
        starts = watcher.starts
        assert len(starts) >= RESTARTS + 1 and starts[0] == start, starts
        assert len(set(starts)) >= RESTARTS + 1 and starts == sorted(starts), starts
        events = watcher.events

        # contiguous, in order, no duplicate: every write went under the prefix
        assert [e[0] for e in events] == list(range(start, final + 1))
        assert {e[1] for e in events} == {kv_pb2.Event.PUT}
        # acknowledged writes are there, at their revision, with their value
        by_rev = {e[0]: (e[2], e[3]) for e in events}
        acked = [a for w in writers for a in w.acked]
        assert len(acked) >= 30 * (RESTARTS + 1)
        for key, value, rev in acked:
            assert by_rev.get(rev) == (key, value), (rev, key, value, by_rev.get(rev))
        # the rest were unacknowledged writes, each at most once
        values = [e[3] for e in events]
        assert len(values) == len(set(values))
        attempted = {(k, v) for w in writers for k, v in w.unacked} | {
            (k, v) for k, v, _r in acked
        }
        assert {(e[2], e[3]) for e in events} <= attempted
        # and the whole sequence is the server's history, read back in one stream
        assert _history(s, start, final) == events
    finally:
        for w in writers:
            w.stop.set()
        if watcher is not None:
            watcher.finish()
        s.cleanup()
