"""The member: drives Raft, persists to the WAL, applies committed entries.

This is the only place where the pure Raft state machine meets I/O. One asyncio loop
owns everything; WAL fsyncs run in a worker thread so proposals keep arriving (and
batch up) while the disk works. A write is acknowledged only after its entry was
fsynced to the WAL and applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from petcd import log
from petcd.api.v3.codec import HeaderEncoder
from petcd.backend.backend import Backend
from petcd.errors import (
    ErrBadLeaderTransferee,
    ErrLearnerNotSupported,
    ErrMemberExist,
    ErrMemberNotEnoughStarted,
    ErrMemberNotFound,
    ErrMemberNotLearner,
    ErrNoLeader,
    ErrNoSpace,
    ErrPeerURLExist,
    ErrProposeDeadline,
    ErrStopped,
    ErrTimeout,
    ErrTimeoutDueToConnectionLost,
    ErrTimeoutDueToLeaderFail,
    ErrTimeoutLeaderTransfer,
    ErrTooManyLearners,
    ErrTooManyRequests,
    ErrUnhealthy,
    EtcdError,
)
from petcd.lease.lessor import Lessor, min_lease_ttl
from petcd.mvcc.kvstore import KVStore
from petcd.mvcc.watchable import WatchableStore
from petcd.proto.etcdserverpb import rpc_pb2
from petcd.proto.membershippb import membership_pb2
from petcd.raft import (
    MemoryStorage,
    ProposalDropped,
    RaftConfig,
    RawNode,
    decode_conf_change,
    encode_conf_change,
)
from petcd.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from petcd.server import compactor
from petcd.server.alarms import AlarmStore
from petcd.server.apply_kv import KVApplier, txn_has_put
from petcd.server.forward import LeaderForwarder
from petcd.server.ids import RequestIDGenerator, cluster_id, member_id
from petcd.server.membership import Member, RaftCluster
from petcd.server.requests import (  # noqa: F401  (F_* re-exported for the services)
    F_ALARM,
    F_CLUSTER_MEMBER_ATTR_SET,
    F_CLUSTER_VERSION_SET,
    F_COMPACTION,
    F_DELETE_RANGE,
    F_LEASE_CHECKPOINT,
    F_LEASE_GRANT,
    F_LEASE_REVOKE,
    F_PUT,
    F_RANGE,
    F_TXN,
    decode_internal,
    encode_internal,
)
from petcd.transport import Transport
from petcd.version import CLUSTER_VERSION, ETCD_VERSION
from petcd.wal.snap import Snapshotter
from petcd.wal.wal import WAL, valid_snapshot_markers, wal_exists

_log = log.get("etcdserver")

# Temp files of the Maintenance.Snapshot RPC live in the snap dir under this prefix.
SNAPSHOT_RPC_TMP_PREFIX = "snapshot-rpc-"
# Database images being sent to a follower that is too far behind for the log.
SNAP_SEND_PREFIX = "send-"
# etcd's backend defaults (--backend-batch-interval, --backend-batch-limit)
DEFAULT_BATCH_INTERVAL_S = 0.1
DEFAULT_BATCH_LIMIT = 10000
# etcd: requests beyond this many uncommitted-but-unapplied entries are refused.
MAX_GAP_BETWEEN_APPLY_AND_COMMIT = 5000
# etcd re-sends a ReadIndex request that got no answer after this long.
READ_INDEX_RETRY_S = 0.5
# etcd's HealthInterval: a peer counts as connected once its stream is this old.
HEALTH_INTERVAL_S = 5.0
# etcd allows one learner at a time (membership.maxLearners).
MAX_LEARNERS = 1
# etcd keeps this many entries in the Raft log after a snapshot for slow followers.
SNAPSHOT_CATCHUP_ENTRIES = 5000
# Group commit under load: when the loop thread is saturated, a Ready gathers proposals
# until none arrived for BATCH_GAP_S, BATCH_MAX are waiting, or BATCH_WINDOW_S passed.
# The gap adapts the batch to the client count: a few clients are all back within a gap,
# many clients keep arriving and fill the batch (one fsync and Raft cycle for all).
BATCH_GAP_S = 0.0005
BATCH_MAX = 64
BATCH_WINDOW_S = 0.01
BUSY_SAMPLE_S = 0.02
SATURATED_BUSY_FRACTION = 0.85
BATCH_BACKOFF_S = 0.05
BATCH_MIN_AVG = 1.3
WARN_APPLY_DURATION = 0.1


@dataclass(slots=True)
class _Wait:
    fut: asyncio.Future
    field_no: int
    req: Any
    deadline: float


@dataclass(slots=True)
class ApplyResult:
    resp: Any
    revision: int


class EtcdServer:
    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.name: str = cfg.name
        self.data_dir: str = cfg.effective_data_dir()
        self.member_dir = os.path.join(self.data_dir, "member")
        self.wal_dir = cfg.effective_wal_dir()
        self.snap_dir = os.path.join(self.member_dir, "snap")
        self.quota_bytes: int = cfg.effective_quota_bytes()
        self.max_request_bytes: int = cfg.max_request_bytes
        self.max_txn_ops: int = cfg.max_txn_ops
        self.snapshot_count: int = cfg.snapshot_count
        self.catchup_entries: int = getattr(
            cfg, "experimental_snapshot_catchup_entries", SNAPSHOT_CATCHUP_ENTRIES
        )
        self.heartbeat_s: float = cfg.heartbeat_interval / 1000.0
        self.election_s: float = cfg.election_timeout / 1000.0
        self.request_timeout_s: float = 5.0 + 2 * cfg.election_timeout / 1000.0

        self.id = 0
        self.cluster: RaftCluster
        self.wal: WAL
        self.backend: Backend
        self.kv: KVStore
        self.applier: KVApplier
        self.lessor: Lessor
        self.node: RawNode
        self.storage: MemoryStorage
        self.snapshotter: Snapshotter
        self.header: HeaderEncoder
        self.alarms: AlarmStore

        # Pending local proposals, keyed by their entry bytes (unique: they carry the request
        # ID), so applying our own entries needs no decoding.
        self._waits: dict[bytes, _Wait] = {}
        self._reqid: RequestIDGenerator
        self._wake = asyncio.Event()
        self._stopped = False
        self._fatal: BaseException | None = None
        self._tasks: list[asyncio.Task] = []
        self._wal_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal")
        self._io_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="io")

        self.applied_index = 0
        self.committed_index = 0
        self._busy = 0.0  # fraction of recent wall time this thread spent on CPU
        self._busy_wall = time.monotonic()
        self._busy_cpu = time.thread_time()
        self._blocked_s = 0.0
        self._batch_backoff_until = 0.0
        self._cycle_busy = False  # a Ready is being handled (by the loop or inline)
        self._batch_size_avg = 2.0  # entries per Ready when we waited for a batch
        self.inline_saves = 0  # WAL saves done on the loop thread, and their total time
        self.inline_save_s = 0.0
        self.leader_changes = 0  # elections of a new leader seen (etcd_server_leader_changes_seen_total)
        self.ready_count = 0  # Readies handled and entries persisted: batching efficiency
        self.entry_count = 0
        self.lead = 0
        self._snapshot_index = 0
        self._conf_state = ConfState()
        self._applied_waiters: list[tuple[int, asyncio.Future]] = []
        # ReadIndex batching: reads queue on _next_read; one round serves them all.
        self._next_read: asyncio.Future | None = None
        self._read_rounds: dict[bytes, asyncio.Future] = {}
        self._read_started: dict[bytes, float] = {}
        self._read_seq = 0
        self.leader_ready = asyncio.Event()
        self.published = asyncio.Event()
        self.fatal_event = asyncio.Event()
        self.on_leader_change: list[Callable[[int], None]] = []
        self.transport: Transport | None = None
        self.forwarder = LeaderForwarder(self)
        self.peer_tls: tuple[Any, Any] = (None, None)  # (server, client) ssl contexts
        # Conf changes waiting to be applied, by ConfChange.id.
        self._conf_waits: dict[int, asyncio.Future] = {}
        # Database images sent to followers (path by peer), until the transfer reports back.
        self._snap_sends: dict[int, str] = {}
        self.removed = False  # this member was removed from the cluster
        self._parked: list[bytes] = []  # proposals waiting for a leader
        self._lead_elected_at = 0.0  # monotonic time a leader was last learned
        self.learner = False  # this member is a learner (serves serializable reads only)

    # ------------------------------------------------------------------ startup

    def open(self, remote_cluster: bytes | None = None) -> None:
        """Open or create the data dir, replay the WAL, restore Raft and MVCC.

        ``remote_cluster``: for ``--initial-cluster-state existing`` on first start, the
        members as a peer reported them (see ``Transport`` CH_MEMBERS).
        """
        cfg = self.cfg
        os.makedirs(self.snap_dir, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        self._lock_member_dir()
        for name in os.listdir(self.snap_dir):
            if name.startswith(SNAPSHOT_RPC_TMP_PREFIX) or name.startswith(SNAP_SEND_PREFIX):
                # a Snapshot RPC or a snapshot send to a follower cut off by a crash
                os.unlink(os.path.join(self.snap_dir, name))
        self.snapshotter = Snapshotter(self.snap_dir)
        self.backend = Backend(
            os.path.join(self.snap_dir, "db"),
            map_size=max(2 * self.quota_bytes, 4 << 30),
            batch_interval=cfg.backend_batch_interval or DEFAULT_BATCH_INTERVAL_S,
            batch_limit=cfg.backend_batch_limit or DEFAULT_BATCH_LIMIT,
        )
        self.kv = KVStore(self.backend)
        self.watchable = WatchableStore(self.kv)
        self.db_size = self.backend.size()
        self.storage = MemoryStorage()
        peers: list[int] | None = None
        if wal_exists(self.wal_dir):
            # The newest snapshot the WAL has a marker for: a crash between writing a .snap
            # file and its WAL marker leaves a newer file that the WAL cannot be opened at.
            snap = self.snapshotter.load_newest_available(valid_snapshot_markers(self.wal_dir))
            self.wal, st = WAL.open(self.wal_dir, snap.metadata if snap else None)
            self.id, cid = _decode_wal_metadata(st.metadata)
            if snap is not None:
                self.storage.apply_snapshot(snap)
                self._snapshot_index = snap.metadata.index
                self._conf_state = snap.metadata.conf_state
            entries = st.entries
            hs = st.hard_state
            if cfg.force_new_cluster:
                hs, entries = self._force_new_cluster(snap, hs, entries)
            self.storage.set_hard_state(hs)
            self.storage.append(entries)
            self.cluster = RaftCluster(cid, self.id)
            self.cluster.load(self.backend)
            _log.info(
                "restarting local member",
                **{"cluster-id": f"{cid:x}", "local-member-id": f"{self.id:x}",
                   "commit-index": st.hard_state.commit},
            )
        else:
            initial = cfg.check_bootstrap()
            if cfg.initial_cluster_state == "existing":
                self.cluster = _join_cluster(initial, self.name, remote_cluster)
                self.id = self.cluster.local_id
                cid = self.cluster.cluster_id
                peers = None  # the leader brings this member's log and configuration
            else:
                ids = {n: member_id(u, cfg.initial_cluster_token) for n, u in initial.items()}
                self.id = ids[self.name]
                cid = cluster_id(list(ids.values()))
                self.cluster = RaftCluster(cid, self.id)
                for n, u in initial.items():
                    self.cluster.add(Member(ids[n], n, list(u), []))
                peers = sorted(ids.values())
            self.cluster.save(self.backend)
            self.backend.commit()
            self.wal = WAL.create(self.wal_dir, _encode_wal_metadata(self.id, cid))
            _log.info(
                "starting local member",
                **{"local-member-id": f"{self.id:x}", "cluster-id": f"{cid:x}"},
            )
        self._refresh_self()
        self.header = HeaderEncoder(self.cluster.cluster_id, self.id)
        self._reqid = RequestIDGenerator(self.id)
        self.lessor = Lessor(
            self.backend, self.kv, propose=self.propose,
            min_ttl=min_lease_ttl(cfg.election_timeout, cfg.heartbeat_interval),
            extend=cfg.election_timeout / 1000.0,
            checkpointing=getattr(cfg, "experimental_enable_lease_checkpoint", False),
            checkpoint_interval=getattr(cfg, "experimental_lease_checkpoint_interval", 0.0),
            checkpoint_persist=getattr(cfg, "experimental_enable_lease_checkpoint_persist", False),
        )
        self.on_leader_change.append(lambda lead: self.lessor.set_primary(lead == self.id))
        self.applier = KVApplier(self.kv, lease_exists=self.lessor.exists)
        self.alarms = AlarmStore(self.backend)
        applied = max(self._snapshot_index, 0)
        self.applied_index = applied
        rcfg = RaftConfig(
            id=self.id,
            election_tick=max(1, cfg.election_timeout // cfg.heartbeat_interval),
            heartbeat_tick=1,
            applied=applied,
        )
        self.node = RawNode(rcfg, self.storage, peers=peers)
        if peers is None and not self.storage.last_index() and not self._snapshot_index:
            _log.info("joining an existing cluster; waiting for the leader's log",
                      **{"local-member-id": f"{self.id:x}"})

    def _force_new_cluster(self, snap, hs, entries):
        """--force-new-cluster: keep what was committed, drop the rest, and commit
        configuration changes that leave this member the only one (etcd's
        restartAsStandaloneNode)."""
        entries = [e for e in entries if e.index <= hs.commit]
        ids: set[int] = set(snap.metadata.conf_state.voters) if snap is not None else set()
        for e in entries:
            if e.type != EntryType.CONF_CHANGE:
                continue
            cc = decode_conf_change(e.data)
            if cc.type in (ConfChangeType.ADD_NODE, ConfChangeType.ADD_LEARNER_NODE):
                ids.add(cc.node_id)
            elif cc.type == ConfChangeType.REMOVE_NODE:
                ids.discard(cc.node_id)
        last = entries[-1] if entries else None
        index = last.index if last else (snap.metadata.index if snap is not None else 0)
        term = last.term if last else (snap.metadata.term if snap is not None else 0)
        changes = [ConfChange(ConfChangeType.REMOVE_NODE, i) for i in sorted(ids) if i != self.id]
        if self.id not in ids:
            me = Member(self.id, self.name, list(self.cfg.initial_advertise_peer_urls), [])
            changes.append(ConfChange(ConfChangeType.ADD_NODE, self.id, me.to_json()))
        extra = []
        for cc in changes:
            index += 1
            extra.append(Entry(term, index, EntryType.CONF_CHANGE, encode_conf_change(cc)))
        hs = HardState(term=max(hs.term, term), vote=hs.vote, commit=index)
        self.wal.save(hs, extra)
        _log.info(
            "forcing restart member",
            **{"local-member-id": f"{self.id:x}", "commit-index": index,
               "removed-member-ids": [f"{i:x}" for i in sorted(ids) if i != self.id]},
        )
        return hs, entries + extra

    def _lock_member_dir(self) -> None:
        """One member per data dir: a second process must fail, not wait on the backend's lock."""
        fd = os.open(self.member_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"data dir {self.data_dir} is in use by another etcd process"
            ) from None
        self._member_dir_fd = fd

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        server_ssl, client_ssl = self.peer_tls
        self.transport = Transport(
            self.id,
            self.cluster.cluster_id,
            self._on_peer_message,
            on_unreachable=self._on_unreachable,
            on_snapshot_status=self._on_snapshot_status,
            snapshot_dir=self.snap_dir,
            on_removed=self._on_removed,
            cluster_info=self.cluster.to_json,
            server_ssl=server_ssl,
            client_ssl=client_ssl,
        )
        await self.transport.start(list(self.cfg.listen_peer_urls))
        for m in self.cluster.members.values():
            self.transport.add_peer(m.id, list(m.peer_urls))
        self._tasks = [
            loop.create_task(self._raft_loop(), name="raft-loop"),
            loop.create_task(self._ticker(), name="ticker"),
            loop.create_task(self._backend_committer(), name="backend-commit"),
            *compactor.start(self),
        ]
        # A single voter needs no election timeout to pass: campaign at once.
        if self._voters() == [self.id]:
            self.node.campaign()
            self._wake.set()

    def _voters(self) -> list[int]:
        return sorted(self.node.status().voters)

    async def publish(self) -> None:
        """Publish this member's name and client URLs through Raft, as etcd does at start."""
        req = membership_pb2.ClusterMemberAttrSetRequest(
            member_ID=self.id,
            member_attributes=membership_pb2.Attributes(
                name=self.name, client_urls=list(self.cfg.advertise_client_urls)
            ),
        )
        await self.propose(F_CLUSTER_MEMBER_ATTR_SET, req.SerializeToString(), req)
        _log.info(
            "published local member to cluster through raft",
            **{"local-member-id": f"{self.id:x}",
               "local-member-attributes": f"{{Name:{self.name} ClientURLs:"
               f"[{' '.join(self.cfg.advertise_client_urls)}]}}",
               "cluster-id": f"{self.cluster.cluster_id:x}"},
        )
        self.published.set()

    async def set_cluster_version(self) -> None:
        """The leader sets the cluster version once; the others wait to learn it."""
        while self.cluster.version is None:
            if self.is_leader():
                _log.info("setting up initial cluster version",
                          **{"cluster-version": CLUSTER_VERSION})
                req = membership_pb2.ClusterVersionSetRequest(ver=CLUSTER_VERSION + ".0")
                try:
                    await self.propose(F_CLUSTER_VERSION_SET, req.SerializeToString(), req)
                except EtcdError as e:
                    _log.warning("failed to set cluster version", error=e.message)
            else:
                await asyncio.sleep(self.heartbeat_s)
        _log.info(
            f"enabled capabilities for version {CLUSTER_VERSION}",
            **{"cluster-version": CLUSTER_VERSION},
        )

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        _log.info(
            "raft loop statistics",
            readies=self.ready_count,
            entries=self.entry_count,
            **{"inline-wal-saves": self.inline_saves,
               "inline-wal-save-avg-us": round(
                   1e6 * self.inline_save_s / max(1, self.inline_saves), 1)},
            **{"applied-index": self.applied_index},
        )
        self._wake.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        if self.transport is not None:
            await self.transport.stop()
        await self.forwarder.close()
        for fut in self._conf_waits.values():
            if not fut.done():
                fut.set_exception(ErrStopped())
        self._conf_waits.clear()
        for path in self._snap_sends.values():
            with contextlib.suppress(OSError):
                os.unlink(path)
        for w in self._waits.values():
            if not w.fut.done():
                w.fut.set_exception(ErrStopped())
        self._waits.clear()
        await self.watchable.aclose()
        try:
            self.backend.commit()
            self.backend.sync()
            self.backend.close()
        finally:
            self.wal.close()
            self._wal_pool.shutdown(wait=True)
            self._io_pool.shutdown(wait=True)

    # ------------------------------------------------------------------ proposing

    def check_quota(self, cost: int) -> None:
        """etcd's quota check: refuse a write that would grow the db past the quota."""
        if (self.db_size + cost) > self.quota_bytes:
            if not self.alarms.active(self.id, rpc_pb2.AlarmType.NOSPACE):
                req = rpc_pb2.AlarmRequest(
                    action=rpc_pb2.AlarmRequest.ACTIVATE,
                    memberID=self.id,
                    alarm=rpc_pb2.AlarmType.NOSPACE,
                )
                self._propose_nowait(F_ALARM, req.SerializeToString(), req)
                self._wake.set()
            raise ErrNoSpace()

    def new_lease_id(self) -> int:
        """A fresh lease ID when the client lets the server choose: etcd derives it from the
        request ID generator, kept positive (int64)."""
        return self._reqid.next() & ((1 << 63) - 1)

    def _propose_nowait(self, field_no: int, payload: bytes, req: Any) -> tuple[int, asyncio.Future]:
        if self._fatal is not None:
            raise ErrStopped()
        if self.committed_index - self.applied_index > MAX_GAP_BETWEEN_APPLY_AND_COMMIT:
            raise ErrTooManyRequests()
        rid = self._reqid.next()
        fut = self._loop.create_future()
        data = encode_internal(rid, field_no, payload)
        try:
            self.node.propose(data)
        except ProposalDropped:
            # No leader yet, or a leader transfer under way: like etcd, wait for a leader
            # (until the request times out) rather than fail at once.
            self._parked.append(data)
        self._waits[data] = _Wait(fut, field_no, req, time.monotonic() + self.request_timeout_s)
        return rid, fut

    async def propose(self, field_no: int, payload: bytes, req: Any) -> ApplyResult:
        """Propose an InternalRaftRequest and wait until it is applied; return its result."""
        if self._stopped:
            raise ErrStopped()
        _rid, fut = self._propose_nowait(field_no, payload, req)
        if not self._cycle_busy and len(self._waits) == 1 and not self._batching_wanted():
            self._run_cycle_inline()
        else:
            self._wake.set()
        if fut.done():
            res = fut.result()
        else:
            try:
                res = await fut
            except asyncio.CancelledError:
                # The client gave up: a proposal still parked for want of a leader is
                # dropped with it (etcd's proposal context ends with the client's).
                if self._parked:
                    self._drop_parked(fut)
                raise
        if isinstance(res, EtcdError):
            raise res
        return res

    def _drop_parked(self, fut: asyncio.Future) -> None:
        for data in self._parked:
            w = self._waits.get(data)
            if w is not None and w.fut is fut:
                del self._waits[data]
                self._parked.remove(data)
                return

    # ------------------------------------------------------------------ reads

    async def linearizable_barrier(self) -> None:
        """Wait until this member has applied everything committed before the call (ReadIndex)."""
        if self.learner:
            raise ErrLearnerNotSupported()  # learners serve serializable reads only
        fut = self._next_read
        if fut is None:
            fut = self._next_read = self._loop.create_future()
            self._wake.set()
        # Shielded: the round is shared, and one reader giving up must not cancel it.
        await asyncio.shield(fut)

    def _start_read_round(self) -> None:
        fut = self._next_read
        if fut is None:
            return
        self._next_read = None
        self._read_seq += 1
        ctx = self._read_seq.to_bytes(8, "big")
        self._read_rounds[ctx] = fut
        self._read_started[ctx] = time.monotonic()
        self.node.read_index(ctx)

    def _wait_applied(self, index: int, fut: asyncio.Future) -> None:
        if self.applied_index >= index:
            if not fut.done():
                fut.set_result(None)
        else:
            self._applied_waiters.append((index, fut))

    # ------------------------------------------------------------------ raft loop

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            self.node.tick()
            self._wake.set()
            self._expire_waits()
            self._unpark()
            self._retry_reads()
            self.lessor.tick()

    def _unpark(self) -> None:
        if not self._parked or not self.lead:
            return
        parked, self._parked = self._parked, []
        for data in parked:
            if data not in self._waits:
                continue  # timed out meanwhile
            try:
                self.node.propose(data)
            except ProposalDropped:
                self._parked.append(data)
        self._wake.set()

    def _retry_reads(self) -> None:
        """A ReadIndex request or its answer can be lost with a leader: ask again (etcd
        retries every 500 ms) until the reader's own deadline gives up."""
        if not self._read_started or not self.lead:
            return
        now = time.monotonic()
        for ctx, started in list(self._read_started.items()):
            fut = self._read_rounds.get(ctx)
            if fut is None or fut.done():
                self._read_rounds.pop(ctx, None)
                self._read_started.pop(ctx, None)
            elif now - started >= READ_INDEX_RETRY_S:
                self._read_started[ctx] = now
                self.node.read_index(ctx)
                self._wake.set()

    def _expire_waits(self) -> None:
        if not self._waits:
            return
        now = time.monotonic()
        expired = []
        for key, w in self._waits.items():
            if w.deadline > now:
                break
            expired.append(key)
        for key in expired:
            w = self._waits.pop(key)
            if w.fut.done():
                continue
            if self._parked and key in self._parked:
                self._parked.remove(key)
                w.fut.set_result(ErrProposeDeadline())  # never reached a leader
            else:
                w.fut.set_result(self._timeout_error(w.deadline - self.request_timeout_s))

    def _timeout_error(self, start: float) -> EtcdError:
        """Which timeout a proposal ran into (etcd's parseProposeCtxErr)."""
        elected = self._lead_elected_at
        if elected - 2 * self.election_s < start < elected:
            return ErrTimeoutDueToLeaderFail()
        lead = self.lead
        if self.transport is not None and lead:
            start_wall = time.time() - (time.monotonic() - start)
            peers = [lead] if lead != self.id else [
                m for m in self.cluster.voters() if m != self.id
            ]
            connected = sum(
                1 for p in peers
                if (t := self.transport.active_since(p)) is not None and t <= start_wall
            )
            need = 1 if lead != self.id else len(self.cluster.voters()) // 2
            if connected < need:
                return ErrTimeoutDueToConnectionLost()
        return ErrTimeout()

    async def _backend_committer(self) -> None:
        while True:
            await asyncio.sleep(self.backend.batch_interval)
            self._maybe_commit_backend()

    def _maybe_commit_backend(self) -> None:
        # The database file only grows when a batch is committed: refresh the size then.
        if self.backend.maybe_commit():
            self.db_size = self.backend.size()

    def commit_backend(self) -> None:
        self.backend.commit()
        self.db_size = self.backend.size()

    async def _raft_loop(self) -> None:
        loop = asyncio.get_running_loop()
        node = self.node
        batch_probe = False
        try:
            while not self._stopped:
                if self.applied_index - self._snapshot_index >= self.snapshot_count:
                    self._cycle_busy = True  # no inline cycles while the snapshot is written
                    await self._snapshot()
                    self._cycle_busy = False
                if self._next_read is not None and self.lead:
                    self._start_read_round()
                if not node.has_ready():
                    self._wake.clear()
                    await self._wake.wait()
                    if self._batching_wanted():
                        await self._gather_batch()
                        batch_probe = True
                    continue
                self._cycle_busy = True
                rd = self._take_ready()
                if batch_probe:
                    batch_probe = False
                    self._batch_size_avg = 0.8 * self._batch_size_avg + 0.2 * len(rd.entries)
                    if self._batch_size_avg < BATCH_MIN_AVG:
                        # Waiting gathers nothing (a lone busy client, not many): stop for a
                        # while, then probe again.
                        self._batch_backoff_until = time.monotonic() + BATCH_BACKOFF_S
                        self._batch_size_avg = BATCH_MIN_AVG + 0.1
                if rd.snapshot is not None:
                    await self._install_snapshot(rd.snapshot)
                if rd.entries or rd.hard_state is not None:
                    if not rd.must_sync or len(self._waits) <= len(rd.entries):
                        # Nothing to fsync (only the commit index moved), or nobody else is
                        # waiting to write: skip two thread hand-offs and write right here.
                        self._persist_inline(rd)
                    else:
                        # Other writers are waiting: fsync off the loop so their proposals
                        # keep arriving and go out together in the next Ready (group commit).
                        await loop.run_in_executor(
                            self._wal_pool, self.wal.save, rd.hard_state, rd.entries
                        )
                self._finish_ready(rd)
                self._cycle_busy = False
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # a storage failure: stop serving rather than lie
            self._fail(e)
            raise

    async def _gather_batch(self) -> None:
        """gRPC hands us one request per loop turn; when the loop is busy, waiting while
        proposals keep coming lets many share one Ready and fsync."""
        # Proposals not yet in a Ready: a leader's waits also hold entries awaiting a quorum.
        pending = self.node.raft.log.unstable.entries
        now = time.monotonic()
        deadline = now + BATCH_WINDOW_S
        last_n, last_t = len(pending), now
        while True:
            await asyncio.sleep(BATCH_GAP_S / 2)
            pending = self.node.raft.log.unstable.entries
            n, now = len(pending), time.monotonic()
            if n >= BATCH_MAX or now >= deadline:
                return
            if n != last_n:
                last_n, last_t = n, now
            elif now - last_t >= BATCH_GAP_S:
                return

    def _fail(self, e: BaseException) -> None:
        self._fatal = e
        _log.error("raft loop failed; stopping", error=repr(e))
        for w in self._waits.values():
            if not w.fut.done():
                w.fut.set_result(ErrStopped())
        self._waits.clear()
        self.fatal_event.set()

    def _take_ready(self):
        rd = self.node.ready()
        self.ready_count += 1
        self.entry_count += len(rd.entries)
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state)
        if rd.messages and self.lead == self.id:
            # A leader sends before its own fsync (Raft thesis 10.2.1): the commit index its
            # messages carry only counts entries of Readies already persisted. Followers
            # answer from _finish_ready, once their state is durable.
            self._send(rd.messages)
            rd.messages = []
        return rd

    def _persist_inline(self, rd) -> None:
        t0 = time.monotonic()
        self.wal.save(rd.hard_state, rd.entries)
        took = time.monotonic() - t0
        self._blocked_s += took
        self.inline_save_s += took
        self.inline_saves += 1

    def _finish_ready(self, rd) -> None:
        """After the Ready's entries and hard state are durable: apply, answer, advance."""
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)
            self.committed_index = rd.hard_state.commit
        if rd.entries:
            self.storage.append(rd.entries)
        if rd.messages:
            self._send(rd.messages)  # a follower answers only once its state is durable
        if rd.committed_entries:
            self._apply_entries(rd.committed_entries)
        if rd.read_states:
            for rs in rd.read_states:
                self._read_started.pop(rs.request_ctx, None)
                fut = self._read_rounds.pop(rs.request_ctx, None)
                if fut is not None:
                    self._wait_applied(rs.index, fut)
        self.node.advance(rd)
        self._maybe_commit_backend()

    def _run_cycle_inline(self) -> None:
        """Drive Raft from the proposing handler itself: used when the loop is idle and
        this is the only write, saving two task switches on a lone client's put."""
        self._cycle_busy = True
        try:
            unstable = self.node.raft.log.unstable
            while self.node.has_ready():
                if unstable.snapshot is not None:
                    self._wake.set()  # installing a snapshot is the loop's (async) work
                    return
                rd = self._take_ready()
                if rd.entries or rd.hard_state is not None:
                    self._persist_inline(rd)
                self._finish_ready(rd)
        except BaseException as e:
            self._fail(e)
            raise
        finally:
            self._cycle_busy = False
        if self.applied_index - self._snapshot_index >= self.snapshot_count:
            self._wake.set()

    def _batching_wanted(self) -> bool:
        return self._loop_saturated() and time.monotonic() >= self._batch_backoff_until

    def _loop_saturated(self) -> bool:
        """Whether this thread was nearly always busy recently: CPU time plus time blocked
        in inline fsyncs, against wall time."""
        now = time.monotonic()
        span = now - self._busy_wall
        if span >= BUSY_SAMPLE_S:
            cpu = time.thread_time()
            self._busy = (cpu - self._busy_cpu + self._blocked_s) / span
            self._busy_wall, self._busy_cpu, self._blocked_s = now, cpu, 0.0
        return self._busy >= SATURATED_BUSY_FRACTION

    def _on_soft_state(self, ss) -> None:
        lead = ss.lead
        if lead != self.lead:
            self.lead = lead
            if lead:
                self.leader_changes += 1
                self._lead_elected_at = time.monotonic()
                if self._parked:
                    self._loop.call_soon(self._unpark)  # not in the middle of a Ready
                _log.info(
                    "raft.node: elected leader",
                    **{"local-member-id": f"{self.id:x}", "leader": f"{lead:x}",
                       "term": self.node.term},
                )
                self.leader_ready.set()
            else:
                _log.warning("raft.node: lost leader", **{"local-member-id": f"{self.id:x}"})
            for cb in self.on_leader_change:
                cb(lead)

    # ------------------------------------------------------------------ apply

    def _apply_entries(self, entries: list[Entry]) -> None:
        kv = self.kv
        waits = self._waits
        skip_to = kv.consistent_index
        for e in entries:
            idx = e.index
            if idx <= self.applied_index:
                continue
            if e.type == EntryType.CONF_CHANGE:
                self._apply_conf_change(e)
            elif e.data and idx > skip_to:
                w = waits.pop(e.data, None)
                if w is not None:
                    field_no, req = w.field_no, w.req
                else:
                    _rid, field_no, req = decode_internal(e.data)
                try:
                    res: Any = self._dispatch(field_no, req)
                except EtcdError as err:
                    res = err
                if w is not None and not w.fut.done():
                    w.fut.set_result(res)
            if idx > skip_to:
                kv.consistent_index = idx
            self.applied_index = idx
        if self._applied_waiters:
            keep = []
            for index, fut in self._applied_waiters:
                if index <= self.applied_index:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    keep.append((index, fut))
            self._applied_waiters = keep

    def _apply_conf_change(self, e: Entry) -> None:
        cc = decode_conf_change(e.data)
        m = Member.from_json(cc.context) if cc.context else None
        fut = self._conf_waits.pop(cc.id, None) if cc.id else None
        err = self._validate_conf_change(cc, m)
        if err is not None:
            # Rejected here, deterministically on every member: Raft ignores node ID 0.
            cc = ConfChange(cc.type, 0, id=cc.id)
        self._conf_state = self.node.apply_conf_change(cc)
        if err is None:
            self._apply_membership(cc, m)
            self._refresh_self()
        if fut is not None and not fut.done():
            fut.set_result(err)

    def _validate_conf_change(self, cc: ConfChange, m: Member | None) -> EtcdError | None:
        """etcd's ValidateConfigurationChange, run when the change is applied."""
        cluster = self.cluster
        nid = cc.node_id
        if nid in cluster.removed:
            return ErrMemberNotFound()  # etcd: membership.ErrIDRemoved
        cur = cluster.members.get(nid)
        t = cc.type
        if t in (ConfChangeType.ADD_NODE, ConfChangeType.ADD_LEARNER_NODE):
            if m is None:  # bootstrap entries carry no member: the cluster already has it
                return None
            promote = t == ConfChangeType.ADD_NODE and cur is not None and not m.is_learner
            if promote:
                return None if cur.is_learner else ErrMemberNotLearner()
            if cur is not None:
                return ErrMemberExist()
            urls = {u for x in cluster.members.values() for u in x.peer_urls}
            if any(u in urls for u in m.peer_urls):
                return ErrPeerURLExist()
            if t == ConfChangeType.ADD_LEARNER_NODE and sum(
                1 for x in cluster.members.values() if x.is_learner
            ) >= MAX_LEARNERS:
                return ErrTooManyLearners()
        elif t in (ConfChangeType.REMOVE_NODE, ConfChangeType.UPDATE_NODE):
            if cur is None:
                return ErrMemberNotFound()
            if t == ConfChangeType.UPDATE_NODE and m is not None:
                urls = {u for x in cluster.members.values() if x.id != nid for u in x.peer_urls}
                if any(u in urls for u in m.peer_urls):
                    return ErrPeerURLExist()
        return None

    def _apply_membership(self, cc: ConfChange, m: Member | None) -> None:
        cluster = self.cluster
        tr = self.transport
        t = cc.type
        cur = cluster.members.get(cc.node_id)
        if t in (ConfChangeType.ADD_NODE, ConfChangeType.ADD_LEARNER_NODE):
            if cur is not None:
                if cur.is_learner and t == ConfChangeType.ADD_NODE:
                    cur.is_learner = False
                    cluster.save_member(self.backend, cur)
                    _log.info("promote member", **{"promoted-member-id": f"{cur.id:x}",
                                                   "cluster-id": f"{cluster.cluster_id:x}"})
            elif m is not None:
                m.is_learner = t == ConfChangeType.ADD_LEARNER_NODE
                cluster.add(m)
                cluster.save_member(self.backend, m)
                if tr is not None:
                    tr.add_peer(m.id, list(m.peer_urls))
                _log.info("added member", **{"added-peer-id": f"{m.id:x}",
                                             "added-peer-peer-urls": m.peer_urls,
                                             "cluster-id": f"{cluster.cluster_id:x}"})
        elif t == ConfChangeType.REMOVE_NODE:
            cluster.remove(cc.node_id, self.backend)
            _log.info("removed member", **{"removed-remote-peer-id": f"{cc.node_id:x}",
                                           "cluster-id": f"{cluster.cluster_id:x}"})
            if cc.node_id == self.id:
                self._removed_self()
            elif tr is not None:
                tr.remove_peer(cc.node_id)
        elif t == ConfChangeType.UPDATE_NODE and m is not None and cur is not None:
            cur.peer_urls = list(m.peer_urls)
            cluster.save_member(self.backend, cur)
            if tr is not None:
                tr.update_peer(cur.id, list(cur.peer_urls))
            _log.info("updated member", **{"updated-remote-peer-id": f"{cur.id:x}",
                                           "updated-remote-peer-urls": cur.peer_urls})

    def _refresh_self(self) -> None:
        me = self.cluster.members.get(self.id)
        self.learner = me is not None and me.is_learner

    def _removed_self(self) -> None:
        if self.removed:
            return
        self.removed = True
        _log.warning("the member has been permanently removed from the cluster",
                     **{"local-member-id": f"{self.id:x}"})
        self.fatal_event.set()

    # ------------------------------------------------------------------ membership changes

    async def propose_conf_change(self, cc: ConfChange) -> list[Member]:
        """Propose a membership change through Raft and wait until it is applied here."""
        if self._stopped or self._fatal is not None:
            raise ErrStopped()
        if not self.lead:
            raise ErrNoLeader()
        cc.id = self._reqid.next()
        fut = self._loop.create_future()
        self._conf_waits[cc.id] = fut
        try:
            self.node.propose_conf_change(cc)
        except ProposalDropped:
            self._conf_waits.pop(cc.id, None)
            raise ErrNoLeader() from None
        self._wake.set()
        try:
            async with asyncio.timeout(self.request_timeout_s):
                err = await fut
        except TimeoutError:
            raise ErrTimeout() from None
        finally:
            self._conf_waits.pop(cc.id, None)
        if err is not None:
            raise err
        return self.cluster.member_list()

    async def move_leader(self, transferee: int) -> None:
        """Hand leadership to ``transferee`` and wait until it leads (etcd's MoveLeader)."""
        m = self.cluster.members.get(transferee)
        if m is None or m.is_learner:
            raise ErrBadLeaderTransferee()
        lead = self.lead
        _log.info("leadership transfer starting",
                  **{"local-member-id": f"{self.id:x}", "current-leader-member-id": f"{lead:x}",
                     "transferee-member-id": f"{transferee:x}"})
        t0 = time.monotonic()
        self.node.transfer_leader(transferee)
        self._wake.set()
        deadline = t0 + self.request_timeout_s
        while self.lead != transferee:
            if time.monotonic() >= deadline:
                raise ErrTimeoutLeaderTransfer()
            await asyncio.sleep(self.heartbeat_s)
        _log.info("leadership transfer finished",
                  **{"local-member-id": f"{self.id:x}", "old-leader-member-id": f"{lead:x}",
                     "new-leader-member-id": f"{transferee:x}",
                     "took": f"{time.monotonic() - t0:.3f}s"})

    def learner_in_sync(self, member_id: int) -> bool:
        """etcd's isLearnerReady: the learner's match is within 90% of the leader's."""
        st = self.node.status()
        pr = st.progress.get(member_id)
        mine = st.progress.get(self.id)
        if pr is None or mine is None:
            return False
        return pr.match >= mine.match * 0.9

    def check_add_voter(self) -> None:
        """--strict-reconfig-check for adding a voter (etcd's mayAddMember)."""
        voters = [self.cluster.members[m] for m in self.cluster.voters()]
        started = sum(1 for m in voters if m.name)
        # One started member may always grow to two: restoring a cluster from one survivor.
        if not (started == 1 and len(voters) == 1) and started < (len(voters) + 1) // 2 + 1:
            raise ErrMemberNotEnoughStarted()
        if self._connected_since(voters) != len(voters):
            raise ErrUnhealthy()

    def check_remove_member(self, member_id: int) -> None:
        """--strict-reconfig-check for removing a member (etcd's mayRemoveMember)."""
        cur = self.cluster.members.get(member_id)
        if cur is None or cur.is_learner:
            return  # unknown IDs fail when applied; learners never hold up a quorum
        voters = [self.cluster.members[m] for m in self.cluster.voters()]
        rest = [m for m in voters if m.id != member_id]
        if sum(1 for m in rest if m.name) < len(rest) // 2 + 1:
            raise ErrMemberNotEnoughStarted()
        if member_id != self.id and not self._peer_active(member_id):
            return  # a member that is down is not part of the active quorum
        if self._connected_since(voters) - 1 < 1 + (len(voters) - 1) // 2:
            raise ErrUnhealthy()

    def _connected_since(self, members) -> int:
        """Members (this one included) connected for at least the health interval."""
        since = time.time() - HEALTH_INTERVAL_S
        n = 0
        for m in members:
            if m.id == self.id:
                n += 1
            elif self.transport is not None:
                t = self.transport.active_since(m.id)
                if t is not None and t <= since:
                    n += 1
        return n

    def _peer_active(self, member_id: int) -> bool:
        return self.transport is not None and self.transport.active_since(member_id) is not None

    # ------------------------------------------------------------------ peer messages

    def _send(self, msgs: list[Message]) -> None:
        tr = self.transport
        if tr is None:
            return
        plain = msgs
        if any(m.type == MessageType.SNAP for m in msgs):
            plain = []
            for m in msgs:
                if m.type == MessageType.SNAP:
                    self._spawn(self._send_snapshot(m))
                else:
                    plain.append(m)
        if plain:
            tr.send(plain)
            tr.flush()

    def _spawn(self, coro) -> None:
        t = self._loop.create_task(coro)
        self._tasks.append(t)
        t.add_done_callback(lambda t: t in self._tasks and self._tasks.remove(t))

    async def _send_snapshot(self, m: Message) -> None:
        """Send a follower the whole database with the Raft snapshot (etcd's merged
        snapshot): the image is at least as new as the snapshot's index."""
        to = m.to
        path = os.path.join(self.snap_dir, f"{SNAP_SEND_PREFIX}{to:016x}.db")
        try:
            self.commit_backend()
            await self._loop.run_in_executor(self._io_pool, self.backend.snapshot, path)
        except Exception as e:  # noqa: BLE001 - report and let Raft retry
            _log.warning("failed to create database snapshot for follower", error=str(e))
            self.node.report_snapshot(to, True)
            self._wake.set()
            return
        self._snap_sends[to] = path
        if self.transport is None:
            return
        self.transport.send_snapshot(m, path)

    def _on_snapshot_status(self, peer: int, failed: bool) -> None:
        path = self._snap_sends.pop(peer, None)
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if self._stopped:
            return
        self.node.report_snapshot(peer, failed)
        self._wake.set()

    def _on_peer_message(self, m: Message) -> None:
        if self._stopped or self._fatal is not None:
            return
        if m.type == MessageType.SNAP:
            m.context = b""  # the image waits at <snap_dir>/<index>.snap.db
        self.node.step(m)
        self._wake.set()

    def _on_unreachable(self, peer: int) -> None:
        if not self._stopped:
            self.node.report_unreachable(peer)

    def _on_removed(self) -> None:
        self._removed_self()

    async def _install_snapshot(self, snap: Snapshot) -> None:
        """A leader's snapshot for this follower: persist it, then swap in its database."""
        meta = snap.metadata
        db = os.path.join(self.snap_dir, f"{meta.index:016x}.snap.db")
        if not os.path.exists(db):
            raise RuntimeError(f"failed to open database snapshot file {db}: not found")
        _log.info("applying snapshot", **{"incoming-leader-snapshot-index": meta.index,
                                          "current-applied-index": self.applied_index})
        await self._loop.run_in_executor(self._wal_pool, self.snapshotter.save, snap)
        await self._loop.run_in_executor(self._wal_pool, self.wal.save_snapshot, meta)
        self.backend.replace(db)
        self.lessor.restore()
        self.kv.restore()
        self.watchable.restore()
        self.alarms.reload()
        self.cluster.load(self.backend)
        self._refresh_self()
        self.db_size = self.backend.size()
        self.storage.apply_snapshot(snap)
        self._snapshot_index = meta.index
        self._conf_state = meta.conf_state
        self.applied_index = meta.index
        tr = self.transport
        if tr is not None:
            for mem in self.cluster.members.values():
                tr.add_peer(mem.id, list(mem.peer_urls))
            for pid in tr.peer_ids():
                if pid not in self.cluster.members:
                    tr.remove_peer(pid)
        _log.info("applied snapshot", **{"applied-index": meta.index,
                                         "consistent-index": self.kv.consistent_index})

    def _dispatch(self, field_no: int, req: Any) -> Any:
        ap = self.applier
        if field_no == F_PUT:
            if self.alarms.nospace:
                raise ErrNoSpace()
            return ApplyResult(ap.put(req), self.kv.rev)
        if field_no == F_TXN:
            if self.alarms.nospace and txn_has_put(req):
                raise ErrNoSpace()
            return ApplyResult(ap.txn(req), self.kv.rev)
        if field_no == F_DELETE_RANGE:
            return ApplyResult(ap.delete_range(req), self.kv.rev)
        if field_no == F_COMPACTION:
            return ApplyResult(ap.compact(req), self.kv.rev)
        if field_no == F_ALARM:
            return ApplyResult(self.alarms.apply(req), self.kv.rev)
        if field_no == F_LEASE_GRANT:
            if self.alarms.nospace:
                raise ErrNoSpace()
            return ApplyResult(self.lessor.apply_grant(req), self.kv.rev)
        if field_no == F_LEASE_REVOKE:
            return ApplyResult(self.lessor.apply_revoke(req), self.kv.rev)
        if field_no == F_LEASE_CHECKPOINT:
            return ApplyResult(self.lessor.apply_checkpoint(req), self.kv.rev)
        if field_no == F_CLUSTER_MEMBER_ATTR_SET:
            m = self.cluster.members.get(req.member_ID)
            if m is not None:
                m.name = req.member_attributes.name
                m.client_urls = list(req.member_attributes.client_urls)
                self.cluster.save(self.backend)
            return ApplyResult(None, self.kv.rev)
        if field_no == F_CLUSTER_VERSION_SET:
            ver = req.ver.rsplit(".", 1)[0] if req.ver.count(".") >= 2 else req.ver
            self.cluster.version = ver
            self.cluster.save(self.backend)
            _log.info("set initial cluster version", **{"cluster-version": ver})
            return ApplyResult(None, self.kv.rev)
        if field_no == F_RANGE:
            return ApplyResult(ap.range(req), self.kv.rev)
        raise EtcdError(f"etcdserver: unknown internal request field {field_no}")

    # ------------------------------------------------------------------ snapshots

    async def _snapshot(self) -> None:
        """Snapshot the state at the applied index and release the WAL behind it."""
        index = self.applied_index
        term = self.storage.term(index)
        self.commit_backend()
        await self._loop.run_in_executor(self._io_pool, self.backend.sync)
        meta = SnapshotMetadata(index=index, term=term, conf_state=self._conf_state)
        snap = Snapshot(metadata=meta, data=self.cluster.to_snapshot())
        await self._loop.run_in_executor(self._wal_pool, self.snapshotter.save, snap)
        await self._loop.run_in_executor(self._wal_pool, self.wal.save_snapshot, meta)
        self.storage.create_snapshot(index, self._conf_state, snap.data)
        self._snapshot_index = index
        compact_to = index - self.catchup_entries
        if compact_to > self.storage.first_index():
            self.storage.compact(compact_to)
        _log.info("saved snapshot", **{"snapshot-index": index})
        max_wals = self.cfg.max_wals
        max_snaps = self.cfg.max_snapshots
        await self._loop.run_in_executor(
            self._wal_pool, self._purge_files, index, max_wals, max_snaps
        )

    def _purge_files(self, index: int, max_wals: int, max_snaps: int) -> None:
        if max_wals > 0:
            self.wal.purge(index, max_wals)
        if max_snaps > 0:
            self.snapshotter.purge(max_snaps)

    # ------------------------------------------------------------------ status

    @property
    def term(self) -> int:
        return self.node.term

    def pending_proposals(self) -> int:
        """Proposals waiting to be applied (etcd_server_proposals_pending)."""
        return len(self._waits)

    def is_leader(self) -> bool:
        return self.lead == self.id

    def version(self) -> str:
        return ETCD_VERSION

    def header_bytes(self, revision: int | None = None) -> bytes:
        return self.header.header(self.kv.rev if revision is None else revision, self.node.term)


