"""petcdctl `check perf` and `check datascale`: etcdctl 3.4's write-performance and
memory-usage checks.

The workload is etcdctl's: for `duration` seconds (60), puts of a 256-byte key (under
`--prefix`, a random varint at its head) and a 1 KiB zero value, paced by a limiter of
`limit` ops/s with a burst of one, handed to `clients` concurrent workers through a queue as
deep as the worker count. The same cheggaaa/pb progress bar is drawn on stdout, then the same
PASS/FAIL lines: throughput above 90 % of the limit, slowest request at most 0.5 s, standard
deviation at most 0.1 s. The written keys are deleted afterwards (then optionally compacted
and defragmented).

`check datascale` reads the server's `process_resident_memory_bytes` from `<endpoint>/metrics`
(HTTP/1.1, as etcdctl's net/http client) before and after writing `limit` 512-byte keys with
512-byte zero values through `clients` workers, deletes them, and reports the difference.
petcd and etcd serve /metrics on the client port; against a port that speaks HTTP/2 only (petcd
with PETCD_GRPC_SERVER=grpcio) the check fails as etcdctl's does (same stdout and exit code)
with a hint on stderr.

Deviations: the workers share at most `MAX_CONNECTIONS` gRPC connections (etcdctl opens one
per worker: up to 1000 for xl); the environment variables `PETCDCTL_CHECK_PERF_DURATION`
(seconds) and `PETCDCTL_CHECK_DATASCALE_LIMIT` (key-value pairs) shrink the runs for tests;
datascale's first read gives up after --command-timeout (etcdctl waits forever).
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

# Both checks' clean-up flags.
AFTER_FLAGS = [
    Flag("auto-compact", "bool", False, "Compact storage with last revision after test is finished."),
    Flag("auto-defrag", "bool", False, "Defragment storage after test is finished."),
]  # fmt: skip

FLAGS = [
    *AFTER_FLAGS,
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



async def _require_empty_prefix(ctx, client, prefix_s: str, timeout: float) -> None:
    """etcdctl check perf/datascale refuse a prefix that already holds keys."""
    prefix = prefix_s.encode("utf-8", "surrogateescape")
    try:
        resp = await client.get(prefix, prefix=True, limit=1, timeout=timeout)
    except cerr.ClientError as e:
        ctx.warn_rpc(e)
        fail(EXIT_ERROR, error_text(e))
    if resp.kvs:
        fail(
            EXIT_INVALID_INPUT,
            f"prefix {quote(prefix_s)} has keys. Delete with etcdctl del --prefix {prefix_s} first",
        )

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
    await _require_empty_prefix(ctx, c0, prefix_s, duration)
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
    await _compact_defrag(ctx, c0, dresp.header.revision)
    lines, ok = verdict(s, limit)
    out("".join(line + "\n" for line in lines))
    if not ok:
        raise CtlExit(EXIT_ERROR)


# ---------------------------------------------------------------------------------------------
# check datascale

# load -> (key-value pairs, concurrent clients); etcdctl reports 1024 bytes per pair (512-byte
# keys, 512-byte values).
DATASCALE_LOADS: dict[str, tuple[int, int]] = {
    "s": (10000, 50),
    "m": (100000, 200),
    "l": (1000000, 500),
    "xl": (3000000, 1000),
}
DATASCALE_KV_SIZE = 1024
DS_KEY_SIZE = DS_VALUE_SIZE = 512
RESIDENT_MEMORY = "process_resident_memory_bytes"

DATASCALE_FLAGS = [
    *AFTER_FLAGS,
    Flag("load", "string", "s", "The datascale check's workload model. Accepted workloads: s(small), m(medium), l(large), xl(xLarge)"),
    Flag("prefix", "string", "/etcdctl-check-datascale/", "The prefix for writing the datascale check's keys."),
]  # fmt: skip


def _go_seconds(d: float) -> str:
    """time.Duration.String of a duration truncated to whole seconds (pb's final time)."""
    s = int(d)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    return f"{m}m{sec}s" if m else f"{sec}s"


class _CountBar(_Bar):
    """The bar counting requests; Finish draws the final count and the elapsed time, then a
    newline."""

    def finish(self) -> None:
        # text() adds the time left only while work remains; at the end pb shows the time spent.
        pct = self.current / self.total * 100 if self.total else 0.0
        line = f" {self.current} / {self.total}  {pct:6.2f}% "
        line += _go_seconds(time.monotonic() - self.start)
        sys.stdout.buffer.write(("\r" + line + "\n").encode())
        flush()


async def _http_get(url: str, ctx: Ctx) -> bytes:
    """GET `url` (HTTP/1.1) and return the body; errors read like Go's net/http ones."""
    import ssl
    from urllib.parse import urlsplit

    u = urlsplit(url)
    secure = u.scheme == "https"
    host = u.hostname or "localhost"
    port = u.port or (443 if secure else 80)
    ssl_ctx: ssl.SSLContext | None = None
    if secure:
        try:
            ssl_ctx = ssl.create_default_context(cafile=ctx["cacert"] or None)
            ssl_ctx.load_cert_chain(ctx["cert"], ctx["key"])
        except (OSError, ssl.SSLError) as e:
            raise _CertError(str(e)) from None
        if ctx["insecure-skip-tls-verify"]:
            ssl_ctx.check_hostname = False
            ssl_ctx.verify_mode = ssl.CERT_NONE
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl_ctx), timeout=30
        )
    except ConnectionRefusedError:
        raise _FetchError(f"dial tcp {host}:{port}: connect: connection refused") from None
    except (OSError, TimeoutError) as e:
        raise _FetchError(f"dial tcp {host}:{port}: {e}") from None
    try:
        path = u.path + (f"?{u.query}" if u.query else "")
        req = f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nUser-Agent: Go-http-client/1.1\r\n"
        writer.write((req + "Accept-Encoding: identity\r\nConnection: close\r\n\r\n").encode())
        await writer.drain()
        try:
            status = await asyncio.wait_for(reader.readuntil(b"\n"), timeout=30)
        except asyncio.IncompleteReadError as e:
            status = e.partial
            if not status:
                raise _FetchError("EOF") from None
        line = status.rstrip(b"\n").removesuffix(b"\r")
        proto, _, code = line.partition(b" ")
        if not proto.startswith(b"HTTP/") or not code:
            raise _FetchError(
                "net/http: HTTP/1.x transport connection broken: malformed HTTP response "
                + quote(line),
                grpc_only=line[3:4] == b"\x04",  # an HTTP/2 SETTINGS frame: a gRPC-only port
            )
        headers: dict[bytes, bytes] = {}
        while (h := await asyncio.wait_for(reader.readline(), timeout=30)).strip():
            k, _, v = h.partition(b":")
            headers[k.strip().lower()] = v.strip()
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = b""
            while True:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    break
                body += await reader.readexactly(size)
                await reader.readline()
            return body
        if b"content-length" in headers:
            return await reader.readexactly(int(headers[b"content-length"]))
        return await asyncio.wait_for(reader.read(), timeout=30)
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
        raise _FetchError(str(e) or type(e).__name__) from None
    finally:
        writer.close()


