"""Unit tests of petcd.raft: storage, log, single voter, elections, replication,
ReadIndex, leader transfer, membership and snapshots."""

from __future__ import annotations

import random

import pytest
from test_raft_sim import Cluster

from petcd.raft import (
    CompactedError,
    MemoryStorage,
    ProgressState,
    ProposalDropped,
    RaftConfig,
    RawNode,
    SnapOutOfDateError,
    StateType,
    StepLocalMsgError,
    UnavailableError,
    decode_conf_change,
    encode_conf_change,
)
from petcd.raft.raft import Raft
from petcd.raft.storage import ENTRY_OVERHEAD, limit_size
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

MT = MessageType


def ents(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(t, i) for i, t in enumerate(terms, start)]


def persist(st: MemoryStorage, rd) -> None:
    if rd.snapshot is not None:
        st.apply_snapshot(rd.snapshot)
    if rd.hard_state is not None:
        st.set_hard_state(rd.hard_state)
    st.append(rd.entries)


# -- storage -------------------------------------------------------------------------


def test_storage_append_truncates_conflicting_suffix() -> None:
    st = MemoryStorage()
    st.append(ents(1, 1, 1))
    st.append([Entry(2, 2), Entry(2, 3), Entry(2, 4)])
    assert [(e.index, e.term) for e in st.entries(1, 5)] == [(1, 1), (2, 2), (3, 2), (4, 2)]
    with pytest.raises(ValueError):
        st.append([Entry(2, 9)])  # gap


def test_storage_compact_snapshot_and_errors() -> None:
    st = MemoryStorage()
    st.append(ents(1, 1, 2, 2, 3))
    snap = st.create_snapshot(3, ConfState([1, 2, 3]), b"data")
    assert (snap.metadata.index, snap.metadata.term) == (3, 2)
    st.compact(3)
    assert st.first_index() == 4 and st.last_index() == 5
    assert st.term(3) == 2  # the dummy keeps the compaction point's term
    with pytest.raises(CompactedError):
        st.term(2)
    with pytest.raises(CompactedError):
        st.entries(3, 5)
    with pytest.raises(UnavailableError):
        st.term(9)
    with pytest.raises(SnapOutOfDateError):
        st.create_snapshot(2, None, b"")
    # Appending already-compacted entries skips them.
    st.append(ents(1, 1, 2, 2, 3, 3))
    assert st.last_index() == 6 and st.first_index() == 4
    hs, cs = st.initial_state()
    assert cs.voters == [1, 2, 3] and hs == HardState()
    st.apply_snapshot(Snapshot(SnapshotMetadata(10, 4, ConfState([1])), b"x"))
    assert st.first_index() == 11 and st.last_index() == 10 and st.term(10) == 4


def test_limit_size() -> None:
    es = [Entry(1, i, data=b"x" * 100) for i in range(1, 11)]
    per = 100 + ENTRY_OVERHEAD
    assert len(limit_size(es, None)) == 10
    assert len(limit_size(es, per * 10)) == 10
    assert len(limit_size(es, per * 3)) == 3
    assert len(limit_size(es, per * 3 + 5)) == 3
    assert len(limit_size(es, 1)) == 1  # always at least one


def test_conf_change_encoding_matches_etcd() -> None:
    cc = ConfChange(ConfChangeType.ADD_LEARNER_NODE, 0x8E9E05C52164694D, b"ctx", id=42)
    data = encode_conf_change(cc)
    assert data.startswith(b"\x08\x2a\x10\x03\x18") and data.endswith(b"\x22\x03ctx")
    assert decode_conf_change(data) == cc
    assert encode_conf_change(ConfChange(ConfChangeType.ADD_NODE, 1)) == b"\x08\x00\x10\x00\x18\x01"


# -- single voter ---------------------------------------------------------------------


def new_single(st: MemoryStorage | None = None, **kw) -> tuple[RawNode, MemoryStorage]:
    st = st or MemoryStorage()
    return RawNode(RaftConfig(1, rng=random.Random(1), **kw), st, peers=[1]), st


