"""The etcdserverpb.Watch/Watch bidirectional stream (etcd's v3rpc/watch.go).

One reader task takes requests off the stream (create, cancel, progress); the handler's
generator drains the stream's queue (fed by the watchable store without blocking) and
writes responses. Responses are assembled from bytes: header + fields + each event's
serialized KeyValue straight from the backend.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from petcd import log
from petcd.api.v3.codec import field_bytes, varint
from petcd.errors import EtcdError
from petcd.mvcc.kvstore import EVENT_DELETE, EVENT_PUT, Event
from petcd.mvcc.watchable import CHAN_BUF_LEN, INVALID_WATCH_ID, WatchableStore, WatchStream
from petcd.proto.etcdserverpb import rpc_pb2
from petcd.proto.mvccpb.kv_pb2 import KeyValue

if TYPE_CHECKING:
    from petcd.server.etcdserver import EtcdServer

_log = log.get("v3rpc")

CTRL_BUF_LEN = 16  # etcd's ctrlStreamBufLen: the reader pauses beyond this many
GRPC_OVERHEAD_BYTES = 512 * 1024
MIN_PROGRESS_INTERVAL = 0.1
DEFAULT_PROGRESS_INTERVAL = 600.0

_CANCELED = b"\x20\x01"  # WatchResponse.canceled = true
_CREATED = b"\x18\x01"
_FRAGMENT = b"\x38\x01"


def _watch_id(wid: int) -> bytes:
    return b"\x10" + varint(wid) if wid else b""


def encode_event(ev: Event, prev: bytes | None = None) -> bytes:
    """Serialized mvccpb.Event from a store event (and the previous KeyValue)."""
    typ, _key, kv = ev
    body = (b"\x08\x01" if typ == EVENT_DELETE else b"") + b"\x12" + varint(len(kv)) + kv
    if prev is not None:
        body += b"\x1a" + varint(len(prev)) + prev
    return body


_last_event: list = [None, b""]


def _event_field(ev: Event) -> bytes:
    """WatchResponse's events field for one event. Every watcher of a key gets the same
    event object from the store, so the last encoding is kept for the next watcher."""
    last = _last_event
    if last[0] is ev:
        return last[1]
    e = encode_event(ev)
    field = b"\x5a" + varint(len(e)) + e
    last[0], last[1] = ev, field
    return field


class _ServerStream:
    """Per-stream state of the API layer on top of the store's WatchStream."""

    def __init__(self, svc: WatchService) -> None:
        self.svc = svc
        self.srv = svc.srv
        self.ws: WatchStream = svc.store.new_stream(CHAN_BUF_LEN)
        self.prev_kv: set[int] = set()
        self.fragment: set[int] = set()
        self.progress: dict[int, bool] = {}  # watch id -> no events sent since the last tick
        self.deferred_progress = False
        self.ctrl_pending = 0
        self.drained = asyncio.Event()
        self.recv_error: BaseException | None = None
        self.ticker: asyncio.Task | None = None

    # -- requests ----------------------------------------------------------------------

    def header(self, rev: int) -> bytes:
        srv = self.srv
        return srv.header.header(rev, srv.term)

    def ctrl(self, msg: bytes) -> None:
        self.ctrl_pending += 1
        self.ws.put_ctrl(msg)

    def handle(self, raw: bytes) -> None:
        req = rpc_pb2.WatchRequest.FromString(raw)
        which = req.WhichOneof("request_union")
        if which == "create_request":
            self.create(req.create_request)
        elif which == "cancel_request":
            wid = req.cancel_request.watch_id
            if self.ws.cancel(wid):
                self.ctrl(self.header(self.ws.rev) + _watch_id(wid) + _CANCELED)
                self.forget(wid)
        elif which == "progress_request":
            if not self.deferred_progress and not self.ws.request_progress_all():
                self.deferred_progress = True  # sent once every watcher here is synced

    def create(self, creq: Any) -> None:
        key = creq.key or b"\x00"  # the smallest key
        end: bytes | None = creq.range_end or None
        if end == b"\x00":
            end = b""  # >= key
        ws = self.ws
        rev = ws.rev
        wid, err = ws.watch(creq.watch_id, key, end, creq.start_revision, creq.filters)
        if err is not None:
            self.ctrl(
                self.header(rev)
                + _watch_id(INVALID_WATCH_ID)
                + _CREATED
                + _CANCELED
                + field_bytes(6, err.encode())
            )
            return
        if creq.prev_kv:
            self.prev_kv.add(wid)
        if creq.fragment:
            self.fragment.add(wid)
        if creq.progress_notify:
            self.progress[wid] = True
            if self.ticker is None:
                self.ticker = asyncio.get_running_loop().create_task(self._tick())
        self.ctrl(self.header(rev) + _watch_id(wid) + _CREATED)

    def forget(self, wid: int) -> None:
        self.prev_kv.discard(wid)
        self.fragment.discard(wid)
        self.progress.pop(wid, None)

    async def recv(self, request_iterator: AsyncIterator[bytes]) -> None:
        try:
            async for raw in request_iterator:
                self.handle(raw)
                while self.ctrl_pending >= CTRL_BUF_LEN and not self.ws.closed:
                    self.drained.clear()
                    await self.drained.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # a broken stream ends the RPC, as etcd's recvLoop error
            self.recv_error = e
            self.ws.wake.set()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.svc.progress_interval())
            for wid, quiet in self.progress.items():
                if quiet:
                    self.ws.request_progress(wid)
                self.progress[wid] = True

    # -- responses ---------------------------------------------------------------------

    def encode(self, item: Any) -> list[bytes]:
        if type(item) is bytes:
            self.ctrl_pending -= 1
            if self.ctrl_pending < CTRL_BUF_LEN:
                self.drained.set()
            return [item]
        wid, events, rev, compact = item
        head = self.header(rev) + _watch_id(wid)
        if compact:
            self.forget(wid)
            return [head + _CANCELED + b"\x28" + varint(compact)]
        if not events:
            return [head]
        if wid in self.prev_kv:
            evs = [self._with_prev(ev) for ev in events]
            parts = [b"\x5a" + varint(len(e)) + e for e in evs]
        else:
            parts = [_event_field(ev) for ev in events]
        p = self.progress
        if wid in p:
            p[wid] = False  # events went out: skip the next progress notification
        if wid in self.fragment and len(parts) > 1:
            limit = self.srv.max_request_bytes + GRPC_OVERHEAD_BYTES
            if len(head) + sum(map(len, parts)) >= limit:
                return _fragments(head, parts, limit)
        return [head + b"".join(parts)]

    def _with_prev(self, ev: Event) -> bytes:
        kv = KeyValue.FromString(ev[2])
        if ev[0] == EVENT_PUT and kv.create_revision == kv.mod_revision:
            return encode_event(ev)  # a creation has no previous value
        try:
            prev = self.srv.kv.get_raw(ev[1], kv.mod_revision - 1)
        except EtcdError:
            prev = None  # compacted meanwhile: omitted, as etcd
        return encode_event(ev, prev)

    def close(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
        self.ws.close()
        self.drained.set()


def _fragments(head: bytes, parts: list[bytes], limit: int) -> list[bytes]:
    """etcd's sendFragments: pieces under the limit; all but the last flagged fragment."""
    out: list[bytes] = []
    cur: list[bytes] = []
    size = len(head) + 2
    for p in parts:
        if cur and size + len(p) >= limit:
            out.append(head + _FRAGMENT + b"".join(cur))
            cur, size = [], len(head) + 2
        cur.append(p)
        size += len(p)
    out.append(head + b"".join(cur))
    return out


class WatchService:
    def __init__(self, srv: EtcdServer, store: WatchableStore | None = None) -> None:
        self.srv = srv
        self.store = store if store is not None else srv.watchable
        interval = getattr(srv.cfg, "experimental_watch_progress_notify_interval", 0) or 0
        if interval <= 0:
            interval = DEFAULT_PROGRESS_INTERVAL
        elif interval < MIN_PROGRESS_INTERVAL:
            _log.warning(
                "adjusting watch progress notify interval to minimum period",
                **{"min-watch-progress-notify-interval": "100ms"},
            )
            interval = MIN_PROGRESS_INTERVAL
        self.interval = interval

    def progress_interval(self) -> float:
        # up to 10% jitter so watchers created together do not tick together
        return self.interval + random.random() * self.interval / 10

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "etcdserverpb.Watch",
            {"Watch": grpc.stream_stream_rpc_method_handler(self.watch)},
        )

    async def watch(
        self, request_iterator: AsyncIterator[bytes], ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        st = _ServerStream(self)
        ws = st.ws
        q = ws.queue
        wake = ws.wake
        reader = asyncio.get_running_loop().create_task(st.recv(request_iterator))
        try:
            while True:
                while q:
                    item = q.popleft()
                    for msg in st.encode(item):
                        yield msg
                if st.deferred_progress and ws.request_progress_all():
                    st.deferred_progress = False
                    continue
                if st.recv_error is not None:
                    err = st.recv_error
                    if isinstance(err, grpc.RpcError | EtcdError):
                        return
                    raise err
                wake.clear()
                if q:
                    continue
                await wake.wait()
        finally:
            reader.cancel()
            st.close()


__all__: list[str] = ["WatchService", "encode_event"]
