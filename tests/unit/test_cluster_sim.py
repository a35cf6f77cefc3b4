"""Deterministic KV cluster simulation over petcd.raft, checked for linearizability.

3 or 5 members in one process, each a RawNode plus a small KV state machine
(put/delete/compare-and-set encoded in entry data), on simulated time (one
tick per round). The network drops, delays, duplicates, reorders and
partitions messages. Members crash (also in the middle of handling a Ready)
and restart with ONLY what reached durable storage: a Ready's snapshot, hard
state and entries become durable at the persist step (a crash during it can
tear off a suffix of the entries and lose the hard state); messages go out
after it; the KV is volatile and rebuilt from the durable snapshot plus
re-applied committed entries.

Clients issue ops against random members: writes are proposed (followers
forward them) and acknowledged when the proposing member applies them
(matched by request id); reads go through ReadIndex and are answered once
applied >= the read index. A client that gives up records an unknown outcome.

Checked after every Ready: at most one leader per term; log matching (an
(index, term) pair always carries the same data and the same previous term);
leader completeness (a new leader holds every applied entry); state-machine
safety (the same entry, and the same resulting state, at each index on every
member); no request applied twice. At the end: the history is linearizable
(tests/lincheck.py), every acknowledged write is in the applied log, and all
members converge to the state a replay of the log gives.

Modes: "server" (the default) schedules Ready handling as petcd's server does: a
leader sends a Ready's messages before its fsync, a follower after it, and an
fsync may stay in flight across rounds while the node keeps stepping peer
messages, ticks, proposals and ReadIndex requests (a crash then loses the whole
Ready, after the leader's messages went out). "persist_first" persists every
Ready before sending anything.

Replay one seed: PETCD_SIM_SEED=<n> [PETCD_SIM_MODE=server|persist_first];
run n seeds: PETCD_SIM_SEEDS=<n>.
"""

from __future__ import annotations

import os
import pickle
import random
import zlib
from dataclasses import dataclass

import pytest

from petcd.raft import (
    MemoryStorage,
    ProposalDropped,
    RaftConfig,
    RawNode,
    Ready,
    StateType,
    decode_conf_change,
)
from petcd.raft.types import Entry, EntryType, Message, MessageType
from tests.lincheck import CAS, DELETE, GET, PUT, UNKNOWN, Op, Recorder, check
from tests.unit.test_raft_sim import _term_of as _term
from tests.unit.test_raft_sim import wire_copy

KEYS = ("a", "b", "c")
ELECTION_TICK = 10


def kv_apply(kv: dict, kind: str, key: str, arg) -> object:
    """The state machine: etcd Put / DeleteRange / Txn(If value == expect Then put)."""
    if kind == PUT:
        kv[key] = arg
        return None
    if kind == DELETE:
        return kv.pop(key, None) is not None
    exp, new = arg
    if kv.get(key) == exp:
        kv[key] = new
        return True
    return False


class Crash(Exception):
    """A member died while handling a Ready."""


@dataclass
class Request:
    client: Client
    op: Op
    rid: int = 0  # writes: the request id in the entry; reads: the ReadIndex ctx number
    member: int = 0


class Client:
    def __init__(self, id: int) -> None:
        self.id = id
        self.req: Request | None = None
        self.deadline = 0  # give up (write: unknown outcome) at this round
        self.retry_at = 0  # (re)submit the pending request at this round
        self.seen: list = [None]  # values seen, as cas expectations


class Member:
    def __init__(self, id: int) -> None:
        self.id = id
        self.storage = MemoryStorage()  # durable: survives crashes
        self.node: RawNode | None = None
        self.kv: dict = {}
        self.applied = 0
        self.chain = 0  # hash chain over applied entries
        self.writes: dict[int, Request] = {}  # rid -> proposed here, awaiting apply
        self.reads: dict[bytes, Request] = {}  # ReadIndex ctx -> awaiting its read state
        self.ready_reads: list[tuple[int, Request]] = []  # (read index, request)
        self.lead = 0  # the leader as the last Ready's soft state said (the server's self.lead)
        self.pending: tuple[Ready, int] | None = None  # (Ready, crash stage) being fsynced
        self.sent_unpersisted = False  # a leader's Ready went out, its fsync not yet done

    @property
    def alive(self) -> bool:
        return self.node is not None