def test_single_voter_campaign_and_batched_proposals() -> None:
    n, st = new_single()
    n.campaign()
    assert n.state == StateType.LEADER and n.term == 2
    rd = n.ready()
    assert rd.soft_state is not None and rd.soft_state.lead == 1
    assert [e.type for e in rd.entries] == [EntryType.CONF_CHANGE, EntryType.NORMAL]
    assert rd.entries[1].data == b"" and rd.entries[1].term == 2  # the leader's empty entry
    assert rd.committed_entries == rd.entries and rd.must_sync
    assert rd.hard_state == HardState(2, 1, 2)
    persist(st, rd)
    n.advance(rd)
    assert not n.has_ready()

    for i in range(1000):
        n.propose(b"v%d" % i)
    assert n.has_ready()
    rd = n.ready()
    assert len(rd.entries) == 1000 and rd.committed_entries == rd.entries
    assert [e.index for e in rd.entries] == list(range(3, 1003))
    assert rd.entries[-1].data == b"v999" and rd.messages == []
    assert rd.hard_state == HardState(2, 1, 1002)
    assert rd.must_sync
    persist(st, rd)
    n.advance(rd)
    assert not n.has_ready() and n.applied == 1002


def test_single_voter_elects_itself_on_first_timeout() -> None:
    n, _ = new_single()
    for _ in range(20):
        n.tick()
    assert n.state == StateType.LEADER


def test_single_voter_restart_keeps_state() -> None:
    n, st = new_single()
    n.campaign()
    for i in range(5):
        n.propose(b"a%d" % i)
    rd = n.ready()
    persist(st, rd)
    n.advance(rd)
    applied = n.applied
    for applied_arg in (applied, 0):
        n2 = RawNode(RaftConfig(1, applied=applied_arg, rng=random.Random(2)), st)
        assert n2.term == 2 and n2.commit == 7 and n2.state == StateType.FOLLOWER
        assert n2.applied == applied_arg and n2.conf_state().voters == [1]
        rd = n2.ready()
        # Everything after ``applied`` is delivered again for the application to apply.
        assert len(rd.committed_entries) == 7 - applied_arg
        assert rd.hard_state is None and rd.entries == [] and not rd.must_sync
        n2.advance(rd)
    n2.campaign()  # the replayed config makes it promotable at once
    assert n2.state == StateType.LEADER and n2.term == 3
    n2.propose(b"after")
    rd = n2.ready()
    assert [e.data for e in rd.entries] == [b"", b"after"]
    assert rd.committed_entries[-1].data == b"after" and rd.hard_state == HardState(3, 1, 9)


def test_local_messages_rejected_and_unknown_responses_dropped() -> None:
    n, _ = new_single()
    with pytest.raises(StepLocalMsgError):
        n.step(Message(MT.HUP))
    n.step(Message(MT.APP_RESP, frm=9, term=5))  # ignored: not a member
    assert n.term == 1


def test_bootstrap_requires_empty_storage() -> None:
    st = MemoryStorage()
    st.append(ents(1))
    with pytest.raises(ValueError):
        RawNode(RaftConfig(1), st, peers=[1])


# -- elections ------------------------------------------------------------------------


def test_randomized_election_timeout_range() -> None:
    st = MemoryStorage()
    r = Raft(RaftConfig(1, election_tick=10, rng=random.Random(5)), st)
    seen = set()
    for _ in range(300):
        r.become_follower(r.term + 1, 0)
        seen.add(r.randomized_election_timeout)
    assert seen == set(range(10, 20))


def test_three_node_election_and_replication() -> None:
    c = Cluster(3, seed=1)
    lead = c.wait_leader()
    assert all(c.node(i).lead == lead for i in c.ids)
    for i in range(20):
        assert c.propose(lead, b"p%d" % i)
    c.settle()
    for i in c.ids:
        assert c.nodes[i].applied == c.node(lead).commit
    datas = [c.applied_log[i][2] for i in sorted(c.applied_log)]
    assert datas[-20:] == [b"p%d" % i for i in range(20)]