def _join_cluster(
    initial: dict[str, list[str]], name: str, remote: bytes | None
) -> RaftCluster:
    """--initial-cluster-state existing: adopt the remote cluster's IDs, after checking that
    its members' peer URLs are the ones --initial-cluster names (etcd's
    ValidateClusterAndAssignIDs)."""
    if not remote:
        raise RuntimeError("cannot fetch cluster info from peer urls")
    info = json.loads(remote)
    members = [Member.from_dict(d) for d in info["members"]]
    local_urls = sorted(u for urls in initial.values() for u in urls)
    remote_urls = sorted(u for m in members for u in m.peer_urls)
    if local_urls != remote_urls:
        if len(members) != len(initial):
            why = "member count is unequal"
        else:
            why = f"unmatched member while checking PeerURLs ({remote_urls} != {local_urls})"
        raise RuntimeError(f"error validating peerURLs: {why}")
    mine = sorted(initial[name])
    local_id = 0
    for m in members:
        if sorted(m.peer_urls) == mine:
            local_id = m.id
    if not local_id:
        raise RuntimeError("member not found in the remote cluster's member list")
    cluster = RaftCluster(int(info["clusterID"]), local_id)
    for m in members:
        if m.id == local_id:
            m.name = name
        cluster.add(m)
    cluster.removed = set(info.get("removed", []))
    return cluster


def _encode_wal_metadata(member: int, cluster: int) -> bytes:
    return member.to_bytes(8, "big") + cluster.to_bytes(8, "big")


def _decode_wal_metadata(raw: bytes) -> tuple[int, int]:
    return int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:16], "big")
