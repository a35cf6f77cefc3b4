"""Offline disaster recovery: a new member's data dir from a snapshot file, and its status.

A petcd snapshot file (``petcdctl snapshot save``, the Maintenance.Snapshot RPC) is the LMDB
image of ``member/snap/db`` followed by the 32-byte SHA-256 of the image, as etcd appends one
to its bolt image. ``restore`` follows etcd's (``etcdutl/snapshot/v3_snapshot.go``):

* verify the SHA-256 (unless ``skip_hash_check``), copy the image to ``member/snap/db``;
* drop the old cluster's members (``members``/``members_removed``) and store the members of
  ``--initial-cluster``, with the IDs a fresh bootstrap with the same flags would give them;
* write a WAL (metadata = member ID + cluster ID) with one ConfChangeAddNode per member at
  term 1, hard state commit = number of members, and a Raft snapshot at that index whose
  ConfState names every member as a voter;
* set the consistent index to that index, so nothing before it is applied again.

The result looks exactly like a member that restarts after a snapshot, so
``EtcdServer.open()`` takes its ordinary restart path: members from the backend, Raft
configuration from the snapshot, every key, lease and revision from the image.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lmdb

from petcd.backend.backend import (
    BUCKET_KEY,
    BUCKET_MEMBERS,
    BUCKET_MEMBERS_REMOVED,
    BUCKET_META,
    Backend,
)
from petcd.cli.config import ConfigError, ServerConfig
from petcd.cli.flags import FlagValueError, parse_url_list
from petcd.raft import encode_conf_change
from petcd.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMetadata,
)
from petcd.server.ids import cluster_id, member_id
from petcd.server.membership import Member, RaftCluster
from petcd.wal.snap import Snapshotter
from petcd.wal.wal import WAL

__all__ = ["RestoreError", "SnapshotStatus", "has_checksum", "restore", "snapshot_status"]

SHA256_SIZE = 32
_BE64 = struct.Struct(">Q")
_META_CONSISTENT_INDEX = b"consistent_index"
_META_TERM = b"term"
# Only an address-space reservation (LMDB without writemap does not grow the file to it);
# the server's own default, so the restored file records nothing unusual.
_MAP_SIZE = 4 << 30

Logger = Callable[..., None]  # (msg, caller, **fields)


class RestoreError(Exception):
    """Restore or status failed; the message is etcd's wording for the same failure."""


def has_checksum(size: int) -> bool:
    """etcd's hasChecksum: the file carries a SHA-256 trailer iff size % 512 == 32 (images
    are whole pages, and 512 divides every page size)."""
    return size % 512 == SHA256_SIZE


def _go_bytes(b: bytes) -> str:
    # Go's %v of a []byte
    return "[" + " ".join(str(x) for x in b) + "]"


def _exists(path: str) -> bool:
    return os.path.lexists(path)


def _no_log(msg: str, caller: str, **fields: Any) -> None:
    pass