def test_leader_batches_proposals_into_one_append_per_follower() -> None:
    c = Cluster(3, seed=2)
    c.elect(1)
    n = c.node(1)
    for i in range(300):
        n.propose(b"x%d" % i)
    rd = n.ready()
    assert len(rd.entries) == 300
    apps = [m for m in rd.messages if m.type == MT.APP]
    assert sorted(m.to for m in apps) == [2, 3]
    assert all(len(m.entries) == 300 for m in apps)
    assert rd.committed_entries == []  # needs a follower's ack
    persist(c.nodes[1].storage, rd)
    n.advance(rd)
    for m in rd.messages:
        c.send(m)
    c.settle()
    assert n.commit == rd.entries[-1].index


def test_follower_forwards_batched_proposals_and_drops_without_leader() -> None:
    c = Cluster(3, seed=3)
    c.elect(1)
    f = c.node(2)
    for i in range(50):
        f.propose(b"f%d" % i)
    rd = f.ready()
    props = [m for m in rd.messages if m.type == MT.PROP]
    assert len(props) == 1 and props[0].to == 1 and len(props[0].entries) == 50
    c.nodes[2].storage.append(rd.entries)
    f.advance(rd)
    for m in rd.messages:
        c.send(m)
    c.settle()
    assert c.nodes[3].applied == c.node(1).commit
    lone = Cluster(3, seed=3)
    with pytest.raises(ProposalDropped):
        lone.node(2).propose(b"x")


def test_prevote_isolated_node_does_not_disrupt() -> None:
    c = Cluster(3, seed=4)
    c.elect(1)
    term = c.node(1).term
    c.isolate(3)
    c.run(100)
    assert c.node(3).term == term  # pre-vote never bumps the term
    assert c.node(3).state in (StateType.PRE_CANDIDATE, StateType.FOLLOWER)
    c.heal()
    c.run(30)
    assert c.leader() == 1 and c.node(1).term == term and c.node(3).lead == 1


def test_without_prevote_isolated_node_bumps_term() -> None:
    c = Cluster(3, seed=4, pre_vote=False, check_quorum=False)
    c.elect(1)
    term = c.node(1).term
    c.isolate(3)
    c.run(100)
    assert c.node(3).term > term
    assert c.node(3).state == StateType.CANDIDATE


def test_vote_lease_ignores_disruptive_vote() -> None:
    c = Cluster(3, seed=5)
    c.elect(1)
    f = c.node(2)
    term = f.term
    f.step(Message(MT.VOTE, frm=3, to=2, term=term + 1, index=100, log_term=term))
    assert f.term == term and f.lead == 1
    assert f.ready().messages == []
    # CampaignTransfer bypasses the lease.
    f.step(
        Message(
            MT.VOTE,
            frm=3,
            to=2,
            term=term + 1,
            index=100,
            log_term=term,
            context=b"CampaignTransfer",
        )
    )
    assert f.term == term + 1
    resp = [m for m in f.ready().messages if m.type == MT.VOTE_RESP]
    assert len(resp) == 1 and not resp[0].reject


def test_vote_requires_up_to_date_log_and_one_vote_per_term() -> None:
    st = MemoryStorage()
    st.append(ents(1, 2, 2))
    st.set_hard_state(HardState(2, 0, 0))
    r = Raft(RaftConfig(1, check_quorum=False, pre_vote=False), st)
    r._restore_conf(ConfState([1, 2, 3]))
    r.step(Message(MT.VOTE, frm=2, to=1, term=3, index=5, log_term=1))  # older last term
    assert r.msgs[-1].reject and r.vote == 0
    r.step(Message(MT.VOTE, frm=2, to=1, term=3, index=3, log_term=2))
    assert not r.msgs[-1].reject and r.vote == 2
    r.step(Message(MT.VOTE, frm=3, to=1, term=3, index=9, log_term=3))
    assert r.msgs[-1].reject and r.vote == 2  # already voted this term


def test_leader_commits_only_current_term_entries() -> None:
    st = MemoryStorage()
    st.append(ents(1, 2))
    st.set_hard_state(HardState(2, 0, 0))
    r = Raft(RaftConfig(1, check_quorum=False, pre_vote=False), st)
    r._restore_conf(ConfState([1, 2, 3]))
    r.become_candidate()
    r.become_leader()
    assert r.term == 3 and r.log.last_index() == 3
    r.step(Message(MT.APP_RESP, frm=2, to=1, term=3, index=2))
    assert r.log.committed == 0  # index 2 (term 2) sits on a majority but is not committable
    r.step(Message(MT.APP_RESP, frm=2, to=1, term=3, index=3))
    assert r.log.committed == 3


