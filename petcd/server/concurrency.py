"""Server-side lock and election recipes (etcd's client/v3/concurrency, run in-process).

etcd's v3lock and v3election services drive the Go client's Mutex and Election through a
loopback client. Here the same algorithms run against the member itself: writes are
proposed through Raft like any KV request, reads come from the local MVCC store, and
waits use in-process watchers on the watchable store. Key layouts are etcd's, so Go and
Python clients using the client-side recipes interoperate with these services:

- a contender's key is ``<name>/<lease id in lower-case hex>``, attached to that lease;
- the live key with the smallest create revision owns the lock / is the leader;
- a waiter watches only the newest key created before its own (no thundering herd), and
  re-checks when that one is deleted (released, resigned, or its lease expired).

Local reads are safe for the waits: our own key was applied locally before we read, so
every key created before it is visible, and deletions are final.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from petcd.errors import (  # the Err* below are re-exported for the Lock/Election services
    ErrCompacted,
    ErrElectionNoLeader,
    ErrElectionNotLeader,
    ErrLostWatcher,
    ErrMissingLeaderKey,
    ErrSessionExpired,
    EtcdError,
)
from petcd.mvcc.kvstore import EVENT_DELETE, EVENT_PUT
from petcd.mvcc.watchable import FILTER_NOPUT, INVALID_WATCH_ID, WatchStream
from petcd.proto.etcdserverpb import rpc_pb2
from petcd.proto.mvccpb.kv_pb2 import KeyValue
from petcd.server import apply_kv
from petcd.server.etcdserver import F_DELETE_RANGE, F_LEASE_GRANT, F_TXN, EtcdServer

# etcd's session default (concurrency.defaultSessionTTL): a request with lease 0 gets a
# fresh lease of this TTL that nobody keeps alive, exactly as etcd's orphaned session.
DEFAULT_SESSION_TTL = 60
# Quota costs as in the KV and Lease services.
KV_OVERHEAD = 256
LEASE_OVERHEAD = 64

_CMP_CREATE = rpc_pb2.Compare.CREATE
_CMP_EQUAL = rpc_pb2.Compare.EQUAL
_SORT_CREATE = rpc_pb2.RangeRequest.CREATE
_ASCEND = rpc_pb2.RangeRequest.ASCEND
_DESCEND = rpc_pb2.RangeRequest.DESCEND


def prefix_end(pfx: bytes) -> bytes:
    """etcd's GetPrefixRangeEnd: the first key after every key starting with ``pfx``."""
    b = bytearray(pfx)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\x00"


def lease_key(name: bytes, lease: int) -> bytes:
    """A contender's key: Go's fmt.Sprintf("%s/%x", name, lease)."""
    return b"%s/%x" % (name, lease)


