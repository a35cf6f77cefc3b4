"""petcdctl `check perf`: etcdctl 3.4's write-performance check.

The workload is etcdctl's: for `duration` seconds (60), puts of a 256-byte key (under
`--prefix`, a random varint at its head) and a 1 KiB zero value, paced by a limiter of
`limit` ops/s with a burst of one, handed to `clients` concurrent workers through a queue as
deep as the worker count. The same cheggaaa/pb progress bar is drawn on stdout, then the same
PASS/FAIL lines: throughput above 90 % of the limit, slowest request at most 0.5 s, standard
deviation at most 0.1 s. The written keys are deleted afterwards (then optionally compacted
and defragmented).

Deviations: the workers share at most `MAX_CONNECTIONS` gRPC connections (etcdctl opens one
per worker: up to 1000 for xl); the environment variable `PETCDCTL_CHECK_PERF_DURATION`
(seconds) shortens the run for tests.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import sys
import time
from typing import TYPE_CHECKING

from petcd.client import aio
from petcd.client import errors as cerr
from petcd.ctl.flags import Flag
from petcd.ctl.gofmt import quote
from petcd.ctl.main import Command, CtlExit, error_text, fail, flush, out

if TYPE_CHECKING:
    from petcd.ctl.main import Ctx

__all__ = ["LOADS", "PerfStats", "register", "stats"]

EXIT_ERROR = 1
EXIT_INVALID_INPUT = 3
EXIT_BAD_FEATURE = 4
MAX_CONNECTIONS = 8
KEY_SIZE, VALUE_SIZE = 256, 1024

# load -> (ops/s limit, concurrent clients, duration in seconds)
LOADS: dict[str, tuple[int, int, int]] = {
    "s": (150, 50, 60),
    "m": (1000, 200, 60),
    "l": (8000, 500, 60),
    "xl": (15000, 1000, 60),
}
ALIASES = {
    "s": "s", "small": "s", "m": "m", "medium": "m",
    "l": "l", "large": "l", "xl": "xl", "xLarge": "xl",
}  # fmt: skip

FLAGS = [
    Flag("auto-compact", "bool", False, "Compact storage with last revision after test is finished."),
    Flag("auto-defrag", "bool", False, "Defragment storage after test is finished."),
    Flag("load", "string", "s", "The performance check's workload model. Accepted workloads: s(small), m(medium), l(large), xl(xLarge)"),
    Flag("prefix", "string", "/etcdctl-check-perf/", "The prefix for writing the performance check's keys."),
]  # fmt: skip


class PerfStats:
    """pkg/report's Stats: latencies of the successful requests, errors by message."""

    def __init__(self) -> None:
        self.lats: list[float] = []
        self.errors: dict[str, int] = {}
        self.total = 0.0
        self.rps = 0.0
        self.average = math.nan
        self.stddev = math.nan
        self.slowest = 0.0
        self.fastest = 0.0


def stats(lats: list[float], errors: dict[str, int], total: float) -> PerfStats:
    """Summarise as report.processResults does (NaN average/stddev when nothing succeeded)."""
    s = PerfStats()
    s.lats, s.errors, s.total = sorted(lats), dict(errors), total
    n = len(lats)
    s.rps = n / total if total > 0 else 0.0
    if n:
        s.average = sum(lats) / n
        s.stddev = math.sqrt(sum((x - s.average) ** 2 for x in lats) / n)
        s.fastest, s.slowest = s.lats[0], s.lats[-1]
    return s


def _gof(x: float) -> str:
    """Go's %f (NaN and infinities spelled Go's way)."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return f"{x:f}"


def verdict(s: PerfStats, limit: int) -> tuple[list[str], bool]:
    """etcdctl's result lines and whether the check passed."""
    lines: list[str] = []
    ok = True
    if s.errors:
        lines.append("FAIL: too many errors")
        lines.extend(f"FAIL: ERROR({k}) -> {v}" for k, v in s.errors.items())
        ok = False
    if s.rps / limit <= 0.9:
        lines.append(f"FAIL: Throughput too low: {int(s.rps) + 1} writes/s")
        ok = False
    else:
        lines.append(f"PASS: Throughput is {int(s.rps) + 1} writes/s")
    if s.slowest > 0.5:
        lines.append(f"Slowest request took too long: {_gof(s.slowest)}s")
        ok = False
    else:
        lines.append(f"PASS: Slowest request took {_gof(s.slowest)}s")
    if s.stddev > 0.1:
        lines.append(f"Stddev too high: {_gof(s.stddev)}s")
        ok = False
    else:
        lines.append(f"PASS: Stddev is {_gof(s.stddev)}s")
    lines.append("PASS" if ok else "FAIL")
    return lines, ok