def test_check_quorum_leader_steps_down() -> None:
    c = Cluster(3, seed=6)
    c.elect(1)
    c.isolate(1)
    for _ in range(25):
        c.tick()
        c.process_all()
    assert c.node(1).state == StateType.FOLLOWER and c.node(1).lead == 0


# -- replication details -----------------------------------------------------------------


def test_follower_append_conflicts_and_stale_messages() -> None:
    st = MemoryStorage()
    st.append(ents(1, 1, 2, 2, 2))
    st.set_hard_state(HardState(2, 0, 2))
    r = Raft(RaftConfig(2, check_quorum=False, pre_vote=False), st)
    r._restore_conf(ConfState([1, 2]))
    # Conflict at index 4: truncate and append.
    r.step(
        Message(
            MT.APP,
            frm=1,
            to=2,
            term=3,
            index=3,
            log_term=2,
            entries=ents(3, 3, 3, start=4),
            commit=4,
        )
    )
    assert r.msgs[-1].index == 6 and not r.msgs[-1].reject
    assert [r.log.term(i) for i in range(1, 7)] == [1, 1, 2, 3, 3, 3] and r.log.committed == 4
    # A stale, shorter duplicate truncates nothing.
    r.step(
        Message(
            MT.APP, frm=1, to=2, term=3, index=3, log_term=2, entries=ents(3, start=4), commit=4
        )
    )
    assert r.log.last_index() == 6 and r.msgs[-1].index == 4
    # prev index below commit: answered with the commit index.
    r.step(Message(MT.APP, frm=1, to=2, term=3, index=1, log_term=1, entries=[], commit=4))
    assert r.msgs[-1].index == 4 and not r.msgs[-1].reject
    # Commit never passes the last new index from the message.
    r.step(Message(MT.APP, frm=1, to=2, term=3, index=5, log_term=3, entries=[], commit=100))
    assert r.log.committed == 5
    # Mismatch: rejected with a term-aware hint.
    r.step(Message(MT.APP, frm=1, to=2, term=3, index=6, log_term=4, entries=[], commit=6))
    m = r.msgs[-1]
    assert m.reject and m.index == 6 and (m.reject_hint, m.log_term) == (6, 3)


def test_conflict_backtracking_takes_one_round_trip_per_term() -> None:
    # Raft paper Figure 7: leader terms 1 1 1 4 4 5 5 6 6 6, follower (f)
    # 1 1 1 2 2 2 3 3 3 3 3. Index 1 is a snapshot carrying the config.
    c = Cluster(2, seed=7, check_quorum=False, pre_vote=False)
    c.applied_log, c.hashes, c.leaders = {}, {}, {}
    logs = {1: [1, 1, 4, 4, 5, 5, 6, 6, 6], 2: [1, 1, 2, 2, 2, 3, 3, 3, 3, 3]}
    for i, log in logs.items():
        sn = c.nodes[i]
        sn.storage = st = MemoryStorage()
        st.apply_snapshot(Snapshot(SnapshotMetadata(1, 1, ConfState([1, 2])), b"1:0"))
        st.append(ents(*log, start=2))
        st.set_hard_state(HardState(6, 0, 1))
        sn.applied, sn.hash = 1, 0
        c.restart(i)
    st1, st2 = c.nodes[1].storage, c.nodes[2].storage
    c.elect(1)
    rejects = [0]
    orig = c.send

    def counting_send(m):
        if m.type == MT.APP_RESP and m.reject:
            rejects[0] += 1
        orig(m)

    c.send = counting_send  # type: ignore[method-assign]
    c.node(1).propose(b"x")
    c.settle()
    assert rejects[0] <= 3
    assert [st2.term(i) for i in range(1, 12)] == [st1.term(i) for i in range(1, 12)]
    c.check_log_matching()