class _FetchError(Exception):
    def __init__(self, msg: str, grpc_only: bool = False) -> None:
        super().__init__(msg)
        self.grpc_only = grpc_only  # the endpoint answered in HTTP/2: no HTTP/1 /metrics there


class _CertError(Exception):
    pass


async def endpoint_memory_metrics(host: str, ctx: Ctx) -> float:
    """etcdctl's endpointMemoryMetrics: the server's resident memory from `<ep>/metrics`;
    0 (after printing why) when it cannot be read."""
    if not host.startswith(("http://", "https://")):
        host = "http://" + host
    url = host + "/metrics"
    try:
        body = await _http_get(url, ctx)
    except _CertError as e:
        out(f"client certificate error: {e}\n")
        return 0.0
    except _FetchError as e:
        out(f"fetch error: Get {quote(url)}: {e}\n")
        if e.grpc_only:
            # etcdctl's stdout is kept; say on stderr what it means.
            sys.stderr.write(
                f"petcdctl: {url} answered in HTTP/2 only: no /metrics there (a gRPC-only "
                "port, such as petcd's with PETCD_GRPC_SERVER=grpcio); check datascale needs "
                "a member's client URL that serves HTTP/1.1 too\n"
            )
        return 0.0
    value = ""
    for line in body.decode("utf-8", "replace").split("\n"):
        if line.startswith(RESIDENT_MEMORY):
            value = line[len(RESIDENT_MEMORY) :].strip()
            break
    if not value:
        out(f"could not find: {RESIDENT_MEMORY}\n")
        return 0.0
    try:
        return float(value)
    except ValueError:
        out(f"parse error: strconv.ParseFloat: parsing {quote(value)}: invalid syntax\n")
        return 0.0