class Sim:
    def __init__(
        self,
        seed: int,
        *,
        unsafe_reads: bool = False,
        early_ack: bool = False,
        send_first: bool = False,
        leader_send_first: bool = False,
    ) -> None:
        self.seed = seed
        # Deliberately broken modes, to show that the checks catch bugs.
        self.unsafe_reads = unsafe_reads  # serve gets from local state, no ReadIndex
        self.early_ack = early_ack  # acknowledge a write once proposed, not applied
        self.send_first = send_first  # send a Ready's messages before persisting it
        # What petcd's server does (etcdserver._raft_loop / _run_cycle_inline, etcd's
        # raftNode too): a LEADER sends its Ready's messages before its own fsync (Raft
        # thesis 10.2.1), a follower only after. The fsync may run off the event loop,
        # so peer messages, ticks, proposals and ReadIndex requests are stepped into
        # the node while it is in flight; the next Ready is taken only after advance.
        self.leader_send_first = leader_send_first
        # Its own stream, so the other modes replay their seeds exactly as before.
        self.io_rng = random.Random(seed * 1_000_003 + 17)
        self.p_slow_fsync = self.io_rng.choice([0.0, 0.3, 0.7]) if leader_send_first else 0.0
        self.p_fsync_done = self.io_rng.choice([0.2, 0.5, 0.9])
        rng = self.rng = random.Random(seed)
        n = rng.choice([3, 5])
        self.ids = list(range(1, n + 1))
        self.pre_vote = rng.random() < 0.7
        self.check_quorum = rng.random() < 0.7
        self.drop = rng.choice([0.0, 0.05, 0.15])
        self.dup = rng.choice([0.0, 0.05])
        self.max_delay = rng.choice([0, 2, 5])
        self.snapshot_every = rng.choice([0, 6, 20])
        self.p_crash = rng.choice([0.0, 0.01, 0.03])
        self.p_torn = rng.choice([0.0, 0.005, 0.02])  # crash inside a Ready, per Ready
        self.p_partition = rng.choice([0.0, 0.01, 0.03])
        self.max_size_per_msg = rng.choice([1 << 20, 200])
        self.clients = [Client(i) for i in range(rng.choice([2, 4, 7]))]
        self.p_issue = rng.choice([0.2, 0.5])
        self.timeout = rng.choice([3, 6]) * ELECTION_TICK

        self.now = 0
        self.members = {i: Member(i) for i in self.ids}
        self.queue: list[tuple[int, int, Message]] = []  # (deliver at, seq, msg)
        self.seq = 0
        self.snap_reports: list[tuple[int, int, bool]] = []
        self.cut: set[tuple[int, int]] = set()
        self.hist = Recorder()
        self.next_rid = 0
        # Global observations for the safety checks.
        self.leaders: dict[int, int] = {}  # term -> leader
        self.leader_checked: set[tuple[int, int]] = set()
        self.applied_log: dict[int, tuple[int, int, bytes]] = {}  # index -> (term, type, data)
        self.chains: dict[int, int] = {}  # index -> state hash chain after it
        self.rid_index: dict[int, int] = {}  # request id -> index it was applied at
        self.log_pairs: dict[tuple[int, int], tuple[bytes, int]] = {}  # (i, t) -> data, prev term
        self.acked: set[int] = set()
        self.stats = {"crash": 0, "mid_ready_crash": 0, "snap_installed": 0, "restart": 0}
        if leader_send_first:
            # A crash while a leader's fsync is in flight, after it sent that Ready.
            self.stats |= {
                "slow_fsync": 0,
                "crash_in_fsync": 0,
                "leader_sent_early": 0,
                "leader_crash_after_send": 0,
            }
        for m in self.members.values():
            m.node = RawNode(self._config(m.id, 0), m.storage, peers=self.ids)
        for m in self.members.values():
            self.process(m)

    def _config(self, id: int, applied: int) -> RaftConfig:
        return RaftConfig(
            id=id,
            election_tick=ELECTION_TICK,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            max_size_per_msg=self.max_size_per_msg,
            applied=applied,
            rng=random.Random(self.seed * 7919 + id * 31 + self.now),
        )

    # -- failures ---------------------------------------------------------------

    def partition(self) -> None:
        ids = list(self.ids)
        self.rng.shuffle(ids)
        k = self.rng.randrange(1, len(ids))
        a, b = ids[:k], ids[k:]
        self.cut = {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}

    def crash(self, m: Member) -> None:
        self.stats["crash"] += 1
        if m.pending is not None:
            self.stats["crash_in_fsync"] += 1
        if m.sent_unpersisted:
            self.stats["leader_crash_after_send"] += 1
            m.sent_unpersisted = False
        m.node = None
        m.pending = None  # the fsync in flight never completed: nothing of it is durable
        m.lead = 0
        # Its clients see the connection drop: a write's fate is unknown; a read is retried.
        for req in list(m.writes.values()):
            self.give_up(req.client)
        for req in list(m.reads.values()) + [r for _i, r in m.ready_reads]:
            req.client.retry_at = self.now + 1
        m.writes.clear()
        m.reads.clear()
        m.ready_reads.clear()
        m.kv = {}  # volatile
        for _t, _s, msg in self.queue:
            if msg.to == m.id and msg.type == MessageType.SNAP:
                self.snap_reports.append((msg.frm, msg.to, True))
        self.queue = [q for q in self.queue if q[2].to != m.id]

    def restart(self, m: Member) -> None:
        self.stats["restart"] += 1
        snap = m.storage.snapshot()
        if snap.data:
            kv, m.chain = pickle.loads(snap.data)
            m.kv = dict(kv)
        else:
            m.kv, m.chain = {}, 0
        m.applied = snap.metadata.index
        m.lead = 0
        m.node = RawNode(self._config(m.id, m.applied), m.storage)

    # -- Ready handling ------------------------------------------------------------

    def process(self, m: Member) -> None:
        try:
            if m.pending is not None:
                if self.io_rng.random() >= self.p_fsync_done:
                    return  # the fsync is still running
                (rd, stage), m.pending = m.pending, None
                self.finish_ready(m, rd, stage)
            while m.node is not None and m.node.has_ready():
                rd = m.node.ready()
                stage = self.begin_ready(m, rd)
                if self.p_slow_fsync and self.io_rng.random() < self.p_slow_fsync:
                    # Persisted off the loop: the node keeps stepping meanwhile.
                    self.stats["slow_fsync"] += 1
                    m.pending = (rd, stage)
                    return
                self.finish_ready(m, rd, stage)
        except Crash:
            self.stats["mid_ready_crash"] += 1
            self.crash(m)

    def begin_ready(self, m: Member, rd: Ready) -> int:
        """Take a Ready: what happens before the fsync point. Returns the crash stage."""
        stage = -1
        if self.p_torn and self.rng.random() < self.p_torn:
            stage = self.rng.randrange(5)
        if rd.soft_state is not None:
            m.lead = rd.soft_state.lead
        if self.send_first or (self.leader_send_first and m.lead == m.id and rd.messages):
            if not self.send_first:
                self.stats["leader_sent_early"] += 1
                m.sent_unpersisted = bool(rd.entries)
            for msg in rd.messages:
                self.send(msg)
            rd.messages = []
        if stage == 0:
            raise Crash  # nothing of this Ready became durable
        return stage

    def finish_ready(self, m: Member, rd: Ready, stage: int) -> None:
        node = m.node
        assert node is not None
        st = m.storage
        # Persist (the fsync point): snapshot, then entries + hard state as one WAL write.
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        if stage == 1 and rd.entries and rd.snapshot is None:
            k = self.rng.randrange(len(rd.entries))
            if k:
                self.persist_entries(st, rd.entries[:k])
            raise Crash  # torn write: a prefix of the entries, no hard state
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        self.persist_entries(st, rd.entries)
        m.sent_unpersisted = False
        if stage == 2:
            raise Crash  # durable, but nothing sent
        for msg in rd.messages:  # empty if sent before the fsync
            self.send(msg)
        if stage == 3:
            raise Crash
        if rd.snapshot is not None:
            kv, m.chain = pickle.loads(rd.snapshot.data)
            m.kv = dict(kv)
            m.applied = rd.snapshot.metadata.index
            self.stats["snap_installed"] += 1
            assert self.chains.get(m.applied, m.chain) == m.chain, "snapshot state differs"
            # Reads waiting for an index the snapshot covers are served below.
        for e in rd.committed_entries:
            self.apply(m, e)
        for rs in rd.read_states:
            req = m.reads.pop(rs.request_ctx, None)
            if req is not None:
                m.ready_reads.append((rs.index, req))
        self.serve_reads(m)
        if stage == 4:
            raise Crash  # applied (and acknowledged), not advanced
        node.advance(rd)
        if self.snapshot_every and m.applied - st.snapshot().metadata.index > self.snapshot_every:
            data = pickle.dumps((sorted(m.kv.items()), m.chain))
            st.create_snapshot(m.applied, node.conf_state(), data)
            keep = self.rng.randrange(3)
            if m.applied - keep > st.first_index():
                st.compact(m.applied - keep)
        self.check_leader(m)

    def persist_entries(self, st: MemoryStorage, ents: list[Entry]) -> None:
        if not ents:
            return
        st.append(ents)
        # Log matching, incrementally: an (index, term) pair always names the
        # same data and follows the same term, on every member, forever.
        prev = st.term(ents[0].index - 1)
        for e in ents:
            got = (e.data, prev)
            want = self.log_pairs.setdefault((e.index, e.term), got)
            assert want == got, f"log matching: ({e.index}, {e.term}) is {got} and {want}"
            prev = e.term

    def apply(self, m: Member, e: Entry) -> None:
        assert e.index == m.applied + 1, (m.id, e.index, m.applied)
        rec = (e.term, int(e.type), e.data)
        prev = self.applied_log.setdefault(e.index, rec)
        assert prev == rec, (
            f"state machine safety: member {m.id} applied {rec} at {e.index}, others {prev}"
        )
        m.applied = e.index
        m.chain = zlib.crc32(e.data, m.chain)
        assert self.chains.setdefault(e.index, m.chain) == m.chain
        if e.type == EntryType.CONF_CHANGE:
            assert m.node is not None
            m.node.apply_conf_change(decode_conf_change(e.data))
            return
        if not e.data:
            return  # a new leader's empty entry
        rid, kind, key, arg = pickle.loads(e.data)
        assert self.rid_index.setdefault(rid, e.index) == e.index, f"request {rid} applied twice"
        res = kv_apply(m.kv, kind, key, arg)
        req = m.writes.pop(rid, None)
        if req is not None:
            self.complete(req, res)

    def serve_reads(self, m: Member) -> None:
        if not m.ready_reads:
            return
        later = []
        for idx, req in m.ready_reads:
            if m.applied >= idx:
                if req.client.req is req:
                    self.complete(req, m.kv.get(req.op.key))
            else:
                later.append((idx, req))
        m.ready_reads = later

    def check_leader(self, m: Member) -> None:
        node = m.node
        if node is None or node.state != StateType.LEADER:
            return
        prev = self.leaders.setdefault(node.term, m.id)
        assert prev == m.id, f"election safety: two leaders in term {node.term}: {prev}, {m.id}"
        if (m.id, node.term) in self.leader_checked:
            return
        self.leader_checked.add((m.id, node.term))
        log = node.raft.log
        first = log.first_index()
        for idx, (term, _ty, _d) in self.applied_log.items():
            if idx >= first:
                assert log.term(idx) == term, (
                    f"leader completeness: leader {m.id} of term {node.term} lacks entry {idx}"
                )

    # -- network ---------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        if (msg.frm, msg.to) in self.cut or self.rng.random() < self.drop:
            if msg.type == MessageType.SNAP:
                self.snap_reports.append((msg.frm, msg.to, True))  # the transport notices
            return
        copies = 1
        # etcd's streams are TCP: a proposal is never duplicated in flight
        # (a client retry is a new request), every other message may be.
        if self.dup and msg.type != MessageType.PROP and self.rng.random() < self.dup:
            copies = 2
        for _ in range(copies):
            self.seq += 1
            at = self.now + (self.rng.randint(0, self.max_delay) if self.max_delay else 0)
            self.queue.append((at, self.seq, wire_copy(msg)))

    def deliver(self) -> None:
        reports, self.snap_reports = self.snap_reports, []
        for frm, to, failed in reports:
            node = self.members[frm].node
            if node is not None:
                node.report_snapshot(to, failed)
        due = [q for q in self.queue if q[0] <= self.now]
        if not due:
            return
        self.queue = [q for q in self.queue if q[0] > self.now]
        self.rng.shuffle(due)
        for _t, _s, msg in due:
            m = self.members[msg.to]
            if m.node is None or (msg.frm, msg.to) in self.cut:
                if msg.type == MessageType.SNAP:
                    self.snap_reports.append((msg.frm, msg.to, True))
                continue
            m.node.step(msg)
            if msg.type == MessageType.SNAP:
                self.snap_reports.append((msg.frm, msg.to, False))

    # -- clients ------------------------------------------------------------------------

    def complete(self, req: Request, ret: object) -> None:
        c = req.client
        assert c.req is req
        self.hist.ret(req.op, ret)
        if req.op.kind != GET:
            self.acked.add(req.rid)
        if req.op.kind == GET:
            c.seen.append(ret)
        elif req.op.kind == PUT or (req.op.kind == CAS and ret):
            c.seen.append(req.op.arg if req.op.kind == PUT else req.op.arg[1])
        c.req = None

    def give_up(self, c: Client) -> None:
        req = c.req
        if req is None:
            return
        m = self.members.get(req.member)
        if m is not None:
            m.writes.pop(req.rid, None)
            m.reads.pop(b"r%d" % req.rid, None)
            m.ready_reads = [x for x in m.ready_reads if x[1] is not req]
        c.req = None  # the op keeps ret_t = UNKNOWN

    def new_op(self, c: Client, final_key: str | None = None) -> None:
        rng = self.rng
        self.next_rid += 1
        if final_key is not None:
            kind, key, arg = GET, final_key, None
        else:
            key = rng.choice(KEYS)
            kind = rng.choices([PUT, GET, CAS, DELETE], [4, 4, 3, 1])[0]
            val = f"{c.id}.{self.next_rid}"
            arg = (rng.choice(c.seen[-4:]), val) if kind == CAS else val if kind == PUT else None
        op = self.hist.call(c.id, kind, key, arg)
        c.req = Request(c, op, self.next_rid)
        c.deadline = self.now + self.timeout
        c.retry_at = self.now

    def submit(self, c: Client) -> None:
        """(Re)send the client's pending request to a random member."""
        req = c.req
        assert req is not None
        old = self.members[req.member] if req.member else None
        if old is not None and req.op.kind == GET:
            old.reads.pop(b"r%d" % req.rid, None)
            old.ready_reads = [x for x in old.ready_reads if x[1] is not req]
        m = self.members[self.rng.choice(self.ids)]
        c.retry_at = self.now + 1
        if m.node is None:
            return  # connection refused: try another member next round
        req.member = m.id
        if req.op.kind == GET and self.unsafe_reads:
            self.complete(req, m.kv.get(req.op.key))
            return
        if req.op.kind == GET:
            self.next_rid += 1  # a fresh ctx, so a late answer to the old one is ignored
            req.rid = self.next_rid
            m.reads[b"r%d" % req.rid] = req
            m.node.read_index(b"r%d" % req.rid)
            c.retry_at = self.now + 2 * ELECTION_TICK  # no answer by then: ask elsewhere
            return
        op = req.op
        try:
            m.node.propose(pickle.dumps((req.rid, op.kind, op.key, op.arg)))
        except ProposalDropped:
            return  # no leader: certainly not in any log, so retrying is safe
        if self.early_ack:
            self.complete(req, True if op.kind != PUT else None)
            return
        m.writes[req.rid] = req
        c.retry_at = c.deadline  # in flight: wait for the outcome

    def drive_clients(self, issue: bool) -> None:
        for c in self.clients:
            if c.req is None:
                if issue and self.rng.random() < self.p_issue:
                    self.new_op(c)
                else:
                    continue
            if self.now >= c.deadline:
                self.give_up(c)
            elif self.now >= c.retry_at:
                self.submit(c)

    # -- running ---------------------------------------------------------------------------

    def step(self, faults: bool = True, issue: bool = True) -> None:
        rng = self.rng
        self.now += 1
        if faults:
            if self.p_partition and rng.random() < self.p_partition:
                self.partition()
            elif self.cut and rng.random() < 0.08:
                self.cut = set()
            if self.p_crash and rng.random() < self.p_crash:
                m = self.members[rng.choice(self.ids)]
                if m.alive:
                    self.crash(m)
            if rng.random() < 0.05:
                for m in self.members.values():
                    if not m.alive:
                        self.restart(m)
        for m in self.members.values():
            if m.node is not None:
                m.node.tick()
        self.drive_clients(issue)
        for m in self.members.values():
            self.process(m)
        self.deliver()
        for m in self.members.values():
            self.process(m)

    def leader(self) -> Member | None:
        best = None
        for m in self.members.values():
            if m.node is not None and m.node.state == StateType.LEADER:
                if best is None or m.node.term > best.node.term:  # type: ignore[union-attr]
                    best = m
        return best

    def run(self, rounds: int = 500) -> None:
        for _ in range(rounds):
            self.step()
        # Heal: no more faults; pending ops finish or time out.
        self.cut = set()
        self.drop = self.dup = 0.0
        self.p_torn = 0.0
        for m in self.members.values():
            if m.pending is not None:
                m.pending = (m.pending[0], -1)  # a crash drawn before the heal: cancelled
            if not m.alive:
                self.restart(m)
        for _ in range(2 * self.timeout + 10 * ELECTION_TICK):
            self.step(faults=False, issue=False)
            if all(c.req is None for c in self.clients) and self.converged():
                break
        assert all(c.req is None for c in self.clients)
        assert self.converged(), "the healed cluster did not converge"
        # Final linearizable reads of every key, through random members.
        for key in KEYS:
            c = self.clients[0]
            self.new_op(c, final_key=key)
            for _ in range(10 * ELECTION_TICK):
                if c.req is None:
                    break
                self.step(faults=False, issue=False)
            assert c.req is None, f"final read of {key!r} did not complete"
        self.final_checks()

    def converged(self) -> bool:
        lead = self.leader()
        if lead is None:
            return False
        last = lead.node.raft.log.last_index()  # type: ignore[union-attr]
        return all(m.applied == last for m in self.members.values())

    def final_checks(self) -> None:
        # Every member holds the state a replay of the applied log gives.
        kv: dict = {}
        for idx in sorted(self.applied_log):
            _t, ty, data = self.applied_log[idx]
            if ty == EntryType.NORMAL and data:
                _rid, kind, key, arg = pickle.loads(data)
                kv_apply(kv, kind, key, arg)
        for m in self.members.values():
            assert m.kv == kv, f"member {m.id} state differs from the log replay"
        # No acknowledged write was lost.
        lost = self.acked - self.rid_index.keys()
        assert not lost, f"acknowledged writes missing from the log: {sorted(lost)}"
        self.check_log_matching()
        r = check(self.hist.ops, max_steps=2_000_000)
        assert r.ok, r.explanation

    def check_log_matching(self) -> None:
        sts = [m.storage for m in self.members.values()]
        for a in sts:
            for b in sts:
                if a is b:
                    continue
                lo = max(a.first_index(), b.first_index())
                hi = min(a.last_index(), b.last_index())
                for i in range(hi, lo - 1, -1):
                    if _term(a, i) == _term(b, i):
                        assert a.entries(lo, i + 1) == b.entries(lo, i + 1)
                        break