def test_inflight_window_pauses_replication() -> None:
    c = Cluster(2, seed=8, max_inflight_msgs=2, max_size_per_msg=1)
    c.elect(1)
    n = c.node(1)
    for i in range(10):
        n.propose(b"x%d" % i)
    rd = n.ready()
    apps = [m for m in rd.messages if m.type == MT.APP and m.entries]
    assert len(apps) == 2 and all(len(m.entries) == 1 for m in apps)
    pr = n.status().progress[2]
    assert pr.state == ProgressState.REPLICATE and pr.paused and pr.inflight == 2
    persist(c.nodes[1].storage, rd)
    n.advance(rd)
    for m in rd.messages:
        c.send(m)
    c.settle()
    assert c.nodes[2].applied == n.commit == n.raft.log.last_index()


# -- read index ---------------------------------------------------------------------------


def test_read_index_single_voter_answers_at_once() -> None:
    n, st = new_single()
    n.campaign()
    rd = n.ready()
    persist(st, rd)
    n.advance(rd)
    n.read_index(b"r1")
    rd = n.ready()
    assert [(rs.index, rs.request_ctx) for rs in rd.read_states] == [(2, b"r1")]
    n.advance(rd)
    assert not n.has_ready()


def test_read_index_leader_needs_heartbeat_quorum() -> None:
    c = Cluster(3, seed=9)
    c.elect(1)
    n = c.node(1)
    n.read_index(b"ctx")
    rd = n.ready()
    assert rd.read_states == []
    hbs = [m for m in rd.messages if m.type == MT.HEARTBEAT]
    assert len(hbs) == 2 and all(m.context == b"ctx" for m in hbs)
    n.advance(rd)
    c.isolate(1)  # no acks: no answer
    for m in rd.messages:
        c.send(m)
    c.settle()
    assert c.nodes[1].read_states == []
    c.heal()
    n.read_index(b"ctx2")
    c.settle()
    # The ack for the later request also confirms the earlier one.
    got = [(rs.index, rs.request_ctx) for rs in c.nodes[1].read_states]
    assert got == [(n.commit, b"ctx"), (n.commit, b"ctx2")]


def test_read_index_via_follower() -> None:
    c = Cluster(3, seed=10)
    c.elect(1)
    c.node(3).read_index(b"q")
    c.settle()
    assert [(rs.index, rs.request_ctx) for rs in c.nodes[3].read_states] == [
        (c.node(1).commit, b"q")
    ]
    assert c.nodes[1].read_states == []


def test_read_index_waits_for_commit_in_current_term() -> None:
    c = Cluster(3, seed=11, pre_vote=False, check_quorum=False)
    c.elect(1)
    c.partition([1], [2, 3])
    c.node(2).campaign()
    c.process(c.nodes[2])
    c.deliver()  # vote request reaches node 3
    c.process(c.nodes[3])
    c.deliver()  # vote reaches node 2
    n2 = c.node(2)
    assert n2.state == StateType.LEADER
    n2.read_index(b"early")
    assert n2.raft.pending_read_index_msgs  # queued: nothing committed in this term yet
    assert not n2.raft.committed_entry_in_current_term()
    c.settle()
    assert not n2.raft.pending_read_index_msgs
    assert [(rs.index, rs.request_ctx) for rs in c.nodes[2].read_states] == [(n2.commit, b"early")]


# -- leader transfer ----------------------------------------------------------------------


def test_leader_transfer() -> None:
    c = Cluster(3, seed=12)
    c.elect(1)
    c.propose(1, b"x")
    c.settle()
    c.node(1).transfer_leader(3)
    with pytest.raises(ProposalDropped):
        c.node(1).propose(b"dropped")
    c.settle()
    assert c.leader() == 3 and c.node(1).lead == 3


def test_leader_transfer_catches_up_transferee_first() -> None:
    c = Cluster(3, seed=13)
    c.elect(1)
    c.isolate(3)
    for i in range(5):
        c.propose(1, b"x%d" % i)
    c.settle()
    c.heal()
    c.node(1).transfer_leader(3)
    c.settle()
    assert c.leader() == 3


