"""LMDB-backed storage with etcd's bucket layout and batched write transactions.

The database is a single LMDB file (``subdir=False``): ``path`` names the data file
(etcd's ``member/snap/db``), LMDB keeps its lock table next to it in ``<path>-lock``.

Threading: one long-lived write transaction (the *batch tx*) is owned by the thread that
created the Backend (the server's event-loop thread). Every write, every read on that
thread, ``commit()``/``maybe_commit()``/``defrag()``/``hash()`` must run there; LMDB write
transactions are bound to their thread. Reads through the batch tx see uncommitted writes
(and deletes), so no separate read buffer is needed. ``sync()`` and ``snapshot()`` may run
on a worker thread: they only touch committed data.

Durability: commits fsync the data pages but not the meta page (sync=True,
metasync=False), so after an OS crash the database is intact and at most its last commit is
rolled back; the consistent index rolls back with it and WAL replay redoes the entries.
``sync()`` forces everything, meta page included, to stable storage (call it before the WAL is
truncated).
"""

from __future__ import annotations

import os
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

import lmdb

from petcd.metrics import BACKEND_COMMIT_SECONDS

BUCKET_KEY = "key"
BUCKET_META = "meta"
BUCKET_LEASE = "lease"
BUCKET_ALARM = "alarm"
BUCKET_MEMBERS = "members"
BUCKET_MEMBERS_REMOVED = "members_removed"
BUCKET_CLUSTER = "cluster"
BUCKET_AUTH = "auth"
BUCKET_AUTH_USERS = "authUsers"
BUCKET_AUTH_ROLES = "authRoles"

BUCKETS: tuple[str, ...] = (
    BUCKET_KEY,
    BUCKET_META,
    BUCKET_LEASE,
    BUCKET_ALARM,
    BUCKET_MEMBERS,
    BUCKET_MEMBERS_REMOVED,
    BUCKET_CLUSTER,
    BUCKET_AUTH,
    BUCKET_AUTH_USERS,
    BUCKET_AUTH_ROLES,
)

# Bytes of pending writes after which maybe_commit() commits regardless of the interval:
# keeps a batch well below LMDB's dirty-page limit for one transaction.
_PENDING_BYTES_LIMIT = 64 * 1024 * 1024


def default_hash_ignore(bucket: str, key: bytes) -> bool:
    """etcd's DefaultIgnores: consistent index and term differ legitimately between members."""
    return bucket == BUCKET_META and (key == b"consistent_index" or key == b"term")