class _Bar:
    """cheggaaa/pb.v1 as etcdctl configures it, without a terminal width: counters, percent and
    time left, redrawn every 200 ms after a carriage return."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.current = 0
        self.start = self.changed = time.monotonic()

    def add(self) -> None:
        self.current += 1
        self.changed = time.monotonic()

    def text(self) -> str:
        cur, total = self.current, self.total
        pct = cur / total * 100 if total else 0.0
        out = f" {cur} / {total} " + f" {pct:6.2f}%"
        if cur > 0:
            per = (self.changed - self.start) / cur
            left = int((total - cur) * per - (time.monotonic() - self.changed))
            if left > 0:
                h, rem = divmod(left, 3600)
                m, sec = divmod(rem, 60)
                out += f" {h}h{m:02d}m{sec:02d}s" if h else f" {m:02d}m{sec:02d}s"
        return out

    def draw(self) -> None:
        sys.stdout.buffer.write(("\r" + self.text()).encode())
        flush()

    async def run(self) -> None:
        while True:
            self.draw()
            await asyncio.sleep(0.2)


def _put_varint(buf: bytearray, v: int) -> None:
    """binary.PutVarint: zig-zag, then 7 bits a byte (the rest of `buf` is left as it was)."""
    u = (v << 1) ^ (v >> 63)
    i = 0
    while u >= 0x80:
        buf[i] = (u & 0x7F) | 0x80
        u >>= 7
        i += 1
    buf[i] = u


async def _run_load(
    clients: list[aio.Client], prefix: bytes, limit: int, workers: int, duration: float
) -> PerfStats:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=workers)
    lats: list[float] = []
    errors: dict[str, int] = {}
    value = bytes(VALUE_SIZE)

    async def worker(c: aio.Client) -> None:
        while (key := await queue.get()) is not None:
            st = time.monotonic()
            try:
                await c.put(key, value, timeout=None)
            except cerr.ClientError as e:
                msg = error_text(e)
                errors[msg] = errors.get(msg, 0) + 1
            else:
                lats.append(time.monotonic() - st)

    async def generate() -> None:
        # rate.Limiter(limit, burst 1): one token every 1/limit s, none saved up while idle.
        loop = asyncio.get_running_loop()
        end = loop.time() + duration
        k = bytearray(KEY_SIZE)
        nxt = loop.time()
        while True:
            now = loop.time()
            nxt = max(nxt, now)
            if nxt >= end:
                break
            if nxt > now:
                await asyncio.sleep(nxt - now)
            nxt += 1.0 / limit
            _put_varint(k, random.randrange(2**63 - 1))
            await queue.put(prefix + bytes(k))
        for _ in range(workers):
            await queue.put(None)

    started = time.monotonic()
    tasks = [asyncio.create_task(worker(clients[i % len(clients)])) for i in range(workers)]
    await generate()
    await asyncio.gather(*tasks)
    return stats(lats, errors, time.monotonic() - started)


async def cmd_check_perf(ctx: Ctx, args: list[str]) -> None:
    model = ALIASES.get(ctx["load"])
    if model is None:
        fail(EXIT_BAD_FEATURE, f"unknown load option {ctx['load']}")
    limit, workers, duration = LOADS[model]
    override = os.environ.get("PETCDCTL_CHECK_PERF_DURATION")
    if override:
        duration = max(1, int(override))
    prefix_s = ctx["prefix"]
    prefix = prefix_s.encode("utf-8", "surrogateescape")
    clients = [ctx.client() for _ in range(min(workers, MAX_CONNECTIONS))]
    c0 = clients[0]
    try:
        resp = await c0.get(prefix, prefix=True, limit=1, timeout=duration)
    except cerr.ClientError as e:
        ctx.warn_rpc(e)
        fail(EXIT_ERROR, error_text(e))
    if resp.kvs:
        fail(
            EXIT_INVALID_INPUT,
            f"prefix {quote(prefix_s)} has keys. Delete with etcdctl del --prefix {prefix_s} first",
        )
    bar = _Bar(duration)
    bar_task = asyncio.create_task(bar.run())

    async def tick() -> None:
        for _ in range(duration):
            await asyncio.sleep(1)
            bar.add()

    tick_task = asyncio.create_task(tick())
    try:
        s = await _run_load(clients, prefix, limit, workers, duration)
    finally:
        # etcdctl prints its verdict before the bar's last redraw: no newline after the bar.
        tick_task.cancel()
        bar_task.cancel()
    try:
        dresp = await c0.delete(prefix, prefix=True, timeout=30)
    except cerr.ClientError as e:
        ctx.warn_rpc(e)
        fail(EXIT_ERROR, error_text(e))
    if ctx["auto-compact"]:
        rev = dresp.header.revision
        out(f"Compacting with revision {rev}\n")
        try:
            await c0.compact(rev, physical=True, timeout=30)
        except cerr.ClientError as e:
            ctx.warn_rpc(e)
            fail(EXIT_ERROR, error_text(e))
        out(f"Compacted with revision {rev}\n")
    if ctx["auto-defrag"]:
        for ep in c0.endpoints:
            out(f"Defragmenting {quote(ep)}\n")
            try:
                await ctx.client([ep]).defragment(timeout=30)
            except cerr.ClientError as e:
                ctx.warn_rpc(e, ep)
                fail(EXIT_ERROR, error_text(e))
            out(f"Defragmented {quote(ep)}\n")
    lines, ok = verdict(s, limit)
    out("".join(line + "\n" for line in lines))
    if not ok:
        raise CtlExit(EXIT_ERROR)


def register(root: Command) -> None:
    if any(s.name == "check" for s in root.subs):
        return
    group = Command("check", "check <subcommand>", "commands for checking properties of the etcd cluster")  # fmt: skip
    group.parent = root
    root.subs.append(group)
    perf = Command(
        "perf", "perf [options]", "Check the performance of the etcd cluster", cmd_check_perf, FLAGS
    )
    perf.parent = group
    group.subs.append(perf)
