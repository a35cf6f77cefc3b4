"""Auto compaction (etcd's v3compactor): periodic and revision modes.

Both compactors run as a task on the server's loop and compact by proposing a
CompactionRequest through Raft, so every member compacts at the same revision. Only the
leader compacts (etcd pauses the compactor on followers).

* periodic(period): record the store revision every period/10 (capped at 1 h/10); once a
  full period has passed since the last success, compact at the revision recorded one
  period ago; afterwards compact every min(period, 1 h).
* revision(retention): every 5 minutes, compact at ``rev - retention`` unless unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from petcd import log
from petcd.errors import ErrCompacted, EtcdError
from petcd.proto.etcdserverpb import rpc_pb2

_log = log.get("compactor")

MODE_PERIODIC = "periodic"
MODE_REVISION = "revision"
HOUR = 3600.0
RETRY_DIVISOR = 10
REVISION_INTERVAL = 300.0
# InternalRaftRequest.compaction (etcd's raft_internal.proto).
F_COMPACTION = 7

Compact = Callable[[int], Awaitable[Any]]
Sleep = Callable[[float], Awaitable[None]]


def _go_duration(seconds: float) -> str:
    """A short Go-style duration for log fields (1h0m0s, 5m0s, 1.5s)."""
    if seconds < 60:
        return f"{seconds:g}s"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return (f"{h}h" if h else "") + f"{m}m{sec}s"


class _Base:
    def __init__(
        self,
        rev: Callable[[], int],
        compact: Compact,
        *,
        is_leader: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.rev = rev
        self.compact = compact
        self.is_leader = is_leader
        self.clock = clock
        self.sleep = sleep

    async def _try_compact(self, rev: int) -> bool:
        """Propose the compaction; an already-compacted revision counts as success."""
        try:
            await self.compact(rev)
        except ErrCompacted:
            return True
        except EtcdError as e:
            self._failed(rev, e)
            return False
        return True

    def _failed(self, rev: int, err: EtcdError) -> None:
        """Each compactor decides how to retry a failed compaction."""
        raise NotImplementedError  # abstract: overridden by both compactors


class PeriodicCompactor(_Base):
    def __init__(self, period: float, rev: Callable[[], int], compact: Compact, **kw: Any) -> None:
        super().__init__(rev, compact, **kw)
        self.period = period
        self.revs: list[int] = []

    @property
    def compact_interval(self) -> float:
        return min(self.period, HOUR)

    @property
    def retry_interval(self) -> float:
        return self.compact_interval / RETRY_DIVISOR

    @property
    def retentions(self) -> int:
        return int(self.period / self.retry_interval) + 1

    async def run(self) -> None:
        last_success = self.clock()
        base = self.period
        retentions = self.retentions
        while True:
            self.revs.append(self.rev())
            if len(self.revs) > retentions:
                del self.revs[0]  # revs[0] is the revision one period ago
            await self.sleep(self.retry_interval)
            if not self.is_leader():
                continue
            if self.clock() - last_success < base:
                continue
            base = self.compact_interval  # after the first period, compact every interval
            rev = self.revs[0]
            _log.info("starting auto periodic compaction", revision=rev,
                      **{"compact-period": _go_duration(self.period)})
            start = self.clock()
            if await self._try_compact(rev):
                _log.info("completed auto periodic compaction", revision=rev,
                          **{"compact-period": _go_duration(self.period),
                             "took": _go_duration(self.clock() - start)})
                last_success = self.clock()

    def _failed(self, rev: int, err: EtcdError) -> None:
        _log.warning("failed auto periodic compaction", revision=rev,
                     **{"compact-period": _go_duration(self.period),
                        "retry-interval": _go_duration(self.retry_interval)},
                     error=err.message)


class RevisionCompactor(_Base):
    def __init__(
        self,
        retention: int,
        rev: Callable[[], int],
        compact: Compact,
        *,
        interval: float | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(rev, compact, **kw)
        self.retention = retention
        self.interval = REVISION_INTERVAL if interval is None else interval

    async def run(self) -> None:
        prev = 0
        while True:
            await self.sleep(self.interval)
            if not self.is_leader():
                continue
            rev = self.rev() - self.retention
            if rev <= 0 or rev == prev:
                continue
            _log.info("starting auto revision compaction", revision=rev,
                      **{"revision-compaction-retention": self.retention})
            start = self.clock()
            if await self._try_compact(rev):
                prev = rev
                _log.info("completed auto revision compaction", revision=rev,
                          **{"revision-compaction-retention": self.retention,
                             "took": _go_duration(self.clock() - start)})

    def _failed(self, rev: int, err: EtcdError) -> None:
        _log.warning("failed auto revision compaction", revision=rev,
                     **{"revision-compaction-retention": self.retention,
                        "retry-interval": _go_duration(self.interval)},
                     error=err.message)


def new_compactor(
    mode: str, retention: float | int, srv: Any
) -> PeriodicCompactor | RevisionCompactor | None:
    """The compactor ``--auto-compaction-mode/-retention`` ask for (None when retention is 0).

    ``srv`` needs ``kv.rev``, ``is_leader()`` and ``propose(field_no, payload, req)``.
    """
    if not retention:
        return None

    async def compact(rev: int) -> Any:
        req = rpc_pb2.CompactionRequest(revision=rev)
        return await srv.propose(F_COMPACTION, req.SerializeToString(), req)

    def rev() -> int:
        return srv.kv.rev

    if mode == MODE_REVISION:
        c: PeriodicCompactor | RevisionCompactor = RevisionCompactor(
            int(retention), rev, compact, is_leader=srv.is_leader
        )
    elif mode in (MODE_PERIODIC, ""):
        c = PeriodicCompactor(float(retention), rev, compact, is_leader=srv.is_leader)
    else:
        raise ValueError(f"unsupported compaction mode {mode}")
    _log.info("enabled auto compaction", mode=mode or MODE_PERIODIC, retention=retention)
    return c


def start(srv: Any) -> list[asyncio.Task]:
    """Start the configured compactor on the running loop; [] when disabled."""
    cfg = srv.cfg
    c = new_compactor(cfg.auto_compaction_mode, cfg.auto_compaction_retention_value(), srv)
    if c is None:
        return []
    return [asyncio.get_running_loop().create_task(c.run(), name="compactor")]