class Backend:
    """Named buckets over one LMDB environment with a batched write transaction."""

    def __init__(
        self,
        path: str,
        *,
        map_size: int,
        batch_interval: float = 0.1,
        batch_limit: int = 10000,
    ) -> None:
        self.path = os.fspath(path)
        self.map_size = map_size
        self.batch_interval = batch_interval
        self.batch_limit = batch_limit
        # Callables run inside the batch tx right before it commits.
        self.pre_commit_hook: list[Callable[[], None]] = []
        self.pending = 0
        self._pending_bytes = 0
        self._last_commit = time.monotonic()
        self._open()

    # -- lifecycle ---------------------------------------------------------------------

    def _open(self) -> None:
        d = os.path.dirname(self.path)
        if d:
            os.makedirs(d, exist_ok=True)
        for name in os.listdir(d or "."):
            if name.startswith(".defrag-"):  # a defragmentation that crashed mid-copy
                os.unlink(os.path.join(d or ".", name))
        self.env = lmdb.Environment(
            self.path,
            map_size=self.map_size,
            subdir=False,
            # Data pages are fsynced at each (batched, ~100 ms) commit and the meta page is
            # not: after a power loss LMDB keeps its integrity and at worst rolls back the
            # last commit, which WAL replay redoes. sync=False would let an OS crash corrupt
            # the database, and the WAL alone cannot rebuild it.
            sync=True,
            metasync=False,
            max_dbs=16,
            max_readers=256,
            readahead=False,
            meminit=False,
        )
        self._dbs: dict[str, object] = {}
        with self.env.begin(write=True) as txn:
            for name in BUCKETS:
                self._dbs[name] = self.env.open_db(name.encode(), txn=txn, create=True)
        self.txn = self.env.begin(write=True)

    def close(self) -> None:
        """Commit pending writes and close the environment."""
        if self.txn is not None:
            self.commit(reopen=False)
        self.env.close()

    # -- batch transaction ---------------------------------------------------------------

    def commit(self, *, reopen: bool = True) -> None:
        """Run the pre-commit hooks, commit the batch tx and start the next one."""
        for hook in self.pre_commit_hook:
            hook()
        t0 = time.monotonic()
        self.txn.commit()
        BACKEND_COMMIT_SECONDS.observe(time.monotonic() - t0)
        self.txn = self.env.begin(write=True) if reopen else None
        self.pending = 0
        self._pending_bytes = 0
        self._last_commit = time.monotonic()

    def maybe_commit(self) -> bool:
        """Commit if the batch is big enough or old enough; returns whether it committed."""
        if self.pending == 0:
            return False
        if (
            self.pending >= self.batch_limit
            or self._pending_bytes >= _PENDING_BYTES_LIMIT
            or time.monotonic() - self._last_commit >= self.batch_interval
        ):
            self.commit()
            return True
        return False

    def sync(self) -> None:
        """Flush committed data to stable storage (safe from a worker thread)."""
        self.env.sync(True)

    # -- data access (batch tx; owner thread only) -------------------------------------

    def put(self, bucket: str, key: bytes, value: bytes) -> None:
        self.txn.put(key, value, db=self._dbs[bucket])
        self.pending += 1
        self._pending_bytes += len(key) + len(value)

    def seq_put(self, bucket: str, key: bytes, value: bytes) -> None:
        """Put a key known to sort after every existing key (append mode: dense pages)."""
        db = self._dbs[bucket]
        if not self.txn.put(key, value, append=True, db=db):
            self.txn.put(key, value, db=db)
        self.pending += 1
        self._pending_bytes += len(key) + len(value)

    def delete(self, bucket: str, key: bytes) -> bool:
        self.pending += 1
        return self.txn.delete(key, db=self._dbs[bucket])

    def get(self, bucket: str, key: bytes) -> bytes | None:
        return self.txn.get(key, db=self._dbs[bucket])

    def get_many(self, bucket: str, keys: list[bytes]) -> list[bytes | None]:
        get = self.txn.get
        db = self._dbs[bucket]
        return [get(k, None, db) for k in keys]

    def range(
        self, bucket: str, start: bytes, end: bytes | None = None, limit: int = 0
    ) -> list[tuple[bytes, bytes]]:
        """Items with start <= key < end (end None: no upper bound), in key order."""
        out: list[tuple[bytes, bytes]] = []
        cur = self.txn.cursor(db=self._dbs[bucket])
        if not cur.set_range(start):
            return out
        for k, v in cur.iternext():
            if end is not None and k >= end:
                break
            out.append((k, v))
            if limit and len(out) >= limit:
                break
        return out

    def for_each(self, bucket: str) -> Iterator[tuple[bytes, bytes]]:
        """Iterate every item of a bucket in key order (do not write while iterating)."""
        cur = self.txn.cursor(db=self._dbs[bucket])
        if cur.first():
            yield from cur.iternext()

    def cursor(self, bucket: str) -> lmdb.Cursor:
        """A raw cursor on the batch tx; invalid after the next commit."""
        return self.txn.cursor(db=self._dbs[bucket])

    def count(self, bucket: str) -> int:
        return self.txn.stat(self._dbs[bucket])["entries"]

    # -- maintenance ---------------------------------------------------------------------

    def size(self) -> int:
        """Bytes of the database file on disk."""
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def size_in_use(self) -> int:
        """Bytes of pages holding live data (the file minus its free pages)."""
        st = self.txn.stat(self._dbs[BUCKET_KEY])
        psize = st["psize"]
        pages = 2  # the two meta pages
        main = self.txn.stat()
        pages += main["branch_pages"] + main["leaf_pages"] + main["overflow_pages"]
        for db in self._dbs.values():
            s = self.txn.stat(db)
            pages += s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
        return pages * psize

    def hash(self, ignore: Callable[[str, bytes], bool] | None = default_hash_ignore) -> int:
        """CRC-32 over every bucket's name, keys and values (bucket names in byte order).

        Like etcd's backend Hash, but zlib's IEEE polynomial instead of Castagnoli: it is
        only ever compared between petcd members.
        """
        h = 0
        for name in sorted(BUCKETS, key=str.encode):
            h = zlib.crc32(name.encode(), h)
            for k, v in self.for_each(name):
                if ignore is not None and ignore(name, k):
                    continue
                h = zlib.crc32(v, zlib.crc32(k, h))
        return h

    def defrag(self) -> None:
        """Rewrite the file compactly (LMDB compacting copy), swap it in and reopen."""
        self.commit(reopen=False)
        d = os.path.dirname(self.path) or "."
        fd, tmp = tempfile.mkstemp(prefix=".defrag-", dir=d)
        try:
            self.env.copyfd(fd, compact=True)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            self.txn = self.env.begin(write=True)
            raise
        os.close(fd)
        self.env.close()
        os.replace(tmp, self.path)
        dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # the rename itself must survive a crash
        finally:
            os.close(dir_fd)
        self._open()

    def replace(self, db_file: str) -> None:
        """Swap in a received database image (a Raft snapshot from the leader) and reopen.

        Uncommitted batch writes are discarded: the image supersedes them.
        """
        self.txn.abort()
        self.txn = None
        self.env.close()
        os.replace(db_file, self.path)
        d = os.path.dirname(self.path) or "."
        dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.pending = 0
        self._pending_bytes = 0
        self._open()

    def snapshot(self, dest: str | os.PathLike[str] | BinaryIO) -> int:
        """Write a consistent copy of the committed database; returns its size in bytes.

        ``dest`` is a path (written via a temp file and renamed) or a binary file object.
        Safe from a worker thread: LMDB copies inside its own read transaction. Always a
        compacting copy: a plain LMDB copy takes the writer lock, which the open batch tx
        holds for good.
        """
        if isinstance(dest, str | os.PathLike):
            p = os.fspath(dest)
            fd, tmp = tempfile.mkstemp(prefix=".snap-", dir=os.path.dirname(p) or ".")
            try:
                self.env.copyfd(fd, compact=True)
                os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            os.replace(tmp, p)
            return size
        try:
            fileno = dest.fileno()
        except (AttributeError, OSError, ValueError):
            fileno = None
        if fileno is not None:
            dest.flush()
            start = os.lseek(fileno, 0, os.SEEK_CUR)
            self.env.copyfd(fileno, compact=True)
            end = os.lseek(fileno, 0, os.SEEK_END)
            dest.seek(end)
            return end - start
        with tempfile.TemporaryFile() as tf:
            self.env.copyfd(tf.fileno(), compact=True)
            tf.seek(0)
            size = 0
            while chunk := tf.read(1 << 20):
                dest.write(chunk)
                size += len(chunk)
            return size