def restore(
    snapshot_path: str,
    *,
    name: str = "default",
    data_dir: str | None = None,
    wal_dir: str | None = None,
    initial_cluster: str = "default=http://localhost:2380",
    initial_cluster_token: str = "etcd-cluster",
    initial_advertise_peer_urls: str | list[str] = "http://localhost:2380",
    skip_hash_check: bool = False,
    logger: Logger | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Build a data dir for member ``name`` of a new cluster from a snapshot file.

    Raises RestoreError (nothing is left behind once the data dir was created by us).
    ``logger(msg, caller, **fields)`` receives etcdctl's log lines; ``progress(copied,
    total)`` is called as the database image is copied.
    """
    lg = logger or _no_log
    try:
        peer_urls = parse_url_list(initial_advertise_peer_urls)
        cfg = ServerConfig(
            name=name,
            initial_cluster=initial_cluster,
            initial_cluster_token=initial_cluster_token,
            initial_advertise_peer_urls=peer_urls,
        )
        initial = cfg.check_bootstrap()
    except (ConfigError, FlagValueError) as e:
        msg = getattr(e, "message", None) or str(e)
        # etcdctl reports types.NewURLsMap's error bare; the server prefixes it
        raise RestoreError(msg.removeprefix("error setting up initial cluster: ")) from None

    data_dir = data_dir or f"{name}.etcd"
    # etcd 3.5 accepts an existing empty dir (3.4 refuses any); the wording is 3.4's.
    if _exists(data_dir) and (not os.path.isdir(data_dir) or os.listdir(data_dir)):
        raise RestoreError(f'data-dir "{data_dir}" exists')
    if wal_dir:
        if _exists(wal_dir):
            raise RestoreError(f'wal-dir "{wal_dir}" exists')
    else:
        wal_dir = os.path.join(data_dir, "member", "wal")
    snap_dir = os.path.join(data_dir, "member", "snap")
    where = {"path": snapshot_path, "wal-dir": wal_dir, "data-dir": data_dir, "snap-dir": snap_dir}
    lg("restoring snapshot", "snapshot/v3_snapshot.go:296", **where)

    try:
        src = open(snapshot_path, "rb")  # noqa: SIM115 - closed below, before any cleanup
    except OSError as e:
        raise RestoreError(f"open {snapshot_path}: {_os_reason(e)}") from None
    # On failure remove what we made, so a retry is not refused for an existing dir.
    created = [p for p in (data_dir, wal_dir) if not _exists(p)]
    if data_dir not in created:
        created.append(os.path.join(data_dir, "member"))
    try:
        with src:
            _copy_and_verify(src, snapshot_path, snap_dir, skip_hash_check, progress)
        ids = {n: member_id(u, initial_cluster_token) for n, u in initial.items()}
        cid = cluster_id(list(ids.values()))
        cluster = RaftCluster(cid, ids[name])
        for n, u in initial.items():
            cluster.add(Member(ids[n], n, list(u), []))
        commit, term = len(ids), 1
        _rewrite_backend(os.path.join(snap_dir, "db"), cluster, commit, term, lg)
        _write_wal_and_snap(wal_dir, snap_dir, cluster, commit, term)
    except BaseException:
        for p in created:
            shutil.rmtree(p, ignore_errors=True)
        raise
    lg("restored snapshot", "snapshot/v3_snapshot.go:309", **where)


def _os_reason(e: OSError) -> str:
    # Go prints the errno text in lower case: "no such file or directory"
    return (e.strerror or str(e)).lower()


def _copy_and_verify(
    src: Any,
    path: str,
    snap_dir: str,
    skip_hash_check: bool,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    size = os.fstat(src.fileno()).st_size
    if size < SHA256_SIZE:
        # etcd's Seek(-32, SeekEnd) fails on such a file
        raise RestoreError(f"seek {path}: invalid argument")
    src.seek(size - SHA256_SIZE)
    want = src.read(SHA256_SIZE)
    src.seek(0)
    hashed = has_checksum(size)
    if not hashed and not skip_hash_check:
        raise RestoreError("snapshot missing hash but --skip-hash-check=false")
    os.makedirs(snap_dir, mode=0o700, exist_ok=True)
    image = size - SHA256_SIZE if hashed else size
    h = hashlib.sha256()
    db = os.path.join(snap_dir, "db")
    fd = os.open(db, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = image
        while left:
            buf = src.read(min(left, 1 << 20))
            if not buf:
                break
            left -= len(buf)
            h.update(buf)
            view = memoryview(buf)
            while view:
                view = view[os.write(fd, view) :]
            if progress is not None:
                progress(image - left, image)
        os.fsync(fd)
    finally:
        os.close(fd)
    if hashed and not skip_hash_check:
        got = h.digest()
        if got != want:
            raise RestoreError(f"expected sha256 {_go_bytes(want)}, got {_go_bytes(got)}")


def _rewrite_backend(db: str, cluster: RaftCluster, commit: int, term: int, lg: Logger) -> None:
    try:
        be = Backend(db, map_size=_MAP_SIZE)
    except lmdb.Error:
        # etcd's backend panics here ("cannot open database"); a clean error is kinder
        raise RestoreError("invalid database") from None
    try:
        for bucket in (BUCKET_MEMBERS, BUCKET_MEMBERS_REMOVED):
            for k in [bytes(k) for k, _ in be.range(bucket, b"")]:
                be.delete(bucket, k)
        for m in cluster.member_list():
            cluster.save_member(be, m)
            lg(
                "added member",
                "membership/cluster.go:392",
                **{"cluster-id": f"{cluster.cluster_id:x}", "local-member-id": "0",
                   "added-peer-id": f"{m.id:x}", "added-peer-peer-urls": m.peer_urls},
            )  # fmt: skip
        # The new Raft log starts over: entries up to `commit` are the bootstrap ones.
        be.put(BUCKET_META, _META_CONSISTENT_INDEX, _BE64.pack(commit))
        be.put(BUCKET_META, _META_TERM, _BE64.pack(term))
        be.commit()
        be.sync()
    finally:
        be.close()
    lock = db + "-lock"
    if os.path.exists(lock):
        os.unlink(lock)  # LMDB's reader table: recreated on open, no need to ship it


def _write_wal_and_snap(
    wal_dir: str, snap_dir: str, cluster: RaftCluster, commit: int, term: int
) -> None:
    from petcd.server.etcdserver import _encode_wal_metadata  # heavy module: import late

    members = cluster.member_list()  # by ID, as etcd's MemberIDs()
    ids = [m.id for m in members]
    entries = [
        Entry(term, i, EntryType.CONF_CHANGE,
              encode_conf_change(ConfChange(ConfChangeType.ADD_NODE, m.id, m.to_json())))
        for i, m in enumerate(members, 1)
    ]  # fmt: skip
    wal = WAL.create(wal_dir, _encode_wal_metadata(cluster.local_id, cluster.cluster_id))
    try:
        wal.save(HardState(term=term, vote=ids[0], commit=commit), entries)
        meta = SnapshotMetadata(index=commit, term=term, conf_state=ConfState(voters=ids))
        Snapshotter(snap_dir).save(Snapshot(metadata=meta, data=cluster.to_snapshot()))
        wal.save_snapshot(meta)
    finally:
        wal.close()


# -- snapshot status ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotStatus:
    """etcd's snapshot.Status. ``hash`` is CRC-32 (zlib's IEEE polynomial, not etcd's
    Castagnoli) over every bucket's name, keys and values in byte order."""

    hash: int
    revision: int
    total_key: int
    total_size: int

    def to_json(self) -> dict[str, int]:
        return {
            "hash": self.hash,
            "revision": self.revision,
            "totalKey": self.total_key,
            "totalSize": self.total_size,
        }


