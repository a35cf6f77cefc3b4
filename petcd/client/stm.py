"""Software transactional memory over etcd txns (etcd's Go `concurrency.NewSTM`, v3.5).

`run(client, apply, isolation=...)` calls `await apply(stm)` and commits its buffered writes in
one txn guarded by compares on what it read; on a conflict it runs `apply` again from scratch.
An exception raised by `apply` (or by an RPC) aborts the whole thing and propagates.

    async def transfer(stm: STM) -> None:
        a = int(await stm.get("a") or 0)
        b = int(await stm.get("b") or 0)
        stm.put("a", str(a - 10))
        stm.put("b", str(b + 10))

    await run(client, transfer)                      # SERIALIZABLE_SNAPSHOT
    await run(client, transfer, isolation=REPEATABLE_READS)

Isolation levels (as in etcd):

* SERIALIZABLE_SNAPSHOT (default): reads come from one snapshot (the first read's revision);
  commit checks that nothing read changed and that no written key was modified after the
  snapshot (so blind writes conflict too).
* SERIALIZABLE: the same snapshot reads; only the read set is checked.
* REPEATABLE_READS: each key read once (locally, serializable), cached; the read set is checked.
* READ_COMMITTED: local reads, nothing checked: the writes are atomic, nothing more.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from petcd.client.aio import Client, KeyLike
from petcd.proto.etcdserverpb import rpc_pb2 as pb

__all__ = [
    "READ_COMMITTED",
    "REPEATABLE_READ",
    "REPEATABLE_READS",
    "SERIALIZABLE",
    "SERIALIZABLE_SNAPSHOT",
    "STM",
    "Isolation",
    "STMConflict",
    "run",
]


class Isolation(enum.IntEnum):
    SERIALIZABLE_SNAPSHOT = 0
    SERIALIZABLE = 1
    REPEATABLE_READS = 2
    READ_COMMITTED = 3


SERIALIZABLE_SNAPSHOT = Isolation.SERIALIZABLE_SNAPSHOT
SERIALIZABLE = Isolation.SERIALIZABLE
REPEATABLE_READS = Isolation.REPEATABLE_READS
REPEATABLE_READ = Isolation.REPEATABLE_READS
READ_COMMITTED = Isolation.READ_COMMITTED

_EQUAL = pb.Compare.EQUAL
_LESS = pb.Compare.LESS
_MOD = pb.Compare.MOD
# Go's rset.first() when nothing was read: every write compare then passes.
_NO_READ_REV = (1 << 63) - 2


def _b(x: KeyLike) -> bytes:
    return x.encode() if isinstance(x, str) else x


def _value(resp: pb.RangeResponse | None) -> bytes:
    return resp.kvs[0].value if resp is not None and resp.kvs else b""


class STM:
    """The handle `apply` works through: `await get(...)`, `put`, `delete`, `await rev(...)`.

    Writes are buffered until commit; a key written in this attempt reads back its new value
    (b"" once deleted).
    """

    __slots__ = ("client", "isolation", "_rset", "_wset", "_prefetch", "_rev", "_serializable")

    def __init__(self, client: Client, isolation: Isolation = SERIALIZABLE_SNAPSHOT) -> None:
        self.client = client
        self.isolation = Isolation(isolation)
        self._rset: dict[bytes, pb.RangeResponse] = {}
        self._wset: dict[bytes, tuple[bytes, pb.RequestOp]] = {}
        self._prefetch: dict[bytes, pb.RangeResponse] = {}
        # Snapshot revision for reads after the first (the two serializable levels).
        self._rev = 0
        # The two weaker levels read locally, like Go's WithSerializable get option.
        self._serializable = self.isolation >= REPEATABLE_READS

    # -- the user's operations -----------------------------------------------------------------

    async def get(self, *keys: KeyLike) -> bytes:
        """The value of the first key written in this attempt, else of the first already read,
        else of the first key after reading all of them in one txn; b"" if missing."""
        bkeys = [_b(k) for k in keys]
        wset = self._wset
        for k in bkeys:
            if k in wset:
                return wset[k][0]
        if self.isolation > SERIALIZABLE:
            return _value(await self._fetch(bkeys))
        first_read = not self._rset
        if self._prefetch:
            pf = self._prefetch
            for k in bkeys:
                resp = pf.pop(k, None)
                if resp is not None:
                    self._rset[k] = resp
        resp = await self._fetch(bkeys)
        if first_read and resp is not None:
            # The attempt's snapshot is the revision of its first read.
            self._rev = resp.header.revision
            self._serializable = True
        return _value(resp)

    def put(self, key: KeyLike, value: KeyLike, *, lease: int = 0) -> None:
        k, v = _b(key), _b(value)
        self._wset[k] = (v, pb.RequestOp(request_put=pb.PutRequest(key=k, value=v, lease=lease)))

    def delete(self, key: KeyLike) -> None:
        k = _b(key)
        self._wset[k] = (b"", pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k)))

    async def rev(self, key: KeyLike) -> int:
        """The mod revision of `key` as read by this attempt (read now if need be); 0 if absent."""
        k = _b(key)
        if self.isolation <= SERIALIZABLE:
            await self.get(k)
        resp = await self._fetch([k])
        return resp.kvs[0].mod_revision if resp is not None and resp.kvs else 0

    # -- internals -----------------------------------------------------------------------------

    async def _fetch(self, keys: list[bytes]) -> pb.RangeResponse | None:
        if not keys:
            return None
        rset = self._rset
        for k in keys:
            if k in rset:
                return rset[k]
        rev, ser = self._rev, self._serializable
        req = pb.TxnRequest(
            success=[
                pb.RequestOp(request_range=pb.RangeRequest(key=k, revision=rev, serializable=ser))
                for k in keys
            ]
        )
        resp = await self.client.txn_request(req)
        for k, r in zip(keys, resp.responses, strict=True):
            rset[k] = r.response_range
        return rset[keys[0]]

    def _conflicts(self) -> list[pb.Compare]:
        iso = self.isolation
        if iso == READ_COMMITTED:
            return []
        cmps = [
            pb.Compare(
                result=_EQUAL,
                target=_MOD,
                key=k,
                mod_revision=r.kvs[0].mod_revision if r.kvs else 0,
            )
            for k, r in self._rset.items()
        ]
        if iso == SERIALIZABLE_SNAPSHOT:
            first = min((r.header.revision for r in self._rset.values()), default=_NO_READ_REV)
            cmps.extend(
                pb.Compare(result=_LESS, target=_MOD, key=k, mod_revision=first + 1)
                for k in self._wset
            )
        return cmps

    def _reset(self) -> None:
        self._rset = {}
        self._wset = {}

    async def _commit(self) -> pb.TxnResponse | None:
        """The txn response if the writes went in, None on a conflict."""
        puts = [op for _, op in self._wset.values()]
        if self.isolation > SERIALIZABLE:
            resp = await self.client.txn_request(
                pb.TxnRequest(compare=self._conflicts(), success=puts)
            )
            return resp if resp.succeeded else None
        # On a conflict the Else branch re-reads the read set at the current revision, which
        # serves the next attempt's reads without another round trip.
        keys = list(self._rset)
        gets = [pb.RequestOp(request_range=pb.RangeRequest(key=k)) for k in keys]
        resp = await self.client.txn_request(
            pb.TxnRequest(compare=self._conflicts(), success=puts, failure=gets)
        )
        if resp.succeeded:
            return resp
        self._prefetch = {k: r.response_range for k, r in zip(keys, resp.responses, strict=True)}
        self._rev = 0
        self._serializable = False
        return None


ApplyFn = Callable[[STM], Awaitable[Any] | Any]


async def run(
    client: Client,
    apply: ApplyFn,
    *,
    isolation: Isolation = SERIALIZABLE_SNAPSHOT,
    prefetch: Iterable[KeyLike] = (),
    max_attempts: int | None = None,
) -> pb.TxnResponse:
    """Run `apply(stm)` until its writes commit without conflict; returns the commit's
    `TxnResponse`. `prefetch` keys are read at the start of every attempt. `max_attempts`
    (default: no limit, as in etcd) bounds the attempts: past it `STMConflict` is raised."""
    stm = STM(client, isolation)
    pre = [_b(k) for k in prefetch]
    attempt = 0
    while True:
        attempt += 1
        stm._reset()
        if pre:
            await stm.get(*pre)
        out = apply(stm)
        if inspect.isawaitable(out):
            await out
        resp = await stm._commit()
        if resp is not None:
            return resp
        if max_attempts is not None and attempt >= max_attempts:
            raise STMConflict(attempt)


class STMConflict(Exception):
    """`run` gave up after `max_attempts` conflicting attempts."""

    def __init__(self, attempts: int) -> None:
        super().__init__(f"stm: gave up after {attempts} conflicting attempts")
        self.attempts = attempts