async def cmd_check_datascale(ctx: Ctx, args: list[str]) -> None:
    model = ALIASES.get(ctx["load"])
    if model is None:
        fail(EXIT_BAD_FEATURE, f"unknown load option {ctx['load']}")
    limit, workers = DATASCALE_LOADS[model]
    override = os.environ.get("PETCDCTL_CHECK_DATASCALE_LIMIT")  # tests: a smaller load
    if override:
        limit = max(1, int(override))
    prefix_s = ctx["prefix"]
    prefix = prefix_s.encode("utf-8", "surrogateescape")
    clients = [ctx.client() for _ in range(min(workers, MAX_CONNECTIONS))]
    c0 = clients[0]
    ep0 = ctx.endpoints[0] if ctx.endpoints else "127.0.0.1:2379"
    await _require_empty_prefix(ctx, c0, prefix_s, ctx.timeout)
    before = await endpoint_memory_metrics(ep0, ctx)
    if before == 0:
        out("FAIL: Could not read process_resident_memory_bytes before the put operations.\n")
        raise CtlExit(EXIT_ERROR)
    out(
        f"Start data scale check for work load [{limit} key-value pairs, "
        f"{DATASCALE_KV_SIZE} bytes per key-value, {workers} concurrent clients].\n"
    )
    bar = _CountBar(limit)
    bar_task = asyncio.create_task(bar.run())
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=workers)
    errors: dict[str, int] = {}
    value = bytes(DS_VALUE_SIZE)

    async def worker(c: aio.Client) -> None:
        while (key := await queue.get()) is not None:
            try:
                await c.put(key, value, timeout=None)
            except cerr.ClientError as e:
                msg = error_text(e)
                errors[msg] = errors.get(msg, 0) + 1
            bar.add()

    tasks = [asyncio.create_task(worker(clients[i % len(clients)])) for i in range(workers)]
    k = bytearray(DS_KEY_SIZE)
    for _ in range(limit):
        _put_varint(k, random.randrange(2**63 - 1))
        await queue.put(prefix + bytes(k))
    for _ in range(workers):
        await queue.put(None)
    try:
        await asyncio.gather(*tasks)
    finally:
        bar_task.cancel()
    bar.finish()
    after = await endpoint_memory_metrics(ep0, ctx)
    if after == 0:
        out("FAIL: Could not read process_resident_memory_bytes after the put operations.\n")
        raise CtlExit(EXIT_ERROR)
    try:
        dresp = await c0.delete(prefix, prefix=True, timeout=None)
    except cerr.ClientError as e:
        ctx.warn_rpc(e)
        fail(EXIT_ERROR, error_text(e))
    await _compact_defrag(ctx, c0, dresp.header.revision)
    if errors:
        out("FAIL: too many errors\n")
        out("".join(f"FAIL: ERROR({m}) -> {n}\n" for m, n in errors.items()))
        raise CtlExit(EXIT_ERROR)
    mb = (after - before) / (1024 * 1024)
    out(f"PASS: Approximate system memory used : {mb:.2f} MB.\n")


async def _compact_defrag(ctx: Ctx, c0: aio.Client, rev: int) -> None:
    """--auto-compact and --auto-defrag, as etcdctl's compact() and defrag() helpers."""
    if ctx["auto-compact"]:
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
    ds = Command(
        "datascale",
        "datascale [options]",
        "Check the memory usage of holding data for different workloads on a given server endpoint.",
        cmd_check_datascale,
        DATASCALE_FLAGS,
    )
    ds.parent = group
    group.subs.insert(0, ds)
