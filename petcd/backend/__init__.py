"""On-disk key/value store (LMDB) with etcd's buckets and batched write transactions."""

from petcd.backend.backend import BUCKETS, Backend, default_hash_ignore

__all__ = ["BUCKETS", "Backend", "default_hash_ignore"]