def snapshot_status(path: str) -> SnapshotStatus:
    """Hash, latest revision, entry count and size of a snapshot file (read-only)."""
    try:
        os.stat(path)
    except OSError as e:
        raise RestoreError(f"stat {path}: {_os_reason(e)}") from None
    try:
        env = lmdb.Environment(
            path, subdir=False, readonly=True, lock=False, max_dbs=64, map_size=_MAP_SIZE
        )
    except lmdb.Error:
        raise RestoreError("invalid database") from None  # bolt's ErrInvalid, as etcdctl
    try:
        h = 0
        revision = 0
        total = 0
        with env.begin() as txn:
            names = [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]
            for bname in names:
                try:
                    db = env.open_db(bname, txn=txn, create=False)
                except lmdb.Error:
                    raise RestoreError(f"cannot get hash of bucket {bname.decode()}") from None
                h = zlib.crc32(bname, h)
                for k, v in txn.cursor(db=db).iternext():
                    h = zlib.crc32(v, zlib.crc32(k, h))
                    total += 1
                if bname == BUCKET_KEY.encode():
                    last = txn.cursor(db=db)
                    if last.last():
                        revision = _BE64.unpack_from(last.key())[0]
        info = env.info()
        size = (info["last_pgno"] + 1) * env.stat()["psize"]
    finally:
        env.close()
    return SnapshotStatus(h & 0xFFFFFFFF, revision, total, size)
