"""The lessor: leases, the keys attached to them, expiry, persistence (etcd's lease/lessor.go).

Grants and revokes are applied from committed Raft entries (``grant``/``revoke``, called by
the apply loop, deterministic). Expiry is the leader's business: only the *primary* lessor
(the Raft leader's) tracks expiry times; it proposes a LeaseRevoke through Raft for every
lease that ran out (``tick``), so every member deletes the same keys at the same revision.
Followers keep every lease at ``expiry = FOREVER``.

Checkpointing (etcd's --experimental-enable-lease-checkpoint): the primary periodically
proposes LeaseCheckpoint entries carrying each lease's remaining TTL; every member records
it, and a lessor promoted later starts the lease from that remaining TTL instead of the full
TTL. With ``checkpoint_persist`` the remaining TTL is also written to the lease bucket, so it
survives a restart. A renewal clears it (through Raft, as etcd does).

Keys are attached through the MVCC store's ``lease_hook`` (called on every put/delete that
changes a key's lease), so the lessor never parses KeyValues. The ``lease`` bucket stores
``leasepb.Lease{ID, TTL, RemainingTTL}`` under the 8-byte big-endian ID; attached keys are
not stored (they come back from the MVCC index at startup).

All methods run on the server's event-loop thread (the backend's owner thread).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from petcd import log
from petcd.backend.backend import BUCKET_LEASE, Backend
from petcd.errors import ErrLeaseExist, ErrLeaseNotFound, ErrLeaseTTLTooLarge, EtcdError
from petcd.mvcc.kvstore import KVStore
from petcd.proto.etcdserverpb import rpc_pb2
from petcd.proto.leasepb import lease_pb2

_log = log.get("lessor")

NO_LEASE = 0
MAX_LEASE_TTL = 9_000_000_000
FOREVER = math.inf
# etcd: at most this many revokes per second; half of it per expiry check.
LEASE_REVOKE_RATE = 1000
# etcd: an expired lease whose revoke did not happen is offered again after this long.
EXPIRED_LEASE_RETRY_INTERVAL = 3.0
MAX_PENDING_REVOKES = 16
# etcd: at most this many checkpoints per second, and per LeaseCheckpoint entry.
LEASE_CHECKPOINT_RATE = 1000
MAX_CHECKPOINT_BATCH = 1000
DEFAULT_CHECKPOINT_INTERVAL = 300.0
# InternalRaftRequest.lease_revoke / lease_checkpoint (etcd's raft_internal.proto).
F_LEASE_REVOKE = 9
F_LEASE_CHECKPOINT = 11

Clock = Callable[[], float]
Propose = Callable[[int, bytes, Any], Awaitable[Any]]


def min_lease_ttl(election_timeout_ms: int, heartbeat_ms: int) -> int:
    """etcd's minimum TTL: ceil(1.5 election timeouts) in seconds, computed on whole ticks."""
    ticks = max(1, election_timeout_ms // heartbeat_ms)
    return math.ceil((3 * ticks // 2) * heartbeat_ms / 1000)


def lease_key(lease_id: int) -> bytes:
    return (lease_id & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")


class Lease:
    __slots__ = (
        "id", "ttl", "remaining_ttl", "expiry", "keys", "_heap_time", "_cp_time", "_revoked"
    )

    def __init__(self, lease_id: int, ttl: int, remaining_ttl: int = 0) -> None:
        self.id = lease_id
        self.ttl = ttl
        self.remaining_ttl = remaining_ttl  # last checkpoint; 0 = unset, use ttl
        self.expiry = FOREVER
        self.keys: set[bytes] = set()
        self._heap_time = FOREVER  # the live expiry-heap entry for this lease
        self._cp_time = FOREVER  # the live checkpoint-heap entry for this lease
        self._revoked: asyncio.Event | None = None

    def effective_ttl(self) -> int:
        return self.remaining_ttl if self.remaining_ttl > 0 else self.ttl

    def sorted_keys(self) -> list[bytes]:
        return sorted(self.keys)


class Lessor:
    """Leases of one member. ``kv`` deletes attached keys on revoke and feeds attachments."""

    def __init__(
        self,
        backend: Backend,
        kv: KVStore | None = None,
        *,
        min_ttl: int = 2,
        extend: float = 1.0,
        clock: Clock = time.monotonic,
        propose: Propose | None = None,
        retry_interval: float = EXPIRED_LEASE_RETRY_INTERVAL,
        checkpointing: bool = False,
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
        checkpoint_persist: bool = False,
    ) -> None:
        self.backend = backend
        self.kv = kv
        self.min_ttl = min_ttl
        self.extend = extend  # added to every expiry on promotion (etcd: the election timeout)
        self.clock = clock
        self.propose = propose
        self.retry_interval = retry_interval
        self.checkpointing = checkpointing
        # etcd: a zero interval means the default.
        self.checkpoint_interval = checkpoint_interval or DEFAULT_CHECKPOINT_INTERVAL
        self.checkpoint_persist = checkpoint_persist
        self.leases: dict[int, Lease] = {}
        self.primary = False
        self._heap: list[tuple[float, int]] = []
        self._revoking: set[int] = set()
        self._revoke_queue: list[int] = []
        self._tasks: set[asyncio.Task] = set()
        self._cp_heap: list[tuple[float, int]] = []
        self._cp_task: asyncio.Task | None = None
        self._recover()
        if kv is not None:
            for key, lid in kv.leased_keys():
                self._attach(key, lid)
            kv.lease_hook = self.on_key_lease

    def restore(self) -> None:
        """Reload every lease from the backend (replaced by a snapshot image). Call before
        the KV store's restore, which re-attaches keys through the lease hook."""
        self.leases = {}
        self._heap = []
        self._cp_heap = []
        self._revoke_queue = []
        self._revoking = set()
        self._recover()
        if self.primary:
            self.primary = False
            self.promote(self.extend)

    def _recover(self) -> None:
        for _k, v in self.backend.for_each(BUCKET_LEASE):
            lpb = lease_pb2.Lease.FromString(bytes(v))
            ttl = max(lpb.TTL, self.min_ttl)
            self.leases[lpb.ID] = Lease(lpb.ID, ttl, lpb.RemainingTTL)

    # -- keys ------------------------------------------------------------------------------

    def on_key_lease(self, key: bytes, old: int, new: int) -> None:
        """MVCC hook: ``key`` moved from lease ``old`` to ``new`` (0: none)."""
        if old:
            lease = self.leases.get(old)
            if lease is not None:
                lease.keys.discard(key)
        if new:
            self._attach(key, new)

    def _attach(self, key: bytes, lease_id: int) -> None:
        lease = self.leases.get(lease_id)
        if lease is not None:
            lease.keys.add(key)

    # -- apply (deterministic, from committed entries) ----------------------------------

    def exists(self, lease_id: int) -> bool:
        return lease_id in self.leases

    def lookup(self, lease_id: int) -> Lease | None:
        return self.leases.get(lease_id)

    def grant(self, lease_id: int, ttl: int) -> Lease:
        if lease_id == NO_LEASE:
            raise ErrLeaseNotFound()
        if ttl > MAX_LEASE_TTL:
            raise ErrLeaseTTLTooLarge()
        if lease_id in self.leases:
            raise ErrLeaseExist()
        lease = Lease(lease_id, max(ttl, self.min_ttl))
        self.leases[lease_id] = lease
        self._persist(lease)
        if self.primary:
            self._refresh(lease, 0.0)
            self._schedule_checkpoint(lease)
        return lease

    def revoke(self, lease_id: int) -> None:
        """Delete the lease and all its keys in one MVCC write (one revision)."""
        lease = self.leases.get(lease_id)
        if lease is None:
            raise ErrLeaseNotFound()
        tw = self.kv.write() if self.kv is not None else None
        try:
            if tw is not None:
                # Sorted so that every member deletes in the same order (same backend hash).
                for key in lease.sorted_keys():
                    tw.delete_range(key)
            del self.leases[lease_id]
            # Same backend transaction as the key deletions: both or neither survive a crash.
            self.backend.delete(BUCKET_LEASE, lease_key(lease_id))
        finally:
            if tw is not None:
                tw.end()
        lease.keys.clear()
        if lease._revoked is not None:
            lease._revoked.set()

    def checkpoint(self, lease_id: int, remaining_ttl: int) -> None:
        """Record a committed checkpoint. The expiry is left alone: promotion applies it."""
        lease = self.leases.get(lease_id)
        if lease is None:
            return
        lease.remaining_ttl = remaining_ttl
        if self.checkpoint_persist:
            self._persist(lease)
        if self.primary:
            self._schedule_checkpoint(lease)

    def apply_checkpoint(
        self, req: rpc_pb2.LeaseCheckpointRequest
    ) -> rpc_pb2.LeaseCheckpointResponse:
        for cp in req.checkpoints:
            self.checkpoint(cp.ID, cp.remaining_TTL)
        return rpc_pb2.LeaseCheckpointResponse()

    def apply_grant(self, req: rpc_pb2.LeaseGrantRequest) -> rpc_pb2.LeaseGrantResponse:
        """Apply a LeaseGrant entry; the response has no header (the caller adds it)."""
        lease = self.grant(req.ID, req.TTL)
        return rpc_pb2.LeaseGrantResponse(ID=lease.id, TTL=lease.ttl)

    def apply_revoke(self, req: rpc_pb2.LeaseRevokeRequest) -> rpc_pb2.LeaseRevokeResponse:
        self.revoke(req.ID)
        return rpc_pb2.LeaseRevokeResponse()

    def _persist(self, lease: Lease) -> None:
        val = lease_pb2.Lease(ID=lease.id, TTL=lease.ttl, RemainingTTL=lease.remaining_ttl)
        self.backend.put(BUCKET_LEASE, lease_key(lease.id), val.SerializeToString())

    # -- leader side: expiry and renewal --------------------------------------------------

    def _refresh(self, lease: Lease, extend: float) -> None:
        t = self.clock() + extend + lease.effective_ttl()
        lease.expiry = t
        lease._heap_time = t
        heapq.heappush(self._heap, (t, lease.id))

    def set_primary(self, primary: bool) -> None:
        """Follow Raft leadership: promote on becoming leader, demote on losing it."""
        if primary and not self.primary:
            self.promote(self.extend)
        elif not primary and self.primary:
            self.demote()

    def promote(self, extend: float) -> None:
        """Become primary: every lease gets a fresh TTL plus ``extend`` seconds.

        With many leases, expiries are spread so that no one-second window holds more than
        3/4 of the revoke rate (etcd's Promote), avoiding a burst of revokes.
        """
        self.primary = True
        self._heap = []
        self._cp_heap = []
        for lease in self.leases.values():
            self._refresh(lease, extend)
            self._schedule_checkpoint(lease)
        if len(self.leases) < LEASE_REVOKE_RATE:
            return
        now = self.clock()
        leases = sorted(self.leases.values(), key=lambda x: x.expiry)
        target = 3 * LEASE_REVOKE_RATE // 4
        base = leases[0].expiry - now
        next_window = base + 1.0
        expires = 0
        for lease in leases:
            remaining = lease.expiry - now
            if remaining > next_window:
                base = remaining
                next_window = base + 1.0
                expires = 1
                continue
            expires += 1
            if expires <= target:
                continue
            delay = expires / target - (remaining - base)
            next_window = base + delay
            self._refresh(lease, delay + extend)
            self._schedule_checkpoint(lease)

    def demote(self) -> None:
        self.primary = False
        for lease in self.leases.values():
            lease.expiry = FOREVER
            lease._heap_time = FOREVER
            lease._cp_time = FOREVER
        self._heap = []
        self._cp_heap = []

    def remaining(self, lease: Lease) -> float:
        """Seconds until expiry (inf when not primary); negative once expired."""
        return lease.expiry - self.clock()

    def renew(self, lease_id: int) -> int | None:
        """Reset the lease to its full TTL; return the TTL, or None if it already expired and
        its revoke is pending (await ``wait_revoked`` then). Raises ErrLeaseNotFound.

        The caller must be the leader (check ``primary``).
        """
        lease = self.leases.get(lease_id)
        if lease is None:
            raise ErrLeaseNotFound()
        if lease.expiry <= self.clock():
            return None
        # A renewal supersedes any checkpointed remaining TTL. With checkpointing on, the
        # caller cleared it through Raft first (``needs_clear``/``clear_checkpoint``).
        lease.remaining_ttl = 0
        self._refresh(lease, 0.0)
        return lease.ttl

    async def wait_revoked(self, lease_id: int, timeout: float) -> None:
        lease = self.leases.get(lease_id)
        if lease is None:
            return
        if lease._revoked is None:
            lease._revoked = asyncio.Event()
        await asyncio.wait_for(lease._revoked.wait(), timeout)

    def sorted_leases(self) -> list[Lease]:
        """Leases by remaining time, soonest first (etcd's Leases order)."""
        return sorted(self.leases.values(), key=lambda x: x.expiry)

    def find_expired(self, limit: int = LEASE_REVOKE_RATE // 2) -> list[int]:
        """IDs of expired leases (at most ``limit``); each is offered again after the retry
        interval in case its revoke never commits."""
        if not self.primary:
            return []
        heap = self._heap
        now = self.clock()
        out: list[int] = []
        leases = self.leases
        while heap and len(out) < limit:
            t, lid = heap[0]
            lease = leases.get(lid)
            if lease is None or lease._heap_time != t:
                heapq.heappop(heap)  # revoked or superseded by a renewal
                continue
            if t > now:
                break
            retry = now + self.retry_interval
            lease._heap_time = retry
            heapq.heapreplace(heap, (retry, lid))
            if lease.expiry <= now:
                out.append(lid)
        # Renewals leave stale entries behind: rebuild when they dominate.
        if len(heap) > 4 * len(leases) + 1024:
            self._heap = [(x._heap_time, x.id) for x in leases.values() if x._heap_time != FOREVER]
            heapq.heapify(self._heap)
        return out

    def tick(self) -> None:
        """Called periodically (the server's ticker): propose revokes of expired leases and
        checkpoints that are due."""
        if not self.primary or self.propose is None:
            return
        now = self.clock()
        cp = self._cp_heap
        if cp and cp[0][0] <= now and self._cp_task is None:
            self._start_checkpoints()
        heap = self._heap
        if not heap or heap[0][0] > now:
            return
        try:
            for lid in self.find_expired():
                if lid not in self._revoking and lid not in self._revoke_queue:
                    self._revoke_queue.append(lid)
            self._start_revokes()
        except Exception as e:  # never take the server's ticker down with us
            _log.error("lease expiry check failed", error=repr(e))

    def _start_revokes(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._revoke_queue
        while queue and len(self._revoking) < MAX_PENDING_REVOKES:
            lid = queue.pop(0)
            self._revoking.add(lid)
            task = loop.create_task(self._revoke_expired(lid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _revoke_expired(self, lease_id: int) -> None:
        assert self.propose is not None
        req = rpc_pb2.LeaseRevokeRequest(ID=lease_id)
        try:
            await self.propose(F_LEASE_REVOKE, req.SerializeToString(), req)
        except ErrLeaseNotFound:
            pass
        except EtcdError as e:
            _log.warning("failed to revoke lease", **{"lease-id": f"{lease_id:016x}"},
                         error=e.message)
        finally:
            self._revoking.discard(lease_id)
            if self._revoke_queue:
                self._start_revokes()

    # -- leader side: checkpoints -------------------------------------------------------

    def _schedule_checkpoint(self, lease: Lease) -> None:
        # Only leases that outlive an interval are worth checkpointing (etcd's rule).
        if self.checkpointing and lease.effective_ttl() > self.checkpoint_interval:
            t = self.clock() + self.checkpoint_interval
            lease._cp_time = t
            heapq.heappush(self._cp_heap, (t, lease.id))

    def find_due_checkpoints(self, limit: int = MAX_CHECKPOINT_BATCH) -> list[tuple[int, int]]:
        """(lease ID, remaining TTL in whole seconds, rounded up) of due checkpoints."""
        if not self.checkpointing or not self.primary:
            return []
        heap = self._cp_heap
        now = self.clock()
        out: list[tuple[int, int]] = []
        leases = self.leases
        while heap and len(out) < limit:
            t, lid = heap[0]
            if t > now:
                break
            heapq.heappop(heap)
            lease = leases.get(lid)
            if lease is None or lease._cp_time != t:
                continue  # revoked, or rescheduled by a later checkpoint
            lease._cp_time = FOREVER
            if lease.expiry <= now:
                continue  # expired: its revoke is on the way
            remaining = math.ceil(lease.expiry - now)
            if remaining >= lease.ttl:
                # Just renewed: nothing to record. etcd drops the lease from the schedule
                # here for good; rescheduling keeps a busy lease checkpointed.
                self._schedule_checkpoint(lease)
                continue
            out.append((lid, remaining))
        return out

    def _start_checkpoints(self) -> None:
        batches = []
        for _ in range(LEASE_CHECKPOINT_RATE // 2):
            cps = self.find_due_checkpoints()
            if cps:
                batches.append(cps)
            if len(cps) < MAX_CHECKPOINT_BATCH:
                break
        if batches:
            self._cp_task = asyncio.get_running_loop().create_task(self._checkpoint(batches))

    async def _checkpoint(self, batches: list[list[tuple[int, int]]]) -> None:
        try:
            for cps in batches:
                await self._propose_checkpoints(cps)
        finally:
            self._cp_task = None

    async def _propose_checkpoints(self, cps: list[tuple[int, int]]) -> None:
        assert self.propose is not None
        req = rpc_pb2.LeaseCheckpointRequest(
            checkpoints=[rpc_pb2.LeaseCheckpoint(ID=i, remaining_TTL=r) for i, r in cps]
        )
        try:
            await self.propose(F_LEASE_CHECKPOINT, req.SerializeToString(), req)
        except EtcdError as e:  # best effort, as etcd's checkpointer
            _log.warning("failed to checkpoint leases", count=len(cps), error=e.message)

    def needs_clear(self, lease_id: int) -> bool:
        """Whether renewing this lease must first clear its checkpoint through Raft."""
        if not self.checkpointing:
            return False
        lease = self.leases.get(lease_id)
        return lease is not None and lease.remaining_ttl > 0 and lease.expiry > self.clock()

    async def clear_checkpoint(self, lease_id: int) -> None:
        """Commit remaining_TTL = 0 for the lease on every member (before a renewal)."""
        await self._propose_checkpoints([(lease_id, 0)])

    def stop(self) -> None:
        if self._cp_task is not None:
            self._cp_task.cancel()
        for t in list(self._tasks):
            t.cancel()

    def ids(self) -> Iterable[int]:
        return self.leases.keys()
