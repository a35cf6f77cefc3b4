"""The Raft state machine, after etcd's raft/raft.go (v3.4) with the newer
term-aware reject hints. Pure: no I/O, no clock; time advances through tick().

Deliberate differences from etcd v3.4, all invisible on the wire:
- A leader's proposals are appended at once but broadcast lazily (``flush``,
  run by RawNode before building a Ready), so N proposals between two Readys
  produce one MsgApp per follower instead of N.
- Consecutive proposals forwarded by a follower are merged into one MsgProp.
- A leader that removes or demotes itself steps down (etcd-io/raft's
  StepDownOnRemoval).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import IntEnum

from .confchange import decode_conf_change
from .log import RaftLog
from .storage import (
    CompactedError,
    MemoryStorage,
    RaftError,
    SnapshotTemporarilyUnavailableError,
    UnavailableError,
)
from .tracker import Progress, ProgressState, ProgressTracker, VoteResult
from .types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    ReadState,
    Snapshot,
)
from .types import MessageType as MT


class ProposalDroppedError(RaftError):
    """The proposal was not appended: no leader, or a leader transfer is in progress."""


ProposalDropped = ProposalDroppedError


class StepLocalMsgError(RaftError):
    """A local-only message type was passed to step()."""


class StateType(IntEnum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3


CAMPAIGN_PRE_ELECTION = b"CampaignPreElection"
CAMPAIGN_ELECTION = b"CampaignElection"
CAMPAIGN_TRANSFER = b"CampaignTransfer"

LOCAL_MSGS = frozenset({MT.HUP, MT.BEAT, MT.UNREACHABLE, MT.SNAP_STATUS, MT.CHECK_QUORUM})
RESPONSE_MSGS = frozenset(
    {
        MT.APP_RESP,
        MT.VOTE_RESP,
        MT.HEARTBEAT_RESP,
        MT.UNREACHABLE,
        MT.READ_INDEX_RESP,
        MT.PRE_VOTE_RESP,
    }
)
_TERMED = frozenset({MT.VOTE, MT.VOTE_RESP, MT.PRE_VOTE, MT.PRE_VOTE_RESP})
_UNTERMED = frozenset({MT.PROP, MT.READ_INDEX})


def vote_resp_type(t: int) -> MT:
    return MT.VOTE_RESP if t == MT.VOTE else MT.PRE_VOTE_RESP


@dataclass
class RaftConfig:
    id: int
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_size_per_msg: int = 1 << 20
    max_inflight_msgs: int = 256
    applied: int = 0  # last applied index at restart
    rng: random.Random | None = None
    # Cap on committed entries per Ready (None: no cap).
    max_committed_size_per_ready: int | None = None

    def validate(self) -> None:
        if self.id == NONE:
            raise ValueError("cannot use none as id")
        if self.heartbeat_tick <= 0:
            raise ValueError("heartbeat tick must be greater than 0")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election tick must be greater than heartbeat tick")
        if self.max_inflight_msgs <= 0:
            raise ValueError("max inflight messages must be greater than 0")


class _ReadIndexStatus:
    __slots__ = ("req", "index", "acks")

    def __init__(self, req: Message, index: int) -> None:
        self.req = req
        self.index = index
        self.acks: set[int] = set()


class ReadOnly:
    """Pending ReadIndex requests awaiting a heartbeat quorum (ReadOnlySafe)."""

    __slots__ = ("pending", "queue")

    def __init__(self) -> None:
        self.pending: dict[bytes, _ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: int, m: Message) -> None:
        ctx = m.entries[0].data
        if ctx in self.pending:
            return
        self.pending[ctx] = _ReadIndexStatus(m, index)
        self.queue.append(ctx)

    def recv_ack(self, id: int, ctx: bytes) -> set[int] | None:
        rs = self.pending.get(ctx)
        if rs is None:
            return None
        rs.acks.add(id)
        return rs.acks

    def advance(self, ctx: bytes) -> list[_ReadIndexStatus]:
        """Dequeue every request up to and including ``ctx``."""
        try:
            i = self.queue.index(ctx)
        except ValueError:
            return []
        done = self.queue[: i + 1]
        del self.queue[: i + 1]
        return [self.pending.pop(c) for c in done]

    def last_pending_request_ctx(self) -> bytes:
        return self.queue[-1] if self.queue else b""


class Raft:
    def __init__(self, config: RaftConfig, storage: MemoryStorage) -> None:
        config.validate()
        self.id = config.id
        self.log = RaftLog(storage, config.max_committed_size_per_ready)
        self.rng = config.rng if config.rng is not None else random.Random(config.id)
        self.max_msg_size = config.max_size_per_msg
        self.prs = ProgressTracker(config.max_inflight_msgs)
        self.election_timeout = config.election_tick
        self.heartbeat_timeout = config.heartbeat_tick
        self.check_quorum = config.check_quorum
        self.pre_vote = config.pre_vote

        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.state = StateType.FOLLOWER
        self.is_learner = False
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.read_only = ReadOnly()
        self.pending_read_index_msgs: list[Message] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout
        # Conf-change entries up to here were applied to prs by us (bootstrap or
        # restart replay), so they do not block campaigning.
        self.conf_replayed_to = 0
        # Proposals appended since the last broadcast (see flush()).
        self._unsent = False

        hs, cs = storage.initial_state()
        self._restore_conf(cs)
        if hs != HardState():
            self._load_state(hs)
        self._replay_conf_changes(storage.snapshot().metadata.index, self.log.committed)
        if config.applied > 0:
            self.log.applied_to(config.applied)
        self.become_follower(self.term, NONE)

    # -- state ----------------------------------------------------------------

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _load_state(self, hs: HardState) -> None:
        if hs.commit < self.log.committed or hs.commit > self.log.last_index():
            raise AssertionError(
                f"{self.id:x} state.commit {hs.commit} is out of range "
                f"[{self.log.committed}, {self.log.last_index()}]"
            )
        self.log.committed = hs.commit
        self.term = hs.term
        self.vote = hs.vote

    def _restore_conf(self, cs: ConfState) -> None:
        self.prs = ProgressTracker(self.prs.max_inflight)
        last = self.log.last_index()
        for v in cs.voters:
            self.prs.make_voter(v, last)
        for lr in cs.learners:
            self.prs.make_learner(lr, last)
        pr = self.prs.progress.get(self.id)
        self.is_learner = pr is not None and pr.is_learner

    def _replay_conf_changes(self, lo: int, hi: int) -> None:
        """Apply the committed conf changes in (lo, hi] that no snapshot covers.

        On restart the configuration must include every committed change, even
        those the application has yet to re-apply, so the node campaigns with
        the right voter set. Re-applying them later is idempotent.
        """
        if hi <= lo:
            return
        ents = self.log.slice(max(lo + 1, self.log.first_index()), hi + 1)
        for e in ents:
            if e.type == EntryType.CONF_CHANGE:
                self._apply_conf_change_to_prs(decode_conf_change(e.data))
        pr = self.prs.progress.get(self.id)
        self.is_learner = pr is not None and pr.is_learner
        self.conf_replayed_to = max(self.conf_replayed_to, hi)

    # -- sending --------------------------------------------------------------

    def send(self, m: Message) -> None:
        m.frm = self.id
        t = m.type
        if t in _TERMED:
            if m.term == 0:
                raise AssertionError(f"term should be set when sending {MT(t).name}")
        elif t not in _UNTERMED:
            m.term = self.term
        self.msgs.append(m)

    def send_append(self, to: int) -> None:
        self.maybe_send_append(to, True)

    def maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        pr = self.prs.progress[to]
        if pr.is_paused():
            return False
        log = self.log
        try:
            term = log.term(pr.next - 1)
            ents = log.entries(pr.next, self.max_msg_size)
        except (CompactedError, UnavailableError):
            if not send_if_empty:
                return False
            return self._send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        prev = pr.next - 1
        if ents:
            if pr.state == ProgressState.REPLICATE:
                last = ents[-1].index
                pr.next = last + 1
                pr.inflights.add(last)
            elif pr.state == ProgressState.PROBE:
                pr.probe_sent = True
            else:
                raise AssertionError(f"sending append in unhandled state {pr.state}")
        self.send(
            Message(MT.APP, to=to, index=prev, log_term=term, entries=ents, commit=log.committed)
        )
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False
        try:
            snap = self.log.snapshot()
        except SnapshotTemporarilyUnavailableError:
            return False
        if snap.metadata.index == 0:
            raise AssertionError("need non-empty snapshot")
        pr.become_snapshot(snap.metadata.index)
        self.send(Message(MT.SNAP, to=to, snapshot=snap))
        return True

    def send_heartbeat(self, to: int, ctx: bytes) -> None:
        commit = min(self.prs.progress[to].match, self.log.committed)
        self.send(Message(MT.HEARTBEAT, to=to, commit=commit, context=ctx))

    def bcast_append(self) -> None:
        for id in self.prs.progress:
            if id != self.id:
                self.maybe_send_append(id, True)

    def bcast_heartbeat(self, ctx: bytes | None = None) -> None:
        if ctx is None:
            ctx = self.read_only.last_pending_request_ctx()
        for id in self.prs.progress:
            if id != self.id:
                self.send_heartbeat(id, ctx)

    def flush(self) -> None:
        """Commit/broadcast proposals appended since the last call (leader only)."""
        if not self._unsent:
            return
        self._unsent = False
        if self.state != StateType.LEADER:
            return
        if self.maybe_commit():
            self.bcast_append()
        for id in self.prs.progress:
            if id != self.id:
                # Fill the follower's window (several messages if size-limited).
                while self.maybe_send_append(id, False):
                    pass

    # -- transitions ----------------------------------------------------------

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(
            self.election_timeout
        )
        self.lead_transferee = NONE
        self.prs.reset_votes()
        last = self.log.last_index()
        mi = self.prs.max_inflight
        for id, pr in list(self.prs.progress.items()):
            npr = Progress(last + 1, mi, is_learner=pr.is_learner)
            if id == self.id:
                npr.match = last
            self.prs.progress[id] = npr
        self.pending_conf_index = 0
        self.read_only = ReadOnly()
        self.pending_read_index_msgs = []
        self._unsent = False

    def become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.state = StateType.FOLLOWER

    def become_candidate(self) -> None:
        if self.state == StateType.LEADER:
            raise AssertionError("invalid transition [leader -> candidate]")
        self._reset(self.term + 1)
        self.vote = self.id
        self.state = StateType.CANDIDATE

    def become_pre_candidate(self) -> None:
        if self.state == StateType.LEADER:
            raise AssertionError("invalid transition [leader -> pre-candidate]")
        # No term change and no vote: a pre-election leaves no durable trace.
        self.prs.reset_votes()
        self.lead = NONE
        self.state = StateType.PRE_CANDIDATE

    def become_leader(self) -> None:
        if self.state == StateType.FOLLOWER:
            raise AssertionError("invalid transition [follower -> leader]")
        self._reset(self.term)
        self.lead = self.id
        self.state = StateType.LEADER
        self.prs.progress[self.id].become_replicate()
        # Conservatively assume the tail may hold an unapplied conf change.
        self.pending_conf_index = self.log.last_index()
        self.append_entries([Entry(0, 0)])

    # -- ticks ----------------------------------------------------------------

    def tick(self) -> None:
        if self.state == StateType.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(MT.HUP, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(MT.CHECK_QUORUM, frm=self.id))
            if self.state == StateType.LEADER and self.lead_transferee != NONE:
                self.lead_transferee = NONE  # transfer did not finish in time
        if self.state != StateType.LEADER:
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(MT.BEAT, frm=self.id))

    # -- elections --------------------------------------------------------------

    def promotable(self) -> bool:
        pr = self.prs.progress.get(self.id)
        return pr is not None and not pr.is_learner

    def _has_unapplied_conf(self) -> bool:
        log = self.log
        lo = max(log.applied, self.conf_replayed_to) + 1
        if log.committed < lo:
            return False
        return any(e.type == EntryType.CONF_CHANGE for e in log.slice(lo, log.committed + 1))

    def hup(self, transfer: bool = False) -> None:
        if self.state == StateType.LEADER:
            return
        if not self.promotable():
            return
        if self._has_unapplied_conf():
            return
        if transfer:
            self.campaign(CAMPAIGN_TRANSFER)
        elif self.pre_vote:
            self.campaign(CAMPAIGN_PRE_ELECTION)
        else:
            self.campaign(CAMPAIGN_ELECTION)

    def campaign(self, kind: bytes) -> None:
        if kind == CAMPAIGN_PRE_ELECTION:
            self.become_pre_candidate()
            vote_msg = MT.PRE_VOTE
            term = self.term + 1  # the term we would campaign at; ours is unchanged
        else:
            self.become_candidate()
            vote_msg = MT.VOTE
            term = self.term
        if self.poll(self.id, True) == VoteResult.WON:
            # Single voter: won without asking anyone.
            if kind == CAMPAIGN_PRE_ELECTION:
                self.campaign(CAMPAIGN_ELECTION)
            else:
                self.become_leader()
            return
        li, lt = self.log.last_index(), self.log.last_term()
        ctx = CAMPAIGN_TRANSFER if kind == CAMPAIGN_TRANSFER else b""
        for id in sorted(self.prs.voters):
            if id == self.id:
                continue
            self.send(Message(vote_msg, to=id, term=term, index=li, log_term=lt, context=ctx))

    def poll(self, id: int, granted: bool) -> VoteResult:
        self.prs.record_vote(id, granted)
        return self.prs.tally_votes()[2]

    # -- log ----------------------------------------------------------------------

    def append_entries(self, ents: list[Entry]) -> None:
        li = self.log.last_index()
        term = self.term
        for i, e in enumerate(ents, li + 1):
            e.term = term
            e.index = i
        li = self.log.append(ents)
        self.prs.progress[self.id].maybe_update(li)
        self.maybe_commit()

    def propose_fast(self, data: bytes) -> bool:
        """O(1) local proposal on a leader; False if the slow path must decide."""
        if self.state != StateType.LEADER or self.lead_transferee != NONE:
            return False
        pr = self.prs.progress.get(self.id)
        if pr is None:
            return False
        idx = self.log.last_index() + 1
        self.log.append_one(Entry(self.term, idx, EntryType.NORMAL, data))
        pr.match = idx
        pr.next = idx + 1
        self._unsent = True
        return True

    def maybe_commit(self) -> bool:
        return self.log.maybe_commit(self.prs.committed(), self.term)

    def committed_entry_in_current_term(self) -> bool:
        return self.log.zero_term_on_compacted(self.log.committed) == self.term

    # -- step -----------------------------------------------------------------------

    def step(self, m: Message) -> None:
        t = m.type
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if t == MT.VOTE or t == MT.PRE_VOTE:
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.check_quorum
                    and self.lead != NONE
                    and self.election_elapsed < self.election_timeout
                )
                if not force and in_lease:
                    return  # we heard from a live leader recently: ignore disruptors
            if t == MT.PRE_VOTE or (t == MT.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes never change our term
            elif t == MT.APP or t == MT.HEARTBEAT or t == MT.SNAP:
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and (t == MT.HEARTBEAT or t == MT.APP):
                # Tell a stale leader about our term so that it steps down.
                self.send(Message(MT.APP_RESP, to=m.frm))
            elif t == MT.PRE_VOTE:
                self.send(Message(MT.PRE_VOTE_RESP, to=m.frm, term=self.term, reject=True))
            return

        if t == MT.HUP:
            self.hup()
        elif t == MT.VOTE or t == MT.PRE_VOTE:
            can_vote = (
                self.vote == m.frm
                or (self.vote == NONE and self.lead == NONE)
                or (t == MT.PRE_VOTE and m.term > self.term)
            )
            if can_vote and self.log.is_up_to_date(m.index, m.log_term):
                self.send(Message(vote_resp_type(t), to=m.frm, term=m.term))
                if t == MT.VOTE:
                    self.election_elapsed = 0
                    self.vote = m.frm
            else:
                self.send(Message(vote_resp_type(t), to=m.frm, term=self.term, reject=True))
        elif self.state == StateType.LEADER:
            self._step_leader(m)
        elif self.state == StateType.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MT.BEAT:
            self.bcast_heartbeat()
            return
        if t == MT.CHECK_QUORUM:
            own = self.prs.progress.get(self.id)
            if own is not None:
                own.recent_active = True
            if not self.prs.quorum_active():
                self.become_follower(self.term, NONE)
            for id, pr in self.prs.progress.items():
                if id != self.id:
                    pr.recent_active = False
            return
        if t == MT.PROP:
            if not m.entries:
                raise AssertionError("stepped empty MsgProp")
            if self.id not in self.prs.progress:
                raise ProposalDroppedError("leader is not a member")
            if self.lead_transferee != NONE:
                raise ProposalDroppedError("leadership transfer in progress")
            ents = m.entries
            for i, e in enumerate(ents):
                if e.type == EntryType.CONF_CHANGE:
                    if self.pending_conf_index > self.log.applied:
                        # Only one unapplied conf change at a time (as etcd):
                        # the refused one becomes an empty entry.
                        ents[i] = Entry(0, 0)
                    else:
                        self.pending_conf_index = self.log.last_index() + i + 1
            self.append_entries(ents)
            self._unsent = True
            return
        if t == MT.READ_INDEX:
            if self.prs.is_singleton():
                self._respond_read_index(m, self.log.committed)
            elif not self.committed_entry_in_current_term():
                # Our commit index may lag the true one until we commit in our term.
                self.pending_read_index_msgs.append(m)
            else:
                self._start_read_index(m)
            return

        pr = self.prs.progress.get(m.frm)
        if pr is None:
            return
        if t == MT.APP_RESP:
            pr.recent_active = True
            if m.reject:
                hint = m.reject_hint
                if m.log_term > 0:
                    hint, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
                if pr.maybe_decr_to(m.index, hint):
                    if pr.state == ProgressState.REPLICATE:
                        pr.become_probe()
                    self.send_append(m.frm)
                return
            old_paused = pr.is_paused()
            if not pr.maybe_update(m.index):
                return
            if pr.state == ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
                pr.become_probe()
                pr.become_replicate()
            elif pr.state == ProgressState.REPLICATE:
                pr.inflights.free_le(m.index)
            if self.maybe_commit():
                self._release_pending_read_index()
                self.bcast_append()
            elif old_paused:
                self.send_append(m.frm)
            while self.maybe_send_append(m.frm, False):
                pass
            if m.frm == self.lead_transferee and pr.match == self.log.last_index():
                self.send(Message(MT.TIMEOUT_NOW, to=m.frm))
        elif t == MT.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state == ProgressState.REPLICATE and pr.inflights.full():
                pr.inflights.free_first_one()
            if pr.match < self.log.last_index():
                self.send_append(m.frm)
            if not m.context:
                return
            acks = self.read_only.recv_ack(m.frm, m.context)
            if acks is None or self.prs.vote_result(acks) != VoteResult.WON:
                return
            for rs in self.read_only.advance(m.context):
                self._respond_read_index(rs.req, rs.index)
        elif t == MT.SNAP_STATUS:
            if pr.state != ProgressState.SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = 0
            pr.become_probe()
            # Wait for a heartbeat response before probing again.
            pr.probe_sent = True
        elif t == MT.UNREACHABLE:
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
        elif t == MT.TRANSFER_LEADER:
            if pr.is_learner:
                return
            transferee = m.frm
            if self.lead_transferee != NONE:
                if self.lead_transferee == transferee:
                    return
                self.lead_transferee = NONE
            if transferee == self.id:
                return
            self.election_elapsed = 0
            self.lead_transferee = transferee
            if pr.match == self.log.last_index():
                self.send(Message(MT.TIMEOUT_NOW, to=transferee))
            else:
                self.send_append(transferee)

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        my_resp = MT.PRE_VOTE_RESP if self.state == StateType.PRE_CANDIDATE else MT.VOTE_RESP
        if t == MT.PROP:
            raise ProposalDroppedError("no leader")
        if t == MT.APP:
            self.become_follower(m.term, m.frm)
            self._handle_append_entries(m)
        elif t == MT.HEARTBEAT:
            self.become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t == MT.SNAP:
            self.become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif t == my_resp:
            res = self.poll(m.frm, not m.reject)
            if res == VoteResult.WON:
                if self.state == StateType.PRE_CANDIDATE:
                    self.campaign(CAMPAIGN_ELECTION)
                else:
                    self.become_leader()
                    self.bcast_append()
            elif res == VoteResult.LOST:
                self.become_follower(self.term, NONE)

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MT.PROP:
            if self.lead == NONE:
                raise ProposalDroppedError("no leader")
            last = self.msgs[-1] if self.msgs else None
            if last is not None and last.type == MT.PROP and last.to == self.lead:
                last.entries.extend(m.entries)  # batch forwarded proposals
            else:
                m.to = self.lead
                self.send(m)
        elif t == MT.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append_entries(m)
        elif t == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif t == MT.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif t == MT.TRANSFER_LEADER:
            if self.lead != NONE:
                m.to = self.lead
                self.send(m)
        elif t == MT.TIMEOUT_NOW:
            if self.promotable():
                # Leader transfer: skip pre-vote and the vote lease.
                self.campaign(CAMPAIGN_TRANSFER)
        elif t == MT.READ_INDEX:
            if self.lead != NONE:
                m.to = self.lead
                self.send(m)
        elif t == MT.READ_INDEX_RESP:
            if len(m.entries) == 1:
                self.read_states.append(ReadState(m.index, m.entries[0].data))

    # -- follower handlers --------------------------------------------------------------

    def _handle_append_entries(self, m: Message) -> None:
        log = self.log
        if m.index < log.committed:
            self.send(Message(MT.APP_RESP, to=m.frm, index=log.committed))
            return
        last_new = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self.send(Message(MT.APP_RESP, to=m.frm, index=last_new))
            return
        # Hint: the last index whose term is <= the probe's term, so the leader
        # skips a whole divergent term per round trip.
        hint_index = min(m.index, log.last_index())
        hint_index, hint_term = log.find_conflict_by_term(hint_index, m.log_term)
        self.send(
            Message(
                MT.APP_RESP,
                to=m.frm,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        self.send(Message(MT.HEARTBEAT_RESP, to=m.frm, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        if m.snapshot is not None and self.restore(m.snapshot):
            self.send(Message(MT.APP_RESP, to=m.frm, index=self.log.last_index()))
        else:
            self.send(Message(MT.APP_RESP, to=m.frm, index=self.log.committed))

    def restore(self, s: Snapshot) -> bool:
        """Install a leader's snapshot; False if it is stale or already covered."""
        md = s.metadata
        if md.index <= self.log.committed:
            return False
        if self.state != StateType.FOLLOWER:
            self.become_follower(self.term + 1, NONE)  # should never happen (as etcd)
            return False
        cs = md.conf_state
        if self.id not in cs.voters and self.id not in cs.learners:
            return False
        if self.log.match_term(md.index, md.term):
            self.log.commit_to(md.index)
            return False
        self.log.restore(s)
        self._restore_conf(cs)
        self.conf_replayed_to = max(self.conf_replayed_to, md.index)
        pr = self.prs.progress.get(self.id)
        if pr is not None:
            pr.maybe_update(pr.next - 1)
        return True

    # -- read index ---------------------------------------------------------------------

    def _respond_read_index(self, req: Message, index: int) -> None:
        if req.frm == NONE or req.frm == self.id:
            self.read_states.append(ReadState(index, req.entries[0].data))
        else:
            self.send(Message(MT.READ_INDEX_RESP, to=req.frm, index=index, entries=req.entries))

    def _start_read_index(self, m: Message) -> None:
        ctx = m.entries[0].data
        self.read_only.add_request(self.log.committed, m)
        self.read_only.recv_ack(self.id, ctx)
        self.bcast_heartbeat(ctx)

    def _release_pending_read_index(self) -> None:
        if not self.pending_read_index_msgs or not self.committed_entry_in_current_term():
            return
        msgs = self.pending_read_index_msgs
        self.pending_read_index_msgs = []
        for m in msgs:
            self._start_read_index(m)

    # -- configuration ----------------------------------------------------------------

    def _apply_conf_change_to_prs(self, cc: ConfChange) -> None:
        prs = self.prs
        nid = cc.node_id
        if nid == NONE:
            return  # the application rejected this change downstream of Raft (as etcd does)
        t = cc.type
        last = self.log.last_index()
        if t == ConfChangeType.ADD_NODE:
            prs.make_voter(nid, last)
        elif t == ConfChangeType.ADD_LEARNER_NODE:
            if prs.voters == {nid}:
                raise ValueError("removed all voters")
            prs.make_learner(nid, last)
        elif t == ConfChangeType.REMOVE_NODE:
            if prs.voters == {nid}:
                raise ValueError("removed all voters")
            prs.remove(nid)
        elif t == ConfChangeType.UPDATE_NODE:
            pass
        else:
            raise ValueError(f"unexpected conf change type {t}")

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        self._apply_conf_change_to_prs(cc)
        return self._switch_to_config()

    def _switch_to_config(self) -> ConfState:
        cs = self.prs.conf_state()
        pr = self.prs.progress.get(self.id)
        self.is_learner = pr is not None and pr.is_learner
        if self.state != StateType.LEADER:
            return cs
        if pr is None or self.is_learner:
            self.become_follower(self.term, NONE)
            return cs
        if not cs.voters:
            return cs
        # Removing a lagging voter may have advanced the commit index.
        if self.maybe_commit():
            self.bcast_append()
        else:
            for id in self.prs.progress:
                if id != self.id:
                    self.maybe_send_append(id, False)
        if self.lead_transferee != NONE and self.lead_transferee not in self.prs.progress:
            self.lead_transferee = NONE
        return cs
