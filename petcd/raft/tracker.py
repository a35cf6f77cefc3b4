"""Per-peer replication progress, inflight windows and majority quorums.

After etcd's raft/tracker and raft/quorum (single majority config; no joint
consensus since only single-step ConfChange is supported).
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum

from .types import ConfState


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class VoteResult(IntEnum):
    PENDING = 1
    LOST = 2
    WON = 3


class Inflights:
    """Last indexes of the MsgApps in flight to one peer (a bounded FIFO)."""

    __slots__ = ("size", "_q")

    def __init__(self, size: int) -> None:
        self.size = size
        self._q: deque[int] = deque()

    def add(self, index: int) -> None:
        if len(self._q) >= self.size:
            raise AssertionError("cannot add into a full inflights")
        self._q.append(index)

    def free_le(self, to: int) -> None:
        q = self._q
        while q and q[0] <= to:
            q.popleft()

    def free_first_one(self) -> None:
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        return len(self._q) >= self.size

    def count(self) -> int:
        return len(self._q)

    def reset(self) -> None:
        self._q.clear()


class Progress:
    """The leader's view of one follower."""

    __slots__ = (
        "match",
        "next",
        "state",
        "pending_snapshot",
        "recent_active",
        "probe_sent",
        "inflights",
        "is_learner",
    )

    def __init__(
        self,
        next_index: int,
        max_inflight: int,
        match: int = 0,
        is_learner: bool = False,
        recent_active: bool = False,
    ) -> None:
        self.match = match
        self.next = next_index
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        self.recent_active = recent_active
        self.probe_sent = False
        self.inflights = Inflights(max_inflight)
        self.is_learner = is_learner

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.name} match={self.match} next={self.next}"
            f"{' learner' if self.is_learner else ''}"
            f"{' paused' if self.is_paused() else ''}"
            f"{f' pendingSnap={self.pending_snapshot}' if self.pending_snapshot else ''}"
            f"{'' if self.recent_active else ' inactive'} inflight={self.inflights.count()})"
        )

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """An ack for index ``n``; False if it is stale."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        if self.next < n + 1:
            self.next = n + 1
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A rejected MsgApp probing index ``rejected``; False if the rejection is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        st = self.state
        if st == ProgressState.PROBE:
            return self.probe_sent
        if st == ProgressState.REPLICATE:
            return len(self.inflights._q) >= self.inflights.size
        return True


class ProgressTracker:
    """Voters, learners, their Progress and the votes of the current election."""

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.voters: set[int] = set()
        self.learners: set[int] = set()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}

    def conf_state(self) -> ConfState:
        return ConfState(sorted(self.voters), sorted(self.learners))

    def is_singleton(self) -> bool:
        return len(self.voters) == 1

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def committed(self) -> int:
        """Largest index acknowledged (match) by a majority of voters."""
        n = len(self.voters)
        if n == 0:
            return 1 << 64  # an empty config commits everything, as in etcd
        prs = self.progress
        if n == 1:
            (v,) = self.voters
            return prs[v].match
        matches = sorted([prs[v].match for v in self.voters])
        return matches[n - (n // 2 + 1)]

    def quorum_active(self) -> bool:
        prs = self.progress
        active = sum(1 for v in self.voters if prs[v].recent_active)
        return active >= self.quorum()

    def vote_result(self, votes: dict[int, bool] | set[int]) -> VoteResult:
        """Outcome of ``votes`` (a yes/no map, or a set of yes voters) over the voters."""
        if not self.voters:
            return VoteResult.WON
        granted = missing = 0
        if isinstance(votes, set):
            granted = len(self.voters & votes)
        else:
            for v in self.voters:
                r = votes.get(v)
                if r is None:
                    missing += 1
                elif r:
                    granted += 1
        q = self.quorum()
        if granted >= q:
            return VoteResult.WON
        if isinstance(votes, set):
            return VoteResult.PENDING
        if granted + missing >= q:
            return VoteResult.PENDING
        return VoteResult.LOST

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, id: int, granted: bool) -> None:
        self.votes.setdefault(id, granted)

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        granted = rejected = 0
        for id, pr in self.progress.items():
            if pr.is_learner:
                continue
            v = self.votes.get(id)
            if v is None:
                continue
            if v:
                granted += 1
            else:
                rejected += 1
        return granted, rejected, self.vote_result(self.votes)

    # -- configuration changes (single-step) ----------------------------------------------

    def make_voter(self, id: int, last_index: int) -> None:
        pr = self.progress.get(id)
        if pr is None:
            self._init_progress(id, last_index, is_learner=False)
            return
        pr.is_learner = False
        self.learners.discard(id)
        self.voters.add(id)

    def make_learner(self, id: int, last_index: int) -> None:
        pr = self.progress.get(id)
        if pr is None:
            self._init_progress(id, last_index, is_learner=True)
            return
        if pr.is_learner:
            return
        self.voters.discard(id)
        self.learners.add(id)
        pr.is_learner = True

    def remove(self, id: int) -> None:
        self.voters.discard(id)
        self.learners.discard(id)
        self.progress.pop(id, None)

    def _init_progress(self, id: int, last_index: int, is_learner: bool) -> None:
        # Next = last index: the first probe is cheap; RecentActive so that a
        # snapshot may be sent at once if the new peer needs one.
        self.progress[id] = Progress(
            max(last_index, 1), self.max_inflight, is_learner=is_learner, recent_active=True
        )
        (self.learners if is_learner else self.voters).add(id)