def test_leader_transfer_aborts_after_election_timeout() -> None:
    c = Cluster(3, seed=14, check_quorum=False)
    c.elect(1)
    c.isolate(3)
    c.node(1).transfer_leader(3)
    assert c.node(1).status().lead_transferee == 3
    for _ in range(10):
        c.tick()
    assert c.node(1).status().lead_transferee == 0
    c.node(1).propose(b"ok")


# -- membership ------------------------------------------------------------------------------


def test_learner_replicates_but_never_votes_or_campaigns() -> None:
    c = Cluster(3, seed=15, learners=(3,))
    c.elect(1)
    assert c.node(1).conf_state() == ConfState([1, 2], [3])
    for i in range(5):
        c.propose(1, b"l%d" % i)
    c.settle()
    assert c.nodes[3].applied == c.node(1).commit
    c.crash(3)
    c.propose(1, b"no-learner-needed")  # quorum is {1,2}
    c.settle()
    assert c.applied_log[c.node(1).commit][2] == b"no-learner-needed"
    c.restart(3)
    for _ in range(60):
        c.node(3).tick()
    assert c.node(3).state == StateType.FOLLOWER
    c.node(3).campaign()
    assert c.node(3).state == StateType.FOLLOWER


def test_conf_change_through_log_add_promote_remove() -> None:
    c = Cluster(4, seed=16, learners=(4,))
    c.elect(1)
    n = c.node(1)
    n.propose_conf_change(ConfChange(ConfChangeType.ADD_NODE, 4, id=7))  # promote learner
    c.settle()
    assert all(c.nodes[i].conf == ConfState([1, 2, 3, 4], []) for i in c.ids)
    n.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 2))
    c.settle()
    assert c.nodes[1].conf == ConfState([1, 3, 4], [])
    c.crash(2)
    c.propose(1, b"after-remove")
    c.settle()
    assert c.nodes[4].applied == n.commit


def test_second_pending_conf_change_is_refused() -> None:
    c = Cluster(3, seed=17)
    c.elect(1)
    n = c.node(1)
    n.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER_NODE, 4))
    n.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER_NODE, 5))
    rd = n.ready()
    assert [e.type for e in rd.entries] == [EntryType.CONF_CHANGE, EntryType.NORMAL]
    assert rd.entries[1].data == b""


def test_leader_removing_itself_steps_down() -> None:
    c = Cluster(3, seed=18)
    c.elect(1)
    c.node(1).propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    c.settle()
    assert c.node(1).state == StateType.FOLLOWER
    assert c.nodes[2].conf.voters == [2, 3]
    c.crash(1)
    lead = c.wait_leader()
    assert lead in (2, 3)


def test_restart_replays_committed_conf_changes() -> None:
    c = Cluster(3, seed=19)
    c.elect(1)
    c.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER_NODE, 7))
    c.settle()
    st = c.nodes[2].storage
    n = RawNode(RaftConfig(2), st)  # applied unknown: config still includes the learner
    assert n.conf_state() == ConfState([1, 2, 3], [7])


# -- snapshots --------------------------------------------------------------------------------


def test_follower_restore_snapshot_rules() -> None:
    st = MemoryStorage()
    st.append(ents(1, 1, 2))
    st.set_hard_state(HardState(2, 0, 2))
    r = Raft(RaftConfig(2, check_quorum=False), st)
    r._restore_conf(ConfState([1, 2]))

    def snap(i: int, t: int, voters=(1, 2)) -> Snapshot:
        return Snapshot(SnapshotMetadata(i, t, ConfState(list(voters))), b"s")

    assert not r.restore(snap(2, 1))  # older than commit
    assert not r.restore(snap(5, 3, voters=(1, 3)))  # not in its conf state
    assert not r.restore(snap(3, 2)) and r.log.committed == 3  # matching: fast-forward only
    assert r.restore(snap(8, 3, voters=(1, 2, 4)))
    assert r.log.committed == 8 and r.log.last_index() == 8 and r.log.unstable.snapshot is not None
    assert r.prs.conf_state().voters == [1, 2, 4]
    r.step(Message(MT.SNAP, frm=1, to=2, term=3, snapshot=snap(6, 3)))
    assert r.msgs[-1].type == MT.APP_RESP and r.msgs[-1].index == 8
