"""petcdctl `snapshot status` and `snapshot restore`, as etcdctl 3.4 prints them.

Both work offline on a snapshot file (the LMDB image plus its SHA-256 trailer; see
``petcd.server.restore``). etcdctl opens a bolt file, so these only read petcd snapshots and
real etcdctl cannot read them. `status` prints etcd's columns; its hash is CRC-32 (IEEE) over
the buckets' names, keys and values where etcd uses CRC-32C, so hashes only compare between
petcd snapshots.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

from petcd.ctl.flags import Flag
from petcd.ctl.gofmt import humanize_bytes
from petcd.ctl.main import Command, fail
from petcd.ctl.printer import JSONPrinter
from petcd.server.restore import RestoreError, restore, snapshot_status

if TYPE_CHECKING:
    from petcd.ctl.main import Ctx

__all__ = ["register"]

EXIT_ERROR = 1
EXIT_BAD_ARGS = 128

DEFAULT_NAME = "default"
DEFAULT_PEER_URLS = "http://localhost:2380"


def _zap(msg: str, caller: str, **kv: Any) -> None:
    """zap.NewProduction's line (float ts), as etcdctl's snapshot manager logs."""
    line = {"level": "info", "ts": time.time(), "caller": caller, "msg": msg, **kv}
    sys.stderr.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n")
    sys.stderr.flush()


async def cmd_snapshot_status(ctx: Ctx, args: list[str]) -> None:
    if len(args) != 1:
        fail(EXIT_BAD_ARGS, "snapshot status requires exactly one argument")
    try:
        st = snapshot_status(args[0])
    except RestoreError as e:
        fail(EXIT_ERROR, str(e))
    d = st.to_json()
    p = ctx.display
    if isinstance(p, JSONPrinter):
        # Go's json.Marshal of snapshot.Status (the shared printer has no json form of it)
        p.w(json.dumps(d, separators=(",", ":")) + "\n")
    else:
        p.db_status(d)  # protobuf: Unsupported, exit 4 as etcdctl


async def cmd_snapshot_restore(ctx: Ctx, args: list[str]) -> None:
    if len(args) != 1:
        fail(EXIT_BAD_ARGS, "snapshot restore requires exactly one argument")
    name = ctx["name"]
    tty = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        # beyond etcdctl: progress on a terminal, as `snapshot save` shows it
        if tty:
            pct = f" {100 * done // total:3d}%" if total else ""
            sys.stderr.write(f"\r{humanize_bytes(done)} restored{pct}\x1b[K")
            sys.stderr.flush()

    try:
        restore(
            args[0],
            name=name,
            data_dir=ctx["data-dir"] or f"{name}.etcd",
            wal_dir=ctx["wal-dir"] or None,
            initial_cluster=ctx["initial-cluster"],
            initial_cluster_token=ctx["initial-cluster-token"],
            initial_advertise_peer_urls=ctx["initial-advertise-peer-urls"].split(","),
            skip_hash_check=ctx["skip-hash-check"],
            logger=_zap,
            progress=progress,
        )
    except RestoreError as e:
        if tty:
            sys.stderr.write("\n")
        fail(EXIT_ERROR, str(e))
    if tty:
        sys.stderr.write("\n")


def register(root: Command) -> None:
    """Add `status` and `restore` under `snapshot`."""
    group = next(s for s in root.subs if s.name == "snapshot")
    cmds = [
        Command(
            "restore",
            "restore <filename> [options]",
            "Restores an etcd member snapshot to an etcd directory",
            cmd_snapshot_restore,
            [  # fmt: skip
                Flag("data-dir", "string", "", "Path to the data directory"),
                Flag(
                    "initial-advertise-peer-urls",
                    "string",
                    DEFAULT_PEER_URLS,
                    "List of this member's peer URLs to advertise to the rest of the cluster",
                ),
                Flag(
                    "initial-cluster",
                    "string",
                    f"{DEFAULT_NAME}={DEFAULT_PEER_URLS}",
                    "Initial cluster configuration for restore bootstrap",
                ),
                Flag(
                    "initial-cluster-token",
                    "string",
                    "etcd-cluster",
                    "Initial cluster token for the etcd cluster during restore bootstrap",
                ),
                Flag("name", "string", DEFAULT_NAME, "Human-readable name for this member"),
                Flag(
                    "skip-hash-check",
                    "bool",
                    False,
                    "Ignore snapshot integrity hash value (required if copied from data directory)",
                ),
                Flag(
                    "wal-dir",
                    "string",
                    "",
                    "Path to the WAL directory (use --data-dir if none given)",
                ),
            ],
        ),
        Command(
            "status",
            "status <filename>",
            "Gets backend snapshot status of a given file",
            cmd_snapshot_status,
        ),
    ]
    for cmd in cmds:
        if any(s.name == cmd.name for s in group.subs):
            continue
        cmd.parent = group
        group.subs.append(cmd)
    group.subs.sort(key=lambda s: s.name)