# The server's schedule (leader sends before its fsync, fsyncs overlap stepping) is
# the default; "persist_first" (everyone persists, then sends) is the textbook order.
MODES = {"server": {"leader_send_first": True}, "persist_first": {}}


def run_seed(seed: int, mode: str = "server") -> Sim:
    sim = Sim(seed, **MODES[mode])
    try:
        sim.run()
    except AssertionError as e:
        raise AssertionError(
            f"cluster sim ({mode}) failed with seed {seed} (replay: PETCD_SIM_SEED={seed} "
            f"PETCD_SIM_MODE={mode} pytest tests/unit/test_cluster_sim.py): {e}"
        ) from e
    return sim


CHUNKS = 4
_one = os.environ.get("PETCD_SIM_SEED")
_one_mode = os.environ.get("PETCD_SIM_MODE", "server")
N_SEEDS = int(os.environ.get("PETCD_SIM_SEEDS", "160"))


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_schedules(chunk: int) -> None:
    if _one is not None:
        if chunk == 0:
            run_seed(int(_one), _one_mode)
        return
    for seed in range(chunk, N_SEEDS, CHUNKS):
        run_seed(seed, "server")


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_schedules_persist_first(chunk: int) -> None:
    if _one is not None:
        return
    for seed in range(chunk, N_SEEDS // 2, CHUNKS):
        run_seed(seed, "persist_first")


def test_history_is_rich() -> None:
    """The workload exercises what the checker needs: concurrency, all op kinds,
    unknown outcomes, and snapshots/crashes/restarts actually happen."""
    kinds: set[str] = set()
    unknown = acked = cas_ok = 0
    stats: dict[str, int] = {}
    for seed in range(10):
        sim = run_seed(seed)
        kinds |= {o.kind for o in sim.hist.ops}
        unknown += sum(o.ret_t == UNKNOWN for o in sim.hist.ops)
        cas_ok += sum(o.kind == CAS and o.ret is True for o in sim.hist.ops)
        acked += len(sim.acked)
        for k, v in sim.stats.items():
            stats[k] = stats.get(k, 0) + v
    assert kinds == {PUT, GET, CAS, DELETE}
    assert acked > 200 and unknown > 10 and cas_ok > 10
    assert all(v > 0 for v in stats.values()), stats


def _failures(seeds: range, **mode: bool) -> list[str]:
    out = []
    for seed in seeds:
        sim = Sim(seed, **mode)
        if mode.get("send_first"):
            sim.p_torn = 0.05
        try:
            sim.run()
        except AssertionError as e:
            out.append(str(e))
    return out


def test_checks_catch_stale_local_reads() -> None:
    fails = _failures(range(8), unsafe_reads=True)
    assert fails and all("not linearizable" in f for f in fails)


def test_checks_catch_acks_before_commit() -> None:
    fails = _failures(range(4), early_ack=True)
    assert fails and any("acknowledged writes missing" in f for f in fails)


def test_checks_catch_sending_before_persisting() -> None:
    """With messages sent before the fsync point, a crash loses state that
    others relied on: raft itself panics or a safety check fires."""
    fails = _failures(range(12), send_first=True)
    assert len(fails) >= 2, fails
    assert any("leader completeness" in f or "out of range" in f for f in fails)
