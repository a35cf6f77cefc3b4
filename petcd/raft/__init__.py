"""Pure Raft: node state, log, progress tracking, ReadIndex, conf changes. No I/O, no clock."""

from .confchange import decode_conf_change, encode_conf_change
from .raft import (
    CAMPAIGN_TRANSFER,
    ProposalDropped,
    ProposalDroppedError,
    Raft,
    RaftConfig,
    StateType,
    StepLocalMsgError,
)
from .rawnode import ProgressStatus, RawNode, Ready, SoftState, Status
from .storage import (
    CompactedError,
    MemoryStorage,
    RaftError,
    SnapOutOfDateError,
    SnapshotTemporarilyUnavailableError,
    UnavailableError,
)
from .tracker import ProgressState

__all__ = [
    "CAMPAIGN_TRANSFER",
    "CompactedError",
    "MemoryStorage",
    "ProgressState",
    "ProgressStatus",
    "ProposalDropped",
    "ProposalDroppedError",
    "Raft",
    "RaftConfig",
    "RaftError",
    "RawNode",
    "Ready",
    "SnapOutOfDateError",
    "SnapshotTemporarilyUnavailableError",
    "SoftState",
    "StateType",
    "Status",
    "StepLocalMsgError",
    "UnavailableError",
    "decode_conf_change",
    "encode_conf_change",
]
