"""petcdctl `make-mirror <destination>`: etcdctl 3.4's mirror of a key space into another cluster.

It copies the source at one revision (ranges of 1000 keys, each key a Put on the destination),
then watches from the next revision and replays each revision's events as one destination txn.
Every 30 s it prints the number of keys synced so far. It runs until an error (a compacted watch
revision included) and exits 1 with `Error: <message>`, as etcdctl does.

The reporting interval can be shortened for tests with the environment variable
`PETCDCTL_MIRROR_INTERVAL` (seconds); etcdctl has no such knob.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import TYPE_CHECKING

import grpc

from petcd.client import aio
from petcd.client import errors as cerr
from petcd.ctl.flags import Flag
from petcd.ctl.main import Command, error_text, fail, flush
from petcd.proto.etcdserverpb import rpc_pb2 as pb
from petcd.proto.mvccpb import kv_pb2 as mvccpb

if TYPE_CHECKING:
    from petcd.ctl.main import Ctx

__all__ = ["make_mirror", "register"]

EXIT_ERROR = 1
EXIT_BAD_ARGS = 128
BATCH_LIMIT = 1000  # clientv3/mirror's range page size
REPORT_INTERVAL = 30.0

FLAGS = [
    Flag("dest-cacert", "string", "", "Verify certificates of TLS enabled secure servers using this CA bundle"),
    Flag("dest-cert", "string", "", "Identify secure client using this TLS certificate file for the destination cluster"),
    Flag("dest-insecure-transport", "bool", True, "Disable transport security for client connections"),
    Flag("dest-key", "string", "", "Identify secure client using this TLS key file"),
    Flag("dest-prefix", "string", "", "destination prefix to mirror a prefix to a different prefix in the destination cluster"),
    Flag("no-dest-prefix", "bool", False, "mirror key-values to the root of the destination cluster"),
    Flag("prefix", "string", "", "Key-value prefix to mirror"),
]  # fmt: skip


def _read(path: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        fail(EXIT_BAD_ARGS, f"open {path}: {e.strerror.lower() if e.strerror else e}")


def _dest_client(ctx: Ctx, endpoint: str) -> aio.Client:
    cert, key, ca = ctx["dest-cert"], ctx["dest-key"], ctx["dest-cacert"]
    creds = None
    if cert or key or ca or not ctx["dest-insecure-transport"]:
        creds = grpc.ssl_channel_credentials(_read(ca), _read(key), _read(cert))
    opts = [
        ("grpc.keepalive_time_ms", int(ctx["keepalive-time"] * 1000)),
        ("grpc.keepalive_timeout_ms", int(ctx["keepalive-timeout"] * 1000)),
    ]
    return aio.Client(
        [endpoint],
        timeout=None,
        dial_timeout=ctx["dial-timeout"],
        credentials=creds,
        options=opts,
    )


async def make_mirror(
    src: aio.Client,
    dst: aio.Client,
    prefix: bytes,
    dest_prefix: bytes | None,
    counter: list[int],
    revision: int = 0,
) -> None:
    """Mirror `prefix` (everything when empty) of `src` into `dst`, forever.

    `dest_prefix` replaces the prefix in destination keys (None: keep it; b"" with an empty
    `prefix` is the same). `counter[0]` counts the puts and deletes applied. `revision` pins
    the base copy (0: the current one). Raises the client error that stops it.
    """
    # clientv3/mirror pins the base copy (unless given a revision) to the revision a throwaway
    # Get observes.
    rev = revision or (await src.get(b"foo", timeout=None)).header.revision
    to = prefix if dest_prefix is None else dest_prefix

    def dest_key(k: bytes) -> bytes:
        return k.replace(prefix, to, 1)

    if prefix:
        key, end = prefix, aio.prefix_range_end(prefix)
    else:
        key, end = b"\x00", b"\x00"
    while True:
        resp = await src.get(key, range_end=end, revision=rev, limit=BATCH_LIMIT, timeout=None)
        for kv in resp.kvs:
            await dst.put(dest_key(kv.key), kv.value, timeout=None)
            counter[0] += 1
        if not resp.more:
            break
        key = resp.kvs[-1].key + b"\x00"

    w = src.watch(prefix, prefix=True, start_revision=rev + 1)
    try:
        async for wr in w.responses():
            ops: list[pb.RequestOp] = []
            last = 0
            for ev in wr.events:
                if last and ev.kv.mod_revision > last:
                    await dst.txn_request(pb.TxnRequest(success=ops), timeout=None)
                    ops = []
                last = ev.kv.mod_revision
                if ev.type == mvccpb.Event.PUT:
                    ops.append(aio.ops.put(dest_key(ev.kv.key), ev.kv.value))
                else:
                    ops.append(aio.ops.delete(dest_key(ev.kv.key)))
                counter[0] += 1
            if ops:
                await dst.txn_request(pb.TxnRequest(success=ops), timeout=None)
    finally:
        await w.close()


async def cmd_make_mirror(ctx: Ctx, args: list[str]) -> None:
    if len(args) != 1:
        fail(EXIT_BAD_ARGS, "make-mirror takes one destination argument")
    prefix = ctx["prefix"].encode("utf-8", "surrogateescape")
    dest_prefix = ctx["dest-prefix"].encode("utf-8", "surrogateescape")
    no_dest = ctx["no-dest-prefix"]
    dst = _dest_client(ctx, args[0])
    src = ctx.client()
    counter = [0]
    interval = float(os.environ.get("PETCDCTL_MIRROR_INTERVAL") or REPORT_INTERVAL)

    async def report() -> None:
        while True:
            await asyncio.sleep(interval)
            sys.stdout.buffer.write(f"{counter[0]}\n".encode())
            flush()

    reporter = asyncio.create_task(report())
    try:
        # etcdctl checks the prefix flags only once the base sync has started (after a Get).
        try:
            rev = (await src.get(b"foo", timeout=None)).header.revision
        except cerr.ClientError as e:
            ctx.warn_rpc(e)
            fail(EXIT_ERROR, error_text(e))
        if no_dest and dest_prefix:
            fail(
                EXIT_BAD_ARGS,
                "`--dest-prefix` and `--no-dest-prefix` cannot be set at the same time, choose one",
            )
        target = b"" if no_dest else (dest_prefix or None)
        try:
            await make_mirror(src, dst, prefix, target, counter, rev)
        except cerr.WatchCompacted:
            fail(EXIT_ERROR, "etcdserver: mvcc: required revision has been compacted")
        except cerr.WatchCanceled as e:
            fail(EXIT_ERROR, e.reason or "etcdserver: watch canceled")
        except cerr.ClientError as e:
            ctx.warn_rpc(e)
            fail(EXIT_ERROR, error_text(e))
        fail(EXIT_ERROR, "<nil>")
    finally:
        reporter.cancel()
        with contextlib.suppress(Exception):
            await dst.close()


def register(root: Command) -> None:
    if any(s.name == "make-mirror" for s in root.subs):
        return
    cmd = Command(
        "make-mirror",
        "make-mirror [options] <destination>",
        "Makes a mirror at the destination etcd cluster",
        cmd_make_mirror,
        FLAGS,
    )
    cmd.parent = root
    root.subs.append(cmd)