class Recipes:
    """Mutex and election operations on one server; every method is safe to cancel."""

    def __init__(self, srv: EtcdServer) -> None:
        self.srv = srv
        self._cleanups: set[asyncio.Task] = set()

    # -- primitives ------------------------------------------------------------------

    async def txn(self, req: rpc_pb2.TxnRequest, has_put: bool) -> tuple[rpc_pb2.TxnResponse, int]:
        """Propose a txn through Raft; (response, revision after it)."""
        srv = self.srv
        raw = req.SerializeToString()
        if has_put:
            srv.check_quota(len(raw) + KV_OVERHEAD)
        res = await srv.propose(F_TXN, raw, req)
        return res.resp, res.revision

    async def delete(self, key: bytes) -> int:
        """Delete one key through Raft; the revision after it."""
        req = rpc_pb2.DeleteRangeRequest(key=key)
        apply_kv.check_delete_request(req)
        res = await self.srv.propose(F_DELETE_RANGE, req.SerializeToString(), req)
        return res.revision

    async def session_lease(self, lease: int) -> int:
        """The lease to use: the caller's, or (for 0) a fresh etcd-style session lease."""
        if lease != 0:
            return lease
        srv = self.srv
        srv.check_quota(LEASE_OVERHEAD)
        req = rpc_pb2.LeaseGrantRequest(TTL=DEFAULT_SESSION_TTL)
        while req.ID == 0:
            req.ID = srv.new_lease_id()
        res = await srv.propose(F_LEASE_GRANT, req.SerializeToString(), req)
        return res.resp.ID

    def _range(self, req: rpc_pb2.RangeRequest) -> tuple[rpc_pb2.RangeResponse, int]:
        """A local read and the store revision it saw (no await: consistent with it)."""
        kv = self.srv.kv
        return self.srv.applier.range(req), kv.rev

    def first_create(self, pfx: bytes) -> tuple[KeyValue | None, int]:
        """The key under ``pfx`` with the smallest create revision (the owner / leader)."""
        resp, rev = self._range(
            rpc_pb2.RangeRequest(
                key=pfx, range_end=prefix_end(pfx), sort_target=_SORT_CREATE,
                sort_order=_ASCEND, limit=1,
            )
        )
        return (resp.kvs[0] if resp.kvs else None), rev

    def _watch(self, key: bytes, end: bytes | None, start_rev: int, filters: tuple[int, ...] = ()) -> WatchStream:
        ws = self.srv.watchable.new_stream()
        wid, err = ws.watch(0, key, end, start_rev, filters)
        if wid == INVALID_WATCH_ID:
            ws.close()
            raise EtcdError(f"etcdserver: {err}")
        return ws

    async def _next_batch(self, ws: WatchStream) -> tuple[list, int]:
        """The next (events, header revision) from an in-process watch stream."""
        q = ws.queue
        while not q:
            if ws.closed:
                raise ErrLostWatcher()
            ws.wake.clear()
            await ws.wake.wait()
        _wid, events, rev, compact = q.popleft()
        if compact:
            raise ErrCompacted()
        return events, rev

    async def wait_deletes(self, pfx: bytes, max_create_rev: int) -> int:
        """Wait until no key under ``pfx`` has create revision <= max_create_rev.

        Watches only the newest such key at a time (etcd's waitDeletes); returns the
        revision at which none was left.
        """
        req = rpc_pb2.RangeRequest(
            key=pfx, range_end=prefix_end(pfx), sort_target=_SORT_CREATE,
            sort_order=_DESCEND, limit=1, max_create_revision=max_create_rev,
        )
        while True:
            resp, rev = self._range(req)
            if not resp.kvs:
                return rev
            # Registered before any await, so no delete after the read can be missed.
            ws = self._watch(resp.kvs[0].key, None, rev + 1, (FILTER_NOPUT,))
            try:
                while True:
                    events, _ = await self._next_batch(ws)
                    if any(ev[0] == EVENT_DELETE for ev in events):
                        break
            finally:
                ws.close()

    def _spawn_cleanup(self, coro) -> None:
        # Cleanup after a cancelled RPC must outlive the cancelled handler task.
        t = asyncio.get_running_loop().create_task(coro)
        self._cleanups.add(t)
        t.add_done_callback(self._cleanup_done)

    def _cleanup_done(self, t: asyncio.Task) -> None:
        self._cleanups.discard(t)
        if not t.cancelled():
            t.exception()  # retrieved: a failed cleanup is only best effort, as in etcd

    # -- mutex -----------------------------------------------------------------------

    async def lock(self, name: bytes, lease: int) -> tuple[bytes, int]:
        """Block until ``name`` is locked for ``lease``; (owned key, header revision)."""
        lease = await self.session_lease(lease)
        pfx = name + b"/"
        my_key = lease_key(name, lease)
        owner = rpc_pb2.RequestOp(
            request_range=rpc_pb2.RangeRequest(
                key=pfx, range_end=prefix_end(pfx), sort_target=_SORT_CREATE,
                sort_order=_ASCEND, limit=1,
            )
        )
        req = rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(key=my_key, target=_CMP_CREATE, result=_CMP_EQUAL,
                                     create_revision=0)],
            success=[
                rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=my_key, lease=lease)),
                owner,
            ],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=my_key)), owner],
        )
        resp, rev = await self.txn(req, True)
        my_rev = rev if resp.succeeded else resp.responses[0].response_range.kvs[0].create_revision
        kvs = resp.responses[1].response_range.kvs
        if not kvs or kvs[0].create_revision == my_rev:
            return my_key, rev
        try:
            await self.wait_deletes(pfx, my_rev - 1)
        except asyncio.CancelledError:
            self._spawn_cleanup(self.delete(my_key))
            raise
        except EtcdError:
            self._spawn_cleanup(self.delete(my_key))
            raise
        # The wait also ends when our own key went with its lease: check we still hold it.
        kv = self.srv.kv
        if kv.get_raw(my_key) is None:
            raise ErrSessionExpired()
        return my_key, kv.rev

    async def unlock(self, key: bytes) -> int:
        return await self.delete(key)

    # -- election --------------------------------------------------------------------

    async def campaign(self, name: bytes, lease: int, value: bytes) -> tuple[bytes, int, int, int]:
        """Block until elected; (leader key, its create revision, lease, header revision)."""
        lease = await self.session_lease(lease)
        key = lease_key(name, lease)
        req = rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(key=key, target=_CMP_CREATE, result=_CMP_EQUAL,
                                     create_revision=0)],
            success=[rpc_pb2.RequestOp(
                request_put=rpc_pb2.PutRequest(key=key, value=value, lease=lease))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
        )
        resp, hdr_rev = await self.txn(req, True)
        leader_rev = hdr_rev
        if not resp.succeeded:
            kv = resp.responses[0].response_range.kvs[0]
            leader_rev = kv.create_revision
            if kv.value != value:
                try:
                    await self.proclaim(key, leader_rev, lease, value)
                except EtcdError:
                    with contextlib.suppress(EtcdError):
                        await self.resign(key, leader_rev)
                    raise
        try:
            await self.wait_deletes(name + b"/", leader_rev - 1)
        except asyncio.CancelledError:
            self._spawn_cleanup(self.resign(key, leader_rev))
            raise
        return key, leader_rev, lease, hdr_rev

    def _is_key(self, key: bytes, rev: int) -> rpc_pb2.Compare:
        return rpc_pb2.Compare(key=key, target=_CMP_CREATE, result=_CMP_EQUAL,
                               create_revision=rev)

    async def proclaim(self, key: bytes, rev: int, lease: int, value: bytes) -> int:
        """Update the leader's value if ``key`` (created at ``rev``) still leads."""
        lease = await self.session_lease(lease)
        req = rpc_pb2.TxnRequest(
            compare=[self._is_key(key, rev)],
            success=[rpc_pb2.RequestOp(
                request_put=rpc_pb2.PutRequest(key=key, value=value, lease=lease))],
        )
        resp, hdr_rev = await self.txn(req, True)
        if not resp.succeeded:
            raise ErrElectionNotLeader()
        return hdr_rev

    async def resign(self, key: bytes, rev: int) -> int:
        """Delete the leader key if it is still the one created at ``rev``."""
        req = rpc_pb2.TxnRequest(
            compare=[self._is_key(key, rev)],
            success=[rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))],
        )
        _resp, hdr_rev = await self.txn(req, False)
        return hdr_rev

    async def leader(self, name: bytes) -> tuple[KeyValue, int]:
        """The current leader's KeyValue and the read's revision."""
        await self.srv.linearizable_barrier()
        kv, rev = self.first_create(name + b"/")
        if kv is None:
            raise ErrElectionNoLeader()
        return kv, rev

    async def observe(self, name: bytes) -> AsyncIterator[tuple[bytes, int]]:
        """Leader changes as (serialized KeyValue, header revision), etcd's Election.Observe:
        always the latest leader value, not necessarily every intermediate one."""
        try:
            async for item in self._observe(name + b"/"):
                yield item
        except (ErrCompacted, ErrLostWatcher):
            return  # etcd's Observe channel closes when its watch breaks: the stream ends

    async def _observe(self, pfx: bytes) -> AsyncIterator[tuple[bytes, int]]:
        while True:
            await self.srv.linearizable_barrier()
            kv, rev = self.first_create(pfx)
            if kv is None:
                # Nobody leads: wait for the first put under the prefix.
                ws = self._watch(pfx, prefix_end(pfx), rev + 1)
                raw = None
                try:
                    while raw is None:
                        events, _ = await self._next_batch(ws)
                        for ev in events:
                            if ev[0] == EVENT_PUT:
                                raw = ev[2]
                                break
                finally:
                    ws.close()
                lead = KeyValue.FromString(raw)
                key, rev = lead.key, lead.mod_revision
            else:
                key, raw = kv.key, kv.SerializeToString()
            yield raw, rev
            # Proclaims until the leader key goes; from history if we fell behind.
            ws = self._watch(key, None, rev + 1)
            try:
                deleted = False
                while not deleted:
                    events, hdr_rev = await self._next_batch(ws)
                    for ev in events:
                        if ev[0] == EVENT_DELETE:
                            deleted = True
                            break
                        yield ev[2], hdr_rev
            finally:
                ws.close()


__all__ = [
    "DEFAULT_SESSION_TTL",
    "ErrElectionNoLeader",
    "ErrElectionNotLeader",
    "ErrLostWatcher",
    "ErrMissingLeaderKey",
    "ErrSessionExpired",
    "Recipes",
    "lease_key",
    "prefix_end",
]
