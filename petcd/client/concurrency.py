"""Client-side concurrency recipes on top of `petcd.client.aio.Client`: Session, Mutex, Election.

They follow etcd's Go `client/v3/concurrency` package (v3.5) step for step and use its key
layouts, so they interoperate with Go programs and with `etcdctl lock` / `etcdctl elect`:

* a Session is a lease kept alive in the background (TTL 60 s by default);
* a Mutex or Election contender writes `<pfx>/<lease id in lower-case hex>` attached to the
  session's lease; the live key with the lowest create revision owns the lock / is the leader;
* a waiter watches only the key just ahead of it (the newest one with a lower create revision)
  for its deletion, so a release wakes exactly one waiter (no thundering herd).

    async with Session(client, ttl=10) as s:
        async with Mutex(s, "/my-lock"):
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from petcd.client import errors
from petcd.client.aio import Client, KeyLike, KeyValue, Lease, prefix_range_end
from petcd.client.errors import ClientError, ErrElectionNoLeader, ErrElectionNotLeader
from petcd.proto.etcdserverpb import rpc_pb2 as pb
from petcd.proto.mvccpb import kv_pb2 as mvccpb

__all__ = [
    "DEFAULT_SESSION_TTL",
    "Election",
    "ErrElectionNoLeader",
    "ErrElectionNotLeader",
    "ErrLockReleased",
    "ErrLocked",
    "ErrSessionExpired",
    "Mutex",
    "Session",
]

DEFAULT_SESSION_TTL = 60

_DELETE = mvccpb.Event.DELETE
_PUT = mvccpb.Event.PUT
_EQUAL = pb.Compare.EQUAL
_CREATE = pb.Compare.CREATE
_SORT_CREATE = pb.RangeRequest.CREATE
_ASCEND = pb.RangeRequest.ASCEND
_DESCEND = pb.RangeRequest.DESCEND


class ErrLocked(ClientError):
    """`Mutex.try_lock`: another session holds the lock."""

    def __init__(self, msg: str = "mutex: Locked by another session") -> None:
        super().__init__(msg)


class ErrSessionExpired(ClientError):
    """The session's lease (and so the contender's key) was lost while waiting."""

    def __init__(self, msg: str = "mutex: session is expired") -> None:
        super().__init__(msg)


class ErrLockReleased(ClientError):
    """`Mutex.unlock` on a mutex that is not held."""

    def __init__(self, msg: str = "mutex: lock has already been released") -> None:
        super().__init__(msg)


def _b(x: KeyLike) -> bytes:
    return x.encode() if isinstance(x, str) else x


# ---------------------------------------------------------------------------------------------
# Session


class Session:
    """A lease kept alive in the background for as long as the session lives.

    `await Session(client).start()` or `async with Session(client, ttl=10) as s:`. With
    `lease_id`, an existing lease is adopted instead of granting one. `lease` is the lease id;
    `done` is an `asyncio.Event` set once the lease is lost (expired or revoked elsewhere) or
    the session is orphaned/closed. `close()` revokes the lease, which deletes every key
    attached to it (held locks, campaigns); `orphan()` only stops the keep-alives.
    """

    def __init__(self, client: Client, *, ttl: int = DEFAULT_SESSION_TTL, lease_id: int = 0):
        self.client = client
        self.ttl = ttl if ttl > 0 else DEFAULT_SESSION_TTL
        self._adopt = lease_id != 0
        self._lease: Lease = client.lease(self.ttl, lease_id=lease_id, revoke_on_exit=False)
        self.done = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def lease(self) -> int:
        return self._lease.id

    async def start(self) -> Session:
        await self._lease.start(grant=not self._adopt)
        self._watcher = asyncio.get_running_loop().create_task(self._watch_lease())
        return self

    async def _watch_lease(self) -> None:
        await self._lease.wait_expired()
        self.done.set()

    async def wait_done(self) -> None:
        await self.done.wait()

    async def __aenter__(self) -> Session:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def orphan(self) -> None:
        """Stop keeping the lease alive (it expires after its TTL); the session is done."""
        await self._lease.close(revoke=False)
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        self.done.set()

    async def close(self) -> None:
        """Orphan the session and revoke its lease (a lease already gone is not an error)."""
        await self.orphan()
        if self.client._closed:
            return
        with contextlib.suppress(errors.ErrLeaseNotFound):  # type: ignore[attr-defined]
            # If revoking takes longer than the TTL, the lease has expired anyway.
            await self.client.revoke(self.lease, timeout=self.ttl)


def _contender_key(pfx: bytes, lease: int) -> bytes:
    return pfx + format(lease, "x").encode()


def _first_create(pfx: bytes) -> pb.RangeRequest:
    # The oldest contender under pfx: the lock holder / the leader.
    return pb.RangeRequest(
        key=pfx,
        range_end=prefix_range_end(pfx),
        sort_order=_ASCEND,
        sort_target=_SORT_CREATE,
        limit=1,
    )


def _create_is(key: bytes, rev: int) -> pb.Compare:
    return pb.Compare(result=_EQUAL, target=_CREATE, key=key, create_revision=rev)


async def _range(client: Client, req: pb.RangeRequest) -> pb.RangeResponse:
    return await client._unary("kv", "Range", req, True, client.timeout)


async def _wait_delete(client: Client, key: bytes, rev: int) -> None:
    w = client.watch(key, start_revision=rev)
    try:
        async for ev in w:
            if ev.type == _DELETE:
                return
    finally:
        await w.close()
    raise ClientError("lost watcher waiting for delete")


async def _wait_deletes(client: Client, pfx: bytes, max_create_rev: int) -> pb.ResponseHeader:
    """Wait until no key under pfx has a create revision <= max_create_rev, watching only the
    newest such key each time (the one just ahead of us in the queue)."""
    req = pb.RangeRequest(
        key=pfx,
        range_end=prefix_range_end(pfx),
        sort_order=_DESCEND,
        sort_target=_SORT_CREATE,
        limit=1,
        max_create_revision=max_create_rev,
    )
    while True:
        resp = await _range(client, req)
        if not resp.kvs:
            return resp.header
        await _wait_delete(client, resp.kvs[0].key, resp.header.revision)


# ---------------------------------------------------------------------------------------------
# Mutex


class Mutex:
    """A distributed lock on `<pfx>/`, owned by a session (etcd's concurrency.Mutex).

    `await m.lock()` blocks until held (`timeout=` seconds: raises `TimeoutError`); if it fails
    or is cancelled while waiting, the contender key is deleted. `try_lock()` raises `ErrLocked`
    instead of waiting. Guard protected writes with `txn().if_(m.is_owner())`: they then fail
    once the lock is lost (e.g. the session expired). Also `async with Mutex(s, "name"):`.
    """

    def __init__(self, session: Session, pfx: KeyLike) -> None:
        self.session = session
        self.pfx = _b(pfx) + b"/"
        self.key = b""
        self.rev = -1
        self.header: pb.ResponseHeader | None = None

    async def _try_acquire(self) -> pb.TxnResponse:
        client = self.session.client
        lease = self.session.lease
        self.key = key = _contender_key(self.pfx, lease)
        owner = pb.RequestOp(request_range=_first_create(self.pfx))
        req = pb.TxnRequest(
            compare=[_create_is(key, 0)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, lease=lease)), owner],
            # This session is already queued (or holds it): reuse its key.
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key)), owner],
        )
        resp = await client.txn_request(req)
        if resp.succeeded:
            self.rev = resp.header.revision
        else:
            self.rev = resp.responses[0].response_range.kvs[0].create_revision
        return resp

    async def _enqueue(self) -> pb.TxnResponse:
        # If cancelled while the txn is in flight, let it finish and take back a key it created,
        # or it would block every later contender until the session ends.
        task = asyncio.ensure_future(self._try_acquire())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                if (await task).succeeded:
                    await self._release()
            raise

    def _owns(self, resp: pb.TxnResponse) -> bool:
        kvs = resp.responses[1].response_range.kvs
        return not kvs or kvs[0].create_revision == self.rev

    async def try_lock(self) -> None:
        """Take the lock if it is free, else delete our key and raise `ErrLocked`."""
        resp = await self._enqueue()
        if self._owns(resp):
            self.header = resp.header
            return
        await self._release()
        raise ErrLocked()

    async def lock(self, *, timeout: float | None = None) -> None:
        """Block until this session holds the lock."""
        async with asyncio.timeout(timeout):
            await self._lock()

    async def _lock(self) -> None:
        resp = await self._enqueue()
        if self._owns(resp):
            self.header = resp.header
            return
        client = self.session.client
        try:
            await _wait_deletes(client, self.pfx, self.rev - 1)
            # Our key may have gone with the session's lease while we waited.
            gresp = await _range(client, pb.RangeRequest(key=self.key))
        except BaseException:
            # Failed or cancelled: leave the queue so we do not block those behind us.
            with contextlib.suppress(Exception):
                await self._release()
            raise
        if not gresp.kvs:
            self.key, self.rev = b"\x00", -1
            raise ErrSessionExpired()
        self.header = gresp.header

    async def _release(self) -> None:
        await self.session.client.delete(self.key)
        self.key, self.rev = b"\x00", -1

    async def unlock(self) -> None:
        """Release the lock (delete our key); `ErrLockReleased` if it is not held."""
        if self.rev < 0:
            raise ErrLockReleased()
        await self._release()

    def is_owner(self) -> pb.Compare:
        """A txn guard that holds only while our key is the one that took the lock."""
        return _create_is(self.key, self.rev)

    async def __aenter__(self) -> Mutex:
        await self.lock()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.unlock()


# ---------------------------------------------------------------------------------------------
# Election


class Election:
    """Leader election on `<pfx>/` (etcd's concurrency.Election).

    `await e.campaign(value)` blocks until elected (cancelling it resigns); `proclaim(value)`
    changes the leader's value without a new election; `resign()` steps down; `leader()`
    returns the current leader's `KeyValue` (`ErrElectionNoLeader` if none); `observe()` is an
    async iterator of the leader's `KeyValue` at each change of leader or of proclaimed value.
    """

    def __init__(self, session: Session, pfx: KeyLike) -> None:
        self.session = session
        self.pfx = _b(pfx) + b"/"
        self.key = b""
        self.rev = 0
        self.header: pb.ResponseHeader | None = None
        self._leader_session: Session | None = None

    @classmethod
    def resume(cls, session: Session, pfx: KeyLike, key: KeyLike, rev: int) -> Election:
        """An Election for a leadership already won (key and create revision known)."""
        e = cls(session, pfx)
        e.key, e.rev, e._leader_session = _b(key), rev, session
        return e

    async def campaign(self, value: KeyLike) -> None:
        s = self.session
        client = s.client
        val = _b(value)
        key = _contender_key(self.pfx, s.lease)
        req = pb.TxnRequest(
            compare=[_create_is(key, 0)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=val, lease=s.lease))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
        )
        resp = await client.txn_request(req)
        self.key, self.rev, self._leader_session = key, resp.header.revision, s
        if not resp.succeeded:
            kv = resp.responses[0].response_range.kvs[0]
            self.rev = kv.create_revision
            if kv.value != val:
                try:
                    await self.proclaim(val)
                except BaseException:
                    with contextlib.suppress(Exception):
                        await self.resign()
                    raise
        try:
            await _wait_deletes(client, self.pfx, self.rev - 1)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.resign()
            raise
        except BaseException:
            self._leader_session = None
            raise
        self.header = resp.header

    async def proclaim(self, value: KeyLike) -> None:
        """Set the leader's value; `ErrElectionNotLeader` if we are not (or no longer) leader."""
        ls = self._leader_session
        if ls is None:
            raise ErrElectionNotLeader()
        req = pb.TxnRequest(
            compare=[_create_is(self.key, self.rev)],
            success=[
                pb.RequestOp(
                    request_put=pb.PutRequest(key=self.key, value=_b(value), lease=ls.lease)
                )
            ],
        )
        resp = await self.session.client.txn_request(req)
        if not resp.succeeded:
            self.key = b""
            raise ErrElectionNotLeader()
        self.header = resp.header

    async def resign(self) -> None:
        """Give up leadership (or the candidacy); a no-op if not campaigning."""
        if self._leader_session is None:
            return
        req = pb.TxnRequest(
            compare=[_create_is(self.key, self.rev)],
            success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=self.key))],
        )
        try:
            resp = await self.session.client.txn_request(req)
            self.header = resp.header
        finally:
            self.key = b""
            self._leader_session = None

    async def leader(self) -> KeyValue:
        resp = await _range(self.session.client, _first_create(self.pfx))
        if not resp.kvs:
            raise ErrElectionNoLeader()
        return resp.kvs[0]

    async def observe(self) -> AsyncIterator[KeyValue]:
        """The leader now (or the first one elected), then every proclaim and every new leader.

        Like etcd, the latest leader value is always delivered but values overwritten while the
        observer was between two leaders may be skipped. Ends if the client is closed.
        """
        client = self.session.client
        first = _first_create(self.pfx)
        while True:
            resp = await _range(client, first)
            kv: Any = None
            if resp.kvs:
                kv, rev = resp.kvs[0], resp.header.revision
            else:
                w = client.watch(self.pfx, prefix=True, start_revision=resp.header.revision)
                try:
                    async for ev in w:
                        # Only a put names a leader; a delete here would make us spin.
                        if ev.type == _PUT:
                            kv = ev.kv
                            break
                finally:
                    await w.close()
                if kv is None:
                    return
                rev = kv.mod_revision
            yield kv
            w = client.watch(kv.key, start_revision=rev + 1)
            deleted = False
            try:
                async for ev in w:
                    if ev.type == _DELETE:
                        deleted = True
                        break
                    yield ev.kv
            finally:
                await w.close()
            if not deleted:
                return
