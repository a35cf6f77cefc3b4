"""RawNode: the application's handle on the Raft state machine, with etcd's
classic (v3.4) Ready contract.

Loop: ``if has_ready(): rd = ready()``; persist ``rd.snapshot``,
``rd.hard_state`` and ``rd.entries`` (in that order, fsync if ``rd.must_sync``);
send ``rd.messages``; apply ``rd.committed_entries`` (calling
``apply_conf_change`` for conf-change entries); then ``advance(rd)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .confchange import decode_conf_change, encode_conf_change
from .raft import (
    LOCAL_MSGS,
    RESPONSE_MSGS,
    ProposalDroppedError,
    Raft,
    RaftConfig,
    StateType,
    StepLocalMsgError,
)
from .storage import MemoryStorage
from .tracker import ProgressState
from .types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Snapshot,
)


@dataclass(slots=True)
class SoftState:
    lead: int
    raft_state: StateType


@dataclass(slots=True)
class Ready:
    soft_state: SoftState | None
    hard_state: HardState | None  # None if unchanged
    entries: list[Entry]  # persist BEFORE sending messages
    snapshot: Snapshot | None  # persist/apply
    committed_entries: list[Entry]  # apply
    messages: list[Message]  # send after persisting
    read_states: list[ReadState]
    must_sync: bool


@dataclass(slots=True)
class ProgressStatus:
    match: int
    next: int
    state: ProgressState
    recent_active: bool
    is_learner: bool
    paused: bool
    inflight: int


@dataclass(slots=True)
class Status:
    id: int
    term: int
    vote: int
    commit: int
    lead: int
    state: StateType
    applied: int
    lead_transferee: int
    voters: list[int]
    learners: list[int]
    progress: dict[int, ProgressStatus] = field(default_factory=dict)  # leader only


class RawNode:
    def __init__(
        self, config: RaftConfig, storage: MemoryStorage, peers: list[int] | None = None
    ) -> None:
        self._raft = r = Raft(config, storage)
        self._prev_hard = r.hard_state()
        if peers:
            self._bootstrap(peers)
        self._prev_soft = SoftState(r.lead, r.state)

    def _bootstrap(self, peers: list[int]) -> None:
        """Start a brand-new cluster: committed AddNode entries at term 1, as etcd."""
        r = self._raft
        if r.log.last_index() != 0:
            raise ValueError("can't bootstrap a nonempty Storage")
        self._prev_hard = HardState()
        r.become_follower(1, NONE)
        ents = [
            Entry(
                1,
                i,
                EntryType.CONF_CHANGE,
                encode_conf_change(ConfChange(ConfChangeType.ADD_NODE, pid)),
            )
            for i, pid in enumerate(peers, 1)
        ]
        r.log.append(ents)
        r.log.committed = len(ents)
        for pid in peers:
            r.apply_conf_change(ConfChange(ConfChangeType.ADD_NODE, pid))
        r.conf_replayed_to = len(ents)

    # -- inputs ---------------------------------------------------------------

    def tick(self) -> None:
        self._raft.tick()

    def campaign(self) -> None:
        self._raft.step(Message(MessageType.HUP))

    def propose(self, data: bytes) -> None:
        """Propose ``data``; raises ProposalDropped when it cannot be accepted."""
        r = self._raft
        if not r.propose_fast(data):
            r.step(
                Message(MessageType.PROP, frm=r.id, entries=[Entry(0, 0, EntryType.NORMAL, data)])
            )

    def propose_conf_change(self, cc: ConfChange) -> None:
        r = self._raft
        e = Entry(0, 0, EntryType.CONF_CHANGE, encode_conf_change(cc))
        r.step(Message(MessageType.PROP, frm=r.id, entries=[e]))

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        return self._raft.apply_conf_change(cc)

    decode_conf_change = staticmethod(decode_conf_change)
    encode_conf_change = staticmethod(encode_conf_change)

    def step(self, m: Message) -> None:
        """Step a message from a peer. Responses from unknown peers are dropped."""
        if m.type in LOCAL_MSGS:
            raise StepLocalMsgError(f"cannot step raft local message {MessageType(m.type).name}")
        r = self._raft
        if m.type in RESPONSE_MSGS and m.frm not in r.prs.progress:
            return
        try:
            r.step(m)
        except ProposalDroppedError:
            pass  # a forwarded proposal: the proposer times out and retries

    def read_index(self, ctx: bytes) -> None:
        self._raft.step(Message(MessageType.READ_INDEX, entries=[Entry(0, 0, data=ctx)]))

    def transfer_leader(self, transferee: int) -> None:
        self._raft.step(Message(MessageType.TRANSFER_LEADER, frm=transferee))

    def report_unreachable(self, id: int) -> None:
        self._raft.step(Message(MessageType.UNREACHABLE, frm=id))

    def report_snapshot(self, id: int, failed: bool) -> None:
        self._raft.step(Message(MessageType.SNAP_STATUS, frm=id, reject=failed))

    # -- Ready ------------------------------------------------------------------

    def has_ready(self) -> bool:
        r = self._raft
        r.flush()
        if r.msgs or r.read_states:
            return True
        log = r.log
        if log.unstable.entries or log.unstable.snapshot is not None or log.has_next_ents():
            return True
        ps = self._prev_soft
        if r.lead != ps.lead or r.state != ps.raft_state:
            return True
        ph = self._prev_hard
        return r.term != ph.term or r.vote != ph.vote or log.committed != ph.commit

    def ready(self) -> Ready:
        r = self._raft
        r.flush()
        log = r.log
        ss = None
        ps = self._prev_soft
        if r.lead != ps.lead or r.state != ps.raft_state:
            ss = self._prev_soft = SoftState(r.lead, r.state)
        hs = r.hard_state()
        ph = self._prev_hard
        if hs == ph:
            hs_out = None
            must_sync = False
        else:
            hs_out = hs
            must_sync = hs.term != ph.term or hs.vote != ph.vote
        entries = log.unstable_entries()
        msgs = r.msgs
        r.msgs = []
        rs = r.read_states
        r.read_states = []
        return Ready(
            soft_state=ss,
            hard_state=hs_out,
            entries=entries,
            snapshot=log.unstable.snapshot,
            committed_entries=log.next_ents(),
            messages=msgs,
            read_states=rs,
            must_sync=must_sync or bool(entries),
        )

    def advance(self, rd: Ready) -> None:
        """The application has persisted and applied ``rd``."""
        r = self._raft
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.committed_entries:
            r.log.applied_to(rd.committed_entries[-1].index)
        elif rd.snapshot is not None:
            r.log.applied_to(rd.snapshot.metadata.index)
        if rd.entries:
            e = rd.entries[-1]
            r.log.stable_to(e.index, e.term)
        if rd.snapshot is not None:
            r.log.stable_snap_to(rd.snapshot.metadata.index)

    # -- introspection -----------------------------------------------------------

    @property
    def raft(self) -> Raft:
        return self._raft

    @property
    def id(self) -> int:
        return self._raft.id

    @property
    def lead(self) -> int:
        return self._raft.lead

    @property
    def state(self) -> StateType:
        return self._raft.state

    @property
    def term(self) -> int:
        return self._raft.term

    @property
    def commit(self) -> int:
        return self._raft.log.committed

    @property
    def applied(self) -> int:
        return self._raft.log.applied

    def conf_state(self) -> ConfState:
        return self._raft.prs.conf_state()

    def status(self) -> Status:
        r = self._raft
        st = Status(
            id=r.id,
            term=r.term,
            vote=r.vote,
            commit=r.log.committed,
            lead=r.lead,
            state=r.state,
            applied=r.log.applied,
            lead_transferee=r.lead_transferee,
            voters=sorted(r.prs.voters),
            learners=sorted(r.prs.learners),
        )
        if r.state == StateType.LEADER:
            for id, pr in r.prs.progress.items():
                st.progress[id] = ProgressStatus(
                    pr.match,
                    pr.next,
                    pr.state,
                    pr.recent_active,
                    pr.is_learner,
                    pr.is_paused(),
                    pr.inflights.count(),
                )
        return st
