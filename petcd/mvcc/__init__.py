"""MVCC: revisions, key index with generations, read/write transactions, compaction, hashes."""

from petcd.mvcc.key_index import KeyIndex, TreeIndex
from petcd.mvcc.kvstore import (
    EVENT_DELETE,
    EVENT_PUT,
    Event,
    KVStore,
    RangeResult,
    TxnRead,
    TxnWrite,
)

__all__ = [
    "EVENT_DELETE",
    "EVENT_PUT",
    "Event",
    "KVStore",
    "KeyIndex",
    "RangeResult",
    "TreeIndex",
    "TxnRead",
    "TxnWrite",
]
