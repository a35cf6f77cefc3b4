"""petcdctl: an etcdctl (v3 API, 3.4) work-alike over `petcd.client`.

Same commands, flags, `ETCDCTL_*` environment variables, output and exit codes as etcdctl 3.4.
petcd-only additions: `--value-format=raw|hex|base64` (simple output; raw is etcdctl's),
`-w json --hex` prints member/cluster/lease IDs as hex strings (as etcdctl 3.5 does for member
lists), and `snapshot save` shows its progress on stderr when stderr is a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc

from petcd.client import aio
from petcd.client import errors as cerr
from petcd.ctl.flags import Flag, FlagError, FlagSet, parse_int
from petcd.ctl.gofmt import duration, humanize_bytes
from petcd.ctl.printer import Printer, SimplePrinter, Unsupported, new_printer
from petcd.proto.etcdserverpb import rpc_pb2 as pb

__all__ = ["main", "run"]

VERSION = "3.4.23"
API_VERSION = "3.4"

EXIT_SUCCESS = 0
EXIT_ERROR = 1
EXIT_BAD_CONNECTION = 2
EXIT_INVALID_INPUT = 3
EXIT_BAD_FEATURE = 4
EXIT_INTERRUPTED = 5
EXIT_IO = 6
EXIT_BAD_ARGS = 128


class CtlExit(Exception):
    """Exit with `code`, printing `Error: <msg>` on stderr when msg is not None."""

    def __init__(self, code: int, msg: str | None = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def fail(code: int, msg: str) -> NoReturn:
    raise CtlExit(code, msg)


GLOBAL_FLAGS = [
    Flag("cacert", "string", "", "verify certificates of TLS-enabled secure servers using this CA bundle"),
    Flag("cert", "string", "", "identify secure client using this TLS certificate file"),
    Flag("command-timeout", "duration", 5.0, "timeout for short running command (excluding dial timeout)"),
    Flag("debug", "bool", False, "enable client-side debug logging"),
    Flag("dial-timeout", "duration", 2.0, "dial timeout for client connections"),
    Flag("discovery-srv", "string", "", "domain name to query for SRV records describing cluster endpoints", "d"),
    Flag("discovery-srv-name", "string", "", "service name to query when using DNS discovery"),
    Flag("endpoints", "strslice", ["127.0.0.1:2379"], "gRPC endpoints"),
    Flag("hex", "bool", False, "print byte strings as hex encoded strings"),
    Flag("insecure-discovery", "bool", True, "accept insecure SRV records describing cluster endpoints"),
    Flag("insecure-skip-tls-verify", "bool", False, "skip server certificate verification (CAUTION: this option should be enabled only for testing purposes)"),
    Flag("insecure-transport", "bool", True, "disable transport security for client connections"),
    Flag("keepalive-time", "duration", 2.0, "keepalive time for client connections"),
    Flag("keepalive-timeout", "duration", 6.0, "keepalive timeout for client connections"),
    Flag("key", "string", "", "identify secure client using this TLS key file"),
    Flag("password", "string", "", "password for authentication (if this option is used, --user option shouldn't include password)"),
    Flag("user", "string", "", "username[:password] for authentication (prompt if password is not supplied)"),
    Flag("write-out", "string", "simple", "set the output format (fields, json, protobuf, simple, table)", "w"),
]  # fmt: skip
# petcd-only global flag; not shown in the etcdctl-compatible usage text.
VALUE_FORMAT = Flag("value-format", "string", "raw", "print values as raw bytes, hex or base64")


@dataclass
class Command:
    name: str
    use: str
    short: str
    run: Callable[[Ctx, list[str]], Awaitable[None]] | None = None
    flags: list[Flag] = field(default_factory=list)
    subs: list[Command] = field(default_factory=list)
    parent: Command | None = None
    persistent: list[Flag] = field(default_factory=list)

    def path(self) -> str:
        parts = []
        c: Command | None = self
        while c is not None and c.parent is not None:
            parts.append(c.name)
            c = c.parent
        return " ".join(reversed(parts))

    def find(self, token: str) -> Command | None:
        exact = [s for s in self.subs if s.name == token]
        if exact:
            return exact[0]
        # cobra.EnablePrefixMatching: an unambiguous prefix names the command.
        pre = [s for s in self.subs if s.name.startswith(token)]
        return pre[0] if len(pre) == 1 else None

    def all_local_flags(self) -> list[Flag]:
        inherited: list[Flag] = []
        c = self.parent
        while c is not None:
            inherited.extend(c.persistent)
            c = c.parent
        return self.flags + self.persistent + inherited


# ---------------------------------------------------------------------------------------------
# Logging in the shapes etcdctl's libraries use (capnslog for pkg/flags, zap for the client)


def _capnslog(level: str, msg: str) -> None:
    ts = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")
    sys.stderr.write(f"{ts} {level} | pkg/flags: {msg}\n")


def _zap_ts() -> str:
    now = _dt.datetime.now(_dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


_GO_CODES = {c: "".join(p.capitalize() for p in c.name.split("_")) for c in grpc.StatusCode}
_GO_CODES[grpc.StatusCode.CANCELLED] = "Canceled"


def go_code(code: grpc.StatusCode | None) -> str:
    return _GO_CODES.get(code, "Unknown") if code is not None else "Unknown"


# ---------------------------------------------------------------------------------------------
# Context


class Ctx:
    def __init__(self, cmd: Command, fs: FlagSet, dash: int) -> None:
        self.cmd = cmd
        self.fs = fs
        self.dash = dash
        self.client_uuid = str(uuid.uuid4())
        self._clients: list[aio.Client] = []
        self.display: Printer = SimplePrinter()

    def __getitem__(self, name: str) -> Any:
        return self.fs[name]

    @property
    def endpoints(self) -> list[str]:
        return [e.strip() for e in self.fs["endpoints"]]

    @property
    def timeout(self) -> float:
        return self.fs["command-timeout"]

    def init_display(self) -> None:
        p = new_printer(self.fs["write-out"], is_hex=self.fs["hex"])
        if p is None:
            fail(EXIT_BAD_FEATURE, "unsupported output format")
        p.value_format = self.fs["value-format"]
        if p.value_format not in ("raw", "hex", "base64"):
            fail(EXIT_BAD_ARGS, f"bad --value-format {p.value_format!r} (raw, hex or base64)")
        self.display = p

    def _credentials(self) -> grpc.ChannelCredentials | None:
        cert, key, ca = self.fs["cert"], self.fs["key"], self.fs["cacert"]
        for name in ("cert", "key", "cacert"):
            if name in self.fs.changed and not self.fs[name]:
                fail(EXIT_BAD_ARGS, f"empty string is passed to --{name} option")
        if not (cert or key or ca):
            return None

        def read(p: str) -> bytes | None:
            if not p:
                return None
            try:
                with open(p, "rb") as f:
                    return f.read()
            except OSError as e:
                fail(EXIT_BAD_ARGS, f"open {p}: {e.strerror.lower() if e.strerror else e}")

        return grpc.ssl_channel_credentials(read(ca), read(key), read(cert))

    def client(self, endpoints: list[str] | None = None) -> aio.Client:
        self.init_display()
        eps = endpoints if endpoints is not None else self.endpoints
        opts = [
            ("grpc.keepalive_time_ms", int(self.fs["keepalive-time"] * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.fs["keepalive-timeout"] * 1000)),
        ]
        from petcd.ctl.auth import auth_config

        user, password = auth_config(self)
        c = aio.Client(
            eps,
            timeout=self.timeout,
            dial_timeout=self.fs["dial-timeout"],
            credentials=self._credentials(),
            options=opts,
            user=user,
            password=password,
        )
        self._clients.append(c)
        return c

    async def close(self) -> None:
        for c in self._clients:
            with contextlib.suppress(Exception):
                await c.close()

    def warn_rpc(self, e: BaseException, endpoint: str | None = None) -> None:
        """The warning clientv3's retry interceptor logs on every failed unary call."""
        ep = endpoint or (self.endpoints[0] if self.endpoints else "")
        line = {
            "level": "warn",
            "ts": _zap_ts(),
            "caller": "clientv3/retry_interceptor.go:62",
            "msg": "retrying of unary invoker failed",
            "target": f"endpoint://client-{self.client_uuid}/{ep}",
            "attempt": 0,
            "error": rpc_error_text(e),
        }
        sys.stderr.write(json.dumps(line, separators=(",", ":")) + "\n")

    async def call(self, aw: Awaitable[Any], code: int = EXIT_ERROR, wrap: str = "%s") -> Any:
        """Await a unary call; failures exit like etcdctl's `ExitWithError(code, err)`."""
        from petcd.ctl.auth import login

        try:
            await login(self)  # --user: authenticate first, as clientv3 does at dial
        except BaseException:
            if asyncio.iscoroutine(aw):
                aw.close()
            raise
        try:
            return await aw
        except cerr.ClientError as e:
            self.warn_rpc(e)
            fail(code, wrap % error_text(e))


def _is_unreachable(e: BaseException) -> bool:
    if isinstance(e, cerr.DeadlineExceeded):
        return True
    return isinstance(e, cerr.Unavailable) and not isinstance(e, cerr.EtcdServerError)


def rpc_error_text(e: BaseException) -> str:
    if _is_unreachable(e):
        return (
            "rpc error: code = DeadlineExceeded desc = latest balancer error: "
            "all SubConns are in TransientFailure"
        )
    if isinstance(e, cerr.RpcError):
        return f"rpc error: code = {go_code(e.code)} desc = {e.details}"
    return str(e)


def error_text(e: BaseException) -> str:
    """What clientv3 errors print as: etcd's own message, or gRPC's status text."""
    if _is_unreachable(e):
        return "context deadline exceeded"
    if isinstance(e, cerr.EtcdServerError):
        return e.details
    if isinstance(e, cerr.RpcError):
        return f"rpc error: code = {go_code(e.code)} desc = {e.details}"
    return str(e)


def out(data: str | bytes) -> None:
    sys.stdout.buffer.write(data.encode() if isinstance(data, str) else data)


def flush() -> None:
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.buffer.flush()


# ---------------------------------------------------------------------------------------------
# KV commands


def _range_opts(ctx: Ctx, args: list[str], what: str, prefix: bool, from_key: bool) -> dict:
    if prefix and from_key:
        fail(
            EXIT_BAD_ARGS, "`--prefix` and `--from-key` cannot be set at the same time, choose one"
        )
    key = args[0]
    opts: dict[str, Any] = {}
    if len(args) > 1:
        if prefix or from_key:
            fail(
                EXIT_BAD_ARGS,
                "too many arguments, only accept one argument when `--prefix` or `--from-key` is set",
            )
        opts["range_end"] = args[1]
    if prefix:
        opts["prefix"] = True
    if from_key:
        opts["from_key"] = True
    opts["key"] = key
    return opts


def get_op(fs: FlagSet, args: list[str]) -> dict[str, Any]:
    if not args:
        fail(
            EXIT_BAD_ARGS,
            "get command needs one argument as key and an optional argument as range_end",
        )
    if fs["prefix"] and fs["from-key"]:
        fail(
            EXIT_BAD_ARGS, "`--prefix` and `--from-key` cannot be set at the same time, choose one"
        )
    consistency = fs["consistency"]
    if consistency not in ("s", "l"):
        fail(EXIT_BAD_FEATURE, f'unknown consistency flag "{consistency}"')
    opts = _range_opts(None, args, "get", fs["prefix"], fs["from-key"])  # type: ignore[arg-type]
    opts["serializable"] = consistency == "s"
    opts["limit"] = fs["limit"]
    if fs["rev"] > 0:
        opts["revision"] = fs["rev"]
    order = fs["order"].upper()
    if order not in ("", "ASCEND", "DESCEND"):
        fail(EXIT_BAD_FEATURE, f"bad sort order {fs['order']}")
    target = fs["sort-by"].upper()
    targets = {"CREATE": "create", "KEY": "key", "MODIFY": "mod", "VALUE": "value", "VERSION": "version", "": None}  # fmt: skip
    if target not in targets:
        fail(EXIT_BAD_FEATURE, f"bad sort target {fs['sort-by']}")
    opts["sort_order"] = order.lower() or None
    opts["sort_target"] = targets[target]
    opts["keys_only"] = fs["keys-only"]
    return opts


GET_FLAGS = [
    Flag("consistency", "string", "l", "Linearizable(l) or Serializable(s)"),
    Flag("order", "string", "", "Order of results; ASCEND or DESCEND (ASCEND by default)"),
    Flag("sort-by", "string", "", "Sort target; CREATE, KEY, MODIFY, VALUE, or VERSION"),
    Flag("limit", "int", 0, "Maximum number of results"),
    Flag("prefix", "bool", False, "Get keys with matching prefix"),
    Flag("from-key", "bool", False, "Get keys that are greater than or equal to the given key using byte compare"),
    Flag("rev", "int", 0, "Specify the kv revision"),
    Flag("keys-only", "bool", False, "Get only the keys"),
    Flag("print-value-only", "bool", False, 'Only write values when using the "simple" output format'),
]  # fmt: skip


def _range_request(opts: dict[str, Any]) -> pb.RangeRequest:
    o = dict(opts)
    key = o.pop("key")
    return aio.range_request(key, **o)


async def cmd_get(ctx: Ctx, args: list[str]) -> None:
    opts = get_op(ctx.fs, args)
    c = ctx.client()
    resp = await ctx.call(c._unary("kv", "Range", _range_request(opts), True, ctx.timeout))
    if ctx["print-value-only"]:
        if not isinstance(ctx.display, SimplePrinter):
            fail(EXIT_BAD_ARGS, "print-value-only is only for `--write-out=simple`")
        ctx.display.value_only = True
    ctx.display.get(resp)


PUT_FLAGS = [
    Flag("lease", "string", "0", "lease ID (in hexadecimal) to attach to the key"),
    Flag("prev-kv", "bool", False, "return the previous key-value pair before modification"),
    Flag("ignore-value", "bool", False, "updates the key using its current value"),
    Flag("ignore-lease", "bool", False, "updates the key using its current lease"),
]


def _go_parse_hex(s: str, what: str, unsigned: bool = False) -> int:
    fn = "ParseUint" if unsigned else "ParseInt"
    if not re.fullmatch(r"[+-]?[0-9a-fA-F]+" if not unsigned else r"[0-9a-fA-F]+", s or "x"):
        raise ValueError(f'strconv.{fn}: parsing "{s}": invalid syntax')
    v = int(s, 16)
    if (unsigned and v >= 2**64) or (not unsigned and not -(2**63) <= v < 2**63):
        raise ValueError(f'strconv.{fn}: parsing "{s}": value out of range')
    return v


def put_op(fs: FlagSet, args: list[str], stdin_ok: bool = True) -> pb.PutRequest:
    if not args:
        fail(EXIT_BAD_ARGS, "put command needs 1 argument and input from stdin or 2 arguments")
    key = args[0]
    if fs["ignore-value"] and len(args) > 1:
        fail(EXIT_BAD_ARGS, "put command needs only 1 argument when 'ignore-value' is set")
    value = b""
    if not fs["ignore-value"]:
        if len(args) > 1:
            value = args[1].encode("utf-8", "surrogateescape")
        else:
            data = sys.stdin.buffer.read() if stdin_ok else b""
            if not data:
                fail(
                    EXIT_BAD_ARGS,
                    "put command needs 1 argument and input from stdin or 2 arguments",
                )
            value = data
    try:
        lease = _go_parse_hex(fs["lease"], "lease")
    except ValueError as e:
        fail(EXIT_BAD_ARGS, f"bad lease ID ({e}), expecting ID in Hex")
    return aio.put_request(
        key.encode("utf-8", "surrogateescape"),
        value,
        lease=lease,
        prev_kv=fs["prev-kv"],
        ignore_value=fs["ignore-value"],
        ignore_lease=fs["ignore-lease"],
    )


async def cmd_put(ctx: Ctx, args: list[str]) -> None:
    req = put_op(ctx.fs, args)
    c = ctx.client()
    ctx.display.put(await ctx.call(c._unary("kv", "Put", req, False, ctx.timeout)))


DEL_FLAGS = [
    Flag("prefix", "bool", False, "delete keys with matching prefix"),
    Flag("prev-kv", "bool", False, "return deleted key-value pairs"),
    Flag("from-key", "bool", False, "delete keys that are greater than or equal to the given key using byte compare"),
]  # fmt: skip


def del_op(fs: FlagSet, args: list[str]) -> pb.DeleteRangeRequest:
    if not args or len(args) > 2:
        fail(
            EXIT_BAD_ARGS,
            "del command needs one argument as key and an optional argument as range_end",
        )
    opts = _range_opts(None, args, "del", fs["prefix"], fs["from-key"])  # type: ignore[arg-type]
    key = opts.pop("key")
    return aio.delete_request(key, prev_kv=fs["prev-kv"], **opts)


async def cmd_del(ctx: Ctx, args: list[str]) -> None:
    req = del_op(ctx.fs, args)
    c = ctx.client()
    ctx.display.delete(await ctx.call(c._unary("kv", "DeleteRange", req, False, ctx.timeout)))


# -- txn ---------------------------------------------------------------------------------------


def argify(line: str) -> list[str]:
    """etcdctl's argify: split on blanks, honouring "double" (Go-unquoted) and 'single' quotes."""
    out_args = []
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|[^\'"\s]\S*[^\'"\s]?', line):
        a = m.group()
        if a.startswith("'"):
            # etcdctl slices with len(args) here (a bug we keep only for its common case).
            a = a[1:-1]
        elif a.startswith('"'):
            try:
                a = _go_unquote(a)
            except ValueError as e:
                fail(EXIT_INVALID_INPUT, str(e))
        out_args.append(a)
    return out_args


def _go_unquote(s: str) -> str:
    body = s[1:-1]
    try:
        return body.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        raise ValueError("invalid syntax") from None


_SCAN_Q = re.compile(r'\s*"((?:[^"\\]|\\.)*)"')


def parse_compare(line: str) -> pb.Compare:
    target, sep, rest = line.partition("(")
    if not sep:
        raise ValueError(f"malformed comparison: {line}")
    # fmt.Sscanf(rest, "%q) %s %q", &key, &op, &val)
    m = _SCAN_Q.match(rest)
    vals: list[str] = []
    if m:
        vals.append(_go_unquote('"' + m.group(1) + '"'))
        r2 = rest[m.end() :]
        if r2.startswith(")"):
            r2 = r2[1:]
            m2 = re.match(r"\s*(\S+)", r2)
            if m2:
                vals.append(m2.group(1))
                m3 = _SCAN_Q.match(r2[m2.end() :])
                if m3:
                    vals.append(_go_unquote('"' + m3.group(1) + '"'))
    if len(vals) != 3:
        k = vals[0] if vals else ""
        op = vals[1] if len(vals) > 1 else ""
        from petcd.ctl.gofmt import quote

        raise ValueError(f"malformed comparison: {line}; got {target}({quote(k)}) {op} {quote('')}")
    key, op, val = vals
    results = {"=": pb.Compare.EQUAL, "!=": pb.Compare.NOT_EQUAL, "<": pb.Compare.LESS, ">": pb.Compare.GREATER}  # fmt: skip
    fields = {
        "ver": ("version", pb.Compare.VERSION),
        "version": ("version", pb.Compare.VERSION),
        "c": ("create_revision", pb.Compare.CREATE),
        "create": ("create_revision", pb.Compare.CREATE),
        "m": ("mod_revision", pb.Compare.MOD),
        "mod": ("mod_revision", pb.Compare.MOD),
        "val": ("value", pb.Compare.VALUE),
        "value": ("value", pb.Compare.VALUE),
        "lease": ("lease", pb.Compare.LEASE),
    }
    if target not in fields:
        raise ValueError(f"malformed comparison: {line} (unknown target {target})")
    fname, tgt = fields[target]
    if op not in results:
        # clientv3.Compare panics on an unknown operator.
        raise ValueError(f"Unknown result op, {op!r}")
    cmp = pb.Compare(result=results[op], target=tgt, key=key.encode("utf-8", "surrogateescape"))
    if fname == "value":
        cmp.value = val.encode("utf-8", "surrogateescape")
    elif fname == "lease":
        # etcdctl builds this compare without a key and compares against a string (a bug).
        cmp.key = b""
        try:
            cmp.lease = parse_int(val)
        except ValueError:
            cmp.lease = 0
    else:
        try:
            setattr(cmp, fname, parse_int(val) if not val.lower().startswith("0x") else 0)
        except ValueError:
            raise ValueError(f"invalid txn compare request: {line}") from None
    return cmp


def parse_request(line: str) -> pb.RequestOp:
    args = argify(line)
    if len(args) < 2:
        raise ValueError(f"invalid txn compare request: {line}")
    name = args[0]
    try:
        if name == "put":
            fs = FlagSet(list(PUT_FLAGS))
            pos, _ = fs.parse(args[1:])
            return pb.RequestOp(request_put=put_op(fs, pos, stdin_ok=False))
        if name == "get":
            fs = FlagSet(list(GET_FLAGS))
            pos, _ = fs.parse(args[1:])
            return pb.RequestOp(request_range=_range_request(get_op(fs, pos)))
        if name in ("del", "delete"):
            fs = FlagSet(list(DEL_FLAGS))
            pos, _ = fs.parse(args[1:])
            return pb.RequestOp(request_delete_range=del_op(fs, pos))
    except FlagError:
        pass
    raise ValueError(f"invalid txn request: {line}")


TXN_FLAGS = [Flag("interactive", "bool", False, "Input transaction in interactive mode", "i")]


async def cmd_txn(ctx: Ctx, args: list[str]) -> None:
    if args:
        fail(EXIT_BAD_ARGS, "txn command does not accept argument")
    c = ctx.client()
    interactive = ctx["interactive"]
    stdin = sys.stdin.buffer

    def prompt(s: str) -> None:
        if interactive:
            out(s + "\n")
            flush()

    def lines(parse: Callable[[str], Any]) -> list[Any]:
        got = []
        while True:
            raw = stdin.readline()
            if not raw.endswith(b"\n"):
                fail(EXIT_INVALID_INPUT, "EOF")
            line = raw.decode("utf-8", "surrogateescape").strip()
            if not line:
                return got
            try:
                got.append(parse(line))
            except ValueError as e:
                fail(EXIT_INVALID_INPUT, str(e))

    prompt("compares:")
    cmps = lines(parse_compare)
    prompt("success requests (get, put, del):")
    ok = lines(parse_request)
    prompt("failure requests (get, put, del):")
    bad = lines(parse_request)
    req = pb.TxnRequest(compare=cmps, success=ok, failure=bad)
    # etcdctl's txn runs without a deadline (context.Background).
    resp = await ctx.call(c.txn_request(req, timeout=None))
    ctx.display.txn(resp)


COMPACT_FLAGS = [
    Flag("physical", "bool", False, "'true' to wait for compaction to physically remove all old revisions")
]  # fmt: skip


async def cmd_compaction(ctx: Ctx, args: list[str]) -> None:
    if len(args) != 1:
        fail(EXIT_BAD_ARGS, "compaction command needs 1 argument")
    try:
        rev = parse_int(args[0]) if re.fullmatch(r"[+-]?[0-9]+", args[0]) else None
    except ValueError as e:
        fail(EXIT_ERROR, str(e))
    if rev is None:
        fail(EXIT_ERROR, f'strconv.ParseInt: parsing "{args[0]}": invalid syntax')
    c = ctx.client()
    req = pb.CompactionRequest(revision=rev, physical=ctx["physical"])
    await ctx.call(c._unary("kv", "Compact", req, False, ctx.timeout))
    out(f"compacted revision {rev}\n")


# -- watch -------------------------------------------------------------------------------------

WATCH_FLAGS = [
    Flag("interactive", "bool", False, "Interactive mode", "i"),
    Flag("prefix", "bool", False, "Watch on a prefix if prefix is set"),
    Flag("rev", "int", 0, "Revision to start watching"),
    Flag("prev-kv", "bool", False, "get the previous key-value pair before the event happens"),
]


def _watch_opts(fs: FlagSet, args: list[str]) -> dict[str, Any]:
    if not args:
        raise ValueError("bad number of arguments")
    opts: dict[str, Any] = {"start_revision": fs["rev"], "prev_kv": fs["prev-kv"]}
    if len(args) == 2:
        if fs["prefix"]:
            raise ValueError("`range_end` and `--prefix` are mutually exclusive")
        opts["range_end"] = args[1].encode("utf-8", "surrogateescape")
    if fs["prefix"]:
        opts["prefix"] = True
    opts["key"] = args[0].encode("utf-8", "surrogateescape")
    return opts


async def _print_watch(ctx: Ctx, w: aio.Watch, exec_args: list[str]) -> None:
    """Print each response; returns when the server cancels the watch."""
    try:
        async for resp in w.responses():
            if not resp.events and resp.header.revision and not resp.created:
                # A progress notification.
                out(f"progress notify: {resp.header.revision}\n")
            ctx.display.watch(resp)
            flush()
            for ev in resp.events if exec_args else ():
                env = dict(os.environ)
                env["ETCD_WATCH_REVISION"] = str(resp.header.revision)
                env["ETCD_WATCH_EVENT_TYPE"] = '"' + ("PUT" if ev.type == 0 else "DELETE") + '"'
                from petcd.ctl.gofmt import quote

                env["ETCD_WATCH_KEY"] = quote(ev.kv.key)
                env["ETCD_WATCH_VALUE"] = quote(ev.kv.value)
                r = await asyncio.to_thread(subprocess.run, exec_args, env=env)
                if r.returncode != 0:
                    sys.stderr.write(
                        f"command {_go_strs(exec_args)} error (exit status {r.returncode})\n"
                    )
                    flush()
                    os._exit(1)
    except (cerr.WatchCompacted, cerr.WatchCanceled) as e:
        if isinstance(e, cerr.WatchCompacted):
            reason = "etcdserver: mvcc: required revision has been compacted"
        else:
            reason = e.reason or "etcdserver: watch canceled"
        sys.stderr.write(f"watch was canceled ({reason})\n")
        if isinstance(e, cerr.WatchCompacted) and not isinstance(ctx.display, SimplePrinter):
            resp = pb.WatchResponse(compact_revision=e.compact_revision, canceled=True)
            with contextlib.suppress(Unsupported):
                ctx.display.watch(resp)
        flush()


def _go_strs(items: list[str]) -> str:
    from petcd.ctl.gofmt import quote

    return "[" + " ".join(quote(x) for x in items) + "]"


async def cmd_watch(ctx: Ctx, args: list[str]) -> None:
    env_key = os.environ.get("ETCDCTL_WATCH_KEY", "")
    env_range = os.environ.get("ETCDCTL_WATCH_RANGE_END", "")
    if not env_key and env_range:
        fail(
            EXIT_BAD_ARGS,
            f'ETCDCTL_WATCH_KEY is empty but got ETCDCTL_WATCH_RANGE_END="{env_range}"',
        )
    if ctx["interactive"]:
        await _watch_interactive(ctx, env_key, env_range)
        return
    exec_args: list[str] = []
    watch_args = list(args)
    if ctx.dash >= 0:
        exec_args = args[ctx.dash :]
        watch_args = args[: ctx.dash]
        if not exec_args:
            fail(EXIT_BAD_ARGS, "bad number of arguments (found separator --, but no commands)")
        if env_key and watch_args:
            fail(EXIT_BAD_ARGS, "bad number of arguments (found conflicting environment key)")
    elif env_key and watch_args:
        fail(EXIT_BAD_ARGS, "bad number of arguments (found conflicting environment key)")
    elif not watch_args and not env_key:
        fail(EXIT_BAD_ARGS, "bad number of arguments")
    if env_key:
        watch_args = [env_key] + ([env_range] if env_range else [])
    c = ctx.client()
    try:
        opts = _watch_opts(ctx.fs, watch_args)
    except ValueError as e:
        fail(EXIT_BAD_ARGS, str(e))
    w = c.watch(opts.pop("key"), **opts)
    await _print_watch(ctx, w, exec_args)
    fail(EXIT_INTERRUPTED, "watch is canceled by the server")


async def _watch_interactive(ctx: Ctx, env_key: str, env_range: str) -> None:
    c = ctx.client()
    loop = asyncio.get_running_loop()
    tasks = []
    while True:
        raw = await loop.run_in_executor(None, sys.stdin.buffer.readline)
        if not raw.endswith(b"\n"):
            fail(EXIT_INVALID_INPUT, "Error reading watch request line: EOF")
        line = raw[:-1].decode("utf-8", "surrogateescape")
        wargs = argify(line)
        if not wargs:
            sys.stderr.write(f"Invalid command: {line} (watch and progress supported)\n")
            continue
        if wargs[0] == "watch":
            if len(wargs) < 2 and not env_key:
                sys.stderr.write(f"Invalid command {line} (command type or key is not provided)\n")
                continue
            rest = wargs[1:]
            exec_args: list[str] = []
            if "--" in rest:
                i = rest.index("--")
                if i == len(rest) - 1:
                    fail(
                        EXIT_BAD_ARGS,
                        "bad number of arguments (found separator --, but no commands)",
                    )
                rest, exec_args = rest[:i], rest[i + 1 :]
            fs = FlagSet(list(WATCH_FLAGS))
            try:
                pos, _ = fs.parse(rest)
            except FlagError as e:
                fail(EXIT_BAD_ARGS, str(e))
            if not exec_args and env_key and pos:
                fail(EXIT_BAD_ARGS, "bad number of arguments (found conflicting environment key)")
            if env_key:
                pos = [env_key] + ([env_range] if env_range else []) + pos
            try:
                opts = _watch_opts(fs, pos)
            except ValueError as e:
                sys.stderr.write(f"Invalid command {line} ({e})\n")
                continue
            w = c.watch(opts.pop("key"), **opts)
            await w.wait_created()
            tasks.append(asyncio.create_task(_print_watch(ctx, w, exec_args)))
        elif wargs[0] == "progress":
            for w in list(c._watches):
                await w.request_progress()
        else:
            sys.stderr.write(f"Invalid command {line} (only support watch)\n")


# ---------------------------------------------------------------------------------------------
# Leases


def lease_from_arg(arg: str) -> int:
    try:
        return _go_parse_hex(arg, "lease")
    except ValueError as e:
        fail(EXIT_BAD_ARGS, f"bad lease ID arg ({e}), expecting ID in Hex")


async def cmd_lease_grant(ctx: Ctx, args: list[str]) -> None:
    if len(args) != 1:
        fail(EXIT_BAD_ARGS, "lease grant command needs TTL argument")
    try:
        ttl = parse_int(args[0]) if re.fullmatch(r"[+-]?[0-9]+", args[0]) else None
    except ValueError as e:
        fail(EXIT_BAD_ARGS, f"bad TTL ({e})")
    if ttl is None:
        fail(EXIT_BAD_ARGS, f'bad TTL (strconv.ParseInt: parsing "{args[0]}": invalid syntax)')
    c = ctx.client()
    req = pb.LeaseGrantRequest(TTL=ttl)
    resp = await ctx.call(
        c._unary("lease", "LeaseGrant", req, True, ctx.timeout), wrap="failed to grant lease (%s)"
    )
    ctx.display.grant(resp)


async def cmd_lease_revoke(ctx: Ctx, args: list[str]) -> None:
    if len(args) != 1:
        fail(EXIT_BAD_ARGS, "lease revoke command needs 1 argument")
    lid = lease_from_arg(args[0])
    c = ctx.client()
    req = pb.LeaseRevokeRequest(ID=lid)
    resp = await ctx.call(
        c._unary("lease", "LeaseRevoke", req, True, ctx.timeout),
        wrap="failed to revoke lease (%s)",
    )
    ctx.display.revoke(lid, resp)


async def cmd_lease_timetolive(ctx: Ctx, args: list[str]) -> None:
    if len(args) != 1:
        fail(EXIT_BAD_ARGS, "lease timetolive command needs lease ID as argument")
    lid = lease_from_arg(args[0])
    c = ctx.client()
    req = pb.LeaseTimeToLiveRequest(ID=lid, keys=ctx["keys"])
    resp = await ctx.call(
        c._unary("lease", "LeaseTimeToLive", req, True, None), code=EXIT_BAD_CONNECTION
    )
    ctx.display.time_to_live(resp, ctx["keys"])


async def cmd_lease_list(ctx: Ctx, args: list[str]) -> None:
    c = ctx.client()
    resp = await ctx.call(
        c._unary("lease", "LeaseLeases", pb.LeaseLeasesRequest(), True, None),
        code=EXIT_BAD_CONNECTION,
    )
    ctx.display.leases(resp)


async def _keep_alive_stream(ctx: Ctx, c: aio.Client, lid: int) -> None:
    """clientv3's KeepAlive: renew every TTL/3 and print each renewal until the lease is gone."""
    loop = asyncio.get_running_loop()
    deadline: float | None = None
    while True:
        try:
            ep = await c._endpoint(None)
            call = ep.lease.LeaseKeepAlive()
            try:
                while True:
                    await call.write(pb.LeaseKeepAliveRequest(ID=lid))
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        break
                    if resp.TTL <= 0:
                        return
                    ctx.display.keep_alive(resp)
                    flush()
                    deadline = loop.time() + resp.TTL
                    await asyncio.sleep(max(resp.TTL / 3.0, 0.5))
            finally:
                call.cancel()
        except (grpc.aio.AioRpcError, cerr.ClientError):
            pass
        if deadline is not None and loop.time() >= deadline:
            return
        await asyncio.sleep(0.5)


async def cmd_lease_keep_alive(ctx: Ctx, args: list[str]) -> None:
    if len(args) != 1:
        fail(EXIT_BAD_ARGS, "lease keep-alive command needs lease ID as argument")
    lid = lease_from_arg(args[0])
    c = ctx.client()
    if ctx["once"]:
        try:
            resp = await c.keep_alive_once(lid, timeout=None)
        except cerr.ClientError as e:
            fail(EXIT_BAD_CONNECTION, error_text(e))
        ctx.display.keep_alive(resp)
        return
    await _keep_alive_stream(ctx, c, lid)
    if isinstance(ctx.display, SimplePrinter):
        out(f"lease {lid:016x} expired or revoked.\n")


# ---------------------------------------------------------------------------------------------
# Cluster and maintenance


async def cmd_member_list(ctx: Ctx, args: list[str]) -> None:
    c = ctx.client()
    resp = await ctx.call(
        c._unary("cluster", "MemberList", pb.MemberListRequest(), True, ctx.timeout)
    )
    ctx.display.member_list(resp)


async def _cluster_endpoints(ctx: Ctx) -> list[str]:
    if not ctx["cluster"]:
        return ctx.endpoints
    c = ctx.client()
    try:
        resp = await c._unary("cluster", "MemberList", pb.MemberListRequest(), True, ctx.timeout)
    except cerr.ClientError as e:
        fail(
            EXIT_ERROR,
            f"failed to fetch endpoints from etcd cluster member list: {error_text(e)}",
        )
    return [u for m in resp.members for u in m.clientURLs]


async def cmd_endpoint_health(ctx: Ctx, args: list[str]) -> None:
    ctx.init_display()
    eps = await _cluster_endpoints(ctx)

    async def check(ep: str) -> dict[str, Any]:
        c = ctx.client([ep])
        st = time.monotonic()
        h: dict[str, Any] = {"endpoint": ep, "health": False, "took": ""}
        try:
            await c._unary("kv", "Range", pb.RangeRequest(key=b"health"), True, ctx.timeout)
            err = None
        except cerr.ClientError as e:
            err = e
            ctx.warn_rpc(e, ep)
        h["took"] = duration(time.monotonic() - st)
        if err is None or isinstance(err, cerr.ErrPermissionDenied):  # type: ignore[attr-defined]
            h["health"] = True
        else:
            h["error"] = error_text(err)
        return h

    results = await asyncio.gather(*(check(ep) for ep in eps))
    ctx.display.endpoint_health(list(results))
    if any(h.get("error") for h in results):
        fail(EXIT_ERROR, "unhealthy cluster")


async def cmd_endpoint_status(ctx: Ctx, args: list[str]) -> None:
    ctx.init_display()
    rows = []
    failed = False
    for ep in await _cluster_endpoints(ctx):
        c = ctx.client([ep])
        try:
            resp = await c._unary("maintenance", "Status", pb.StatusRequest(), True, ctx.timeout)
        except cerr.ClientError as e:
            ctx.warn_rpc(e, ep)
            sys.stderr.write(f"Failed to get the status of endpoint {ep} ({error_text(e)})\n")
            failed = True
            continue
        rows.append((ep, resp))
    ctx.display.endpoint_status(rows)
    if failed:
        raise CtlExit(EXIT_ERROR)


async def cmd_endpoint_hashkv(ctx: Ctx, args: list[str]) -> None:
    ctx.init_display()
    rows = []
    last: str | None = None
    for ep in await _cluster_endpoints(ctx):
        c = ctx.client([ep])
        req = pb.HashKVRequest(revision=ctx["rev"])
        try:
            resp = await c._unary("maintenance", "HashKV", req, True, ctx.timeout)
        except cerr.ClientError as e:
            ctx.warn_rpc(e, ep)
            last = error_text(e)
            sys.stderr.write(f"Failed to get the hash of endpoint {ep} ({last})\n")
            continue
        rows.append((ep, resp))
    ctx.display.endpoint_hashkv(rows)
    if last is not None:
        fail(EXIT_ERROR, last)


async def _alarm(ctx: Ctx, args: list[str], what: str, disarm: bool) -> None:
    if args:
        fail(EXIT_BAD_ARGS, f"alarm {what} command accepts no arguments")
    c = ctx.client()
    get = pb.AlarmRequest(action=pb.AlarmRequest.GET)
    resp = await ctx.call(c._unary("maintenance", "Alarm", get, True, ctx.timeout))
    if disarm:
        # clientv3's AlarmDisarm with an empty member: deactivate each active alarm in turn.
        final = pb.AlarmResponse()
        final.header.CopyFrom(resp.header)
        for a in list(resp.alarms):
            req = pb.AlarmRequest(
                action=pb.AlarmRequest.DEACTIVATE, memberID=a.memberID, alarm=a.alarm
            )
            r = await ctx.call(c._unary("maintenance", "Alarm", req, False, ctx.timeout))
            final.header.CopyFrom(r.header)
            final.alarms.extend(r.alarms)
        resp = final
    ctx.display.alarm(resp)


async def cmd_alarm_list(ctx: Ctx, args: list[str]) -> None:
    await _alarm(ctx, args, "list", False)


async def cmd_alarm_disarm(ctx: Ctx, args: list[str]) -> None:
    await _alarm(ctx, args, "disarm", True)


async def cmd_defrag(ctx: Ctx, args: list[str]) -> None:
    if ctx["data-dir"]:
        fail(EXIT_ERROR, "petcdctl: offline defrag (--data-dir) is not supported")
    ctx.init_display()
    failures = 0
    for ep in await _cluster_endpoints(ctx):
        c = ctx.client([ep])
        try:
            await c._unary("maintenance", "Defragment", pb.DefragmentRequest(), False, ctx.timeout)
        except cerr.ClientError as e:
            ctx.warn_rpc(e, ep)
            sys.stderr.write(f"Failed to defragment etcd member[{ep}] ({error_text(e)})\n")
            failures += 1
        else:
            out(f"Finished defragmenting etcd member[{ep}]\n")
    if failures:
        raise CtlExit(EXIT_ERROR)


def _zap(msg: str, caller: str, float_ts: bool = True, **kv: Any) -> None:
    ts: Any = time.time() if float_ts else _zap_ts()
    line = {"level": "info", "ts": ts, "caller": caller, "msg": msg, **kv}
    sys.stderr.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n")


async def cmd_snapshot_save(ctx: Ctx, args: list[str]) -> None:
    if len(args) != 1:
        fail(EXIT_BAD_ARGS, "snapshot save expects one argument")
    eps = ctx.endpoints
    if len(eps) != 1:
        fail(
            EXIT_INTERRUPTED, f"snapshot must be requested to one selected node, not multiple {eps}"
        )
    path = args[0]
    c = ctx.client()
    part = path + ".part"
    _zap("created temporary db file", "snapshot/v3_snapshot.go:119", path=part)
    _zap("fetching snapshot", "snapshot/v3_snapshot.go:127", endpoint=eps[0])
    tty = sys.stderr.isatty()
    started = time.monotonic()

    def progress(done: int, remaining: int) -> None:
        if tty:
            total = done + remaining
            pct = f" {100 * done // total:3d}%" if total else ""
            sys.stderr.write(f"\r{humanize_bytes(done)} received{pct}\x1b[K")
            sys.stderr.flush()

    timeout = ctx.timeout if "command-timeout" in ctx.fs.changed else None
    try:
        size = await c.snapshot(path, progress=progress, timeout=timeout)
    except (cerr.ClientError, OSError) as e:
        if tty:
            sys.stderr.write("\n")
        fail(EXIT_INTERRUPTED, error_text(e) if isinstance(e, cerr.ClientError) else str(e))
    if tty:
        sys.stderr.write("\n")
    took = time.monotonic() - started
    _zap(
        "fetched snapshot",
        "snapshot/v3_snapshot.go:142",
        endpoint=eps[0],
        size=humanize_bytes(size),
        took=round(took, 9),
    )
    _zap("saved", "snapshot/v3_snapshot.go:152", path=path)
    out(f"Snapshot saved at {path}\n")


async def cmd_version(ctx: Ctx, args: list[str]) -> None:
    out(f"etcdctl version: {VERSION}\nAPI version: {API_VERSION}\n")


async def cmd_move_leader(ctx: Ctx, args: list[str]) -> None:
    if len(args) != 1:
        fail(EXIT_BAD_ARGS, "move-leader command needs 1 argument")
    try:
        target = _go_parse_hex(args[0], "id", unsigned=True)
    except ValueError as e:
        fail(EXIT_BAD_ARGS, str(e))
    ctx.init_display()
    leader_cli = None
    leader_id = 0
    for ep in ctx.endpoints:
        c = ctx.client([ep])
        resp = await ctx.call(
            c._unary("maintenance", "Status", pb.StatusRequest(), True, ctx.timeout)
        )
        if resp.header.member_id == resp.leader:
            leader_cli, leader_id = c, resp.leader
            break
    if leader_cli is None:
        fail(EXIT_BAD_ARGS, f"no leader endpoint given at {_go_list(ctx.endpoints)}")
    req = pb.MoveLeaderRequest(targetID=target)
    resp = await ctx.call(leader_cli._unary("maintenance", "MoveLeader", req, False, ctx.timeout))
    ctx.display.move_leader(leader_id, target, resp)


def _go_list(items: list[str]) -> str:
    return "[" + " ".join(items) + "]"


# -- lock and elect ----------------------------------------------------------------------------


def _stop_event() -> asyncio.Event:
    ev = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(s, ev.set)
    return ev


async def _wait_either(ev: asyncio.Event, lease: aio.Lease) -> bool:
    """True if the event fired, False if the session lease expired first."""
    t1 = asyncio.create_task(ev.wait())
    t2 = asyncio.create_task(lease.wait_expired())
    done, pending = await asyncio.wait({t1, t2}, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()
    return t1 in done


async def cmd_lock(ctx: Ctx, args: list[str]) -> None:
    if not args:
        fail(EXIT_BAD_ARGS, "lock takes a lock name argument and an optional command to execute")
    c = ctx.client()
    stop = _stop_event()
    try:
        lease = await c.lease(ctx["ttl"], revoke_on_exit=False).start()
    except cerr.ClientError as e:
        fail(EXIT_ERROR, error_text(e))
    lock_task = asyncio.create_task(c.lock(args[0], lease.id))
    stop_task = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({lock_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    if lock_task not in done:
        lock_task.cancel()
        fail(EXIT_ERROR, "context canceled")
    stop_task.cancel()
    try:
        key = lock_task.result()
    except cerr.ClientError as e:
        fail(EXIT_ERROR, error_text(e))
    if len(args) > 1:
        resp = await c.get(key)
        env = dict(os.environ)
        env = {"ETCD_LOCK_KEY": key.decode("utf-8", "surrogateescape"), **env}
        env["ETCD_LOCK_KEY"] = key.decode("utf-8", "surrogateescape")
        env["ETCD_LOCK_REV"] = str(resp.kvs[0].create_revision if resp.kvs else 0)
        flush()
        try:
            r = await asyncio.to_thread(subprocess.run, args[1:], env=env)
            rc, err = r.returncode, None
        except OSError as e:
            rc, err = (
                -1,
                f"exec: {_go_quote_str(args[1])}: {e.strerror.lower() if e.strerror else e}",
            )
        with contextlib.suppress(cerr.ClientError):
            await c.unlock(key)
        await lease.close(revoke=True)
        if err:
            fail(EXIT_ERROR, err)
        if rc != 0:
            fail(EXIT_ERROR, f"exit status {rc}")
        return
    resp = await ctx.call(c._unary("kv", "Range", pb.RangeRequest(key=key), True, ctx.timeout))
    if not resp.kvs:
        fail(EXIT_ERROR, "lock lost on init")
    ctx.display.get(resp)
    flush()
    if await _wait_either(stop, lease):
        with contextlib.suppress(cerr.ClientError):
            await c.unlock(key)
        return
    fail(EXIT_ERROR, "session expired")


def _go_quote_str(s: str) -> str:
    from petcd.ctl.gofmt import quote

    return quote(s)


async def cmd_elect(ctx: Ctx, args: list[str]) -> None:
    if len(args) not in (1, 2):
        fail(
            EXIT_BAD_ARGS,
            "elect takes one election name argument and an optional proposal argument",
        )
    listen = ctx["listen"]
    if len(args) == 1 and not listen:
        fail(EXIT_BAD_ARGS, "no proposal argument but -l not set")
    if len(args) == 2 and listen:
        fail(EXIT_BAD_ARGS, "proposal given but -l is set")
    c = ctx.client()
    stop = _stop_event()
    try:
        lease = await c.lease(60, revoke_on_exit=False).start()
    except cerr.ClientError as e:
        fail(EXIT_ERROR, error_text(e))
    if listen:

        async def observe() -> None:
            last = None
            async for kv in c.observe(args[0]):
                if kv.key and (last is None or kv.SerializeToString() != last):
                    last = kv.SerializeToString()
                    ctx.display.get(pb.RangeResponse(kvs=[kv], count=1))
                    flush()

        task = asyncio.create_task(observe())
        stop_task = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if stop_task in done:
            task.cancel()
            return
        fail(EXIT_ERROR, "elect: observer lost")
    camp = asyncio.create_task(c.campaign(args[0], args[1], lease.id))
    stop_task = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({camp, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    if camp not in done:
        camp.cancel()
        fail(EXIT_ERROR, "context canceled")
    try:
        leader = camp.result()
    except cerr.ClientError as e:
        fail(EXIT_ERROR, error_text(e))
    resp = await ctx.call(
        c._unary("kv", "Range", pb.RangeRequest(key=leader.key), True, ctx.timeout)
    )
    ctx.display.get(resp)
    flush()
    if not await _wait_either(stop, lease):
        fail(EXIT_ERROR, "elect: session expired")
    with contextlib.suppress(cerr.ClientError):
        await c.resign(leader)


# ---------------------------------------------------------------------------------------------
# The command tree


def _tree() -> Command:
    root = Command("etcdctl", "etcdctl", "A simple command line client for etcd3.")

    def add(parent: Command, cmd: Command) -> Command:
        cmd.parent = parent
        parent.subs.append(cmd)
        return cmd

    add(root, Command("get", "get [options] <key> [range_end]", "Gets the key or a range of keys", cmd_get, GET_FLAGS))  # fmt: skip
    add(root, Command("put", "put [options] <key> <value> (<value> can also be given from stdin)", "Puts the given key into the store", cmd_put, PUT_FLAGS))  # fmt: skip
    add(root, Command("del", "del [options] <key> [range_end]", "Removes the specified key or range of keys [key, range_end)", cmd_del, DEL_FLAGS))  # fmt: skip
    add(root, Command("txn", "txn [options]", "Txn processes all the requests in one transaction", cmd_txn, TXN_FLAGS))  # fmt: skip
    add(root, Command("compaction", "compaction [options] <revision>", "Compacts the event history in etcd", cmd_compaction, COMPACT_FLAGS))  # fmt: skip
    alarm = add(root, Command("alarm", "alarm <subcommand>", "Alarm related commands"))
    add(alarm, Command("disarm", "disarm", "Disarms all alarms", cmd_alarm_disarm))
    add(alarm, Command("list", "list", "Lists all alarms", cmd_alarm_list))
    cluster_flag = Flag("cluster", "bool", False, "use all endpoints from the cluster member list")
    add(root, Command("defrag", "defrag", "Defragments the storage of the etcd members with given endpoints", cmd_defrag, [Flag("data-dir", "string", "", "Optional. If present, defragments a data directory not in use by etcd.")], persistent=[cluster_flag]))  # fmt: skip
    ep = add(root, Command("endpoint", "endpoint <subcommand>", "Endpoint related commands", persistent=[cluster_flag]))  # fmt: skip
    add(ep, Command("health", "health", "Checks the healthiness of endpoints specified in `--endpoints` flag", cmd_endpoint_health))  # fmt: skip
    add(ep, Command("status", "status", "Prints out the status of endpoints specified in `--endpoints` flag", cmd_endpoint_status))  # fmt: skip
    add(ep, Command("hashkv", "hashkv", "Prints the KV history hash for each endpoint in --endpoints", cmd_endpoint_hashkv, persistent=[Flag("rev", "int", 0, "maximum revision to hash (default: all revisions)")]))  # fmt: skip
    add(root, Command("move-leader", "move-leader <transferee-member-id>", "Transfers leadership to another etcd cluster member.", cmd_move_leader))  # fmt: skip
    add(root, Command("watch", "watch [options] [key or prefix] [range_end] [--] [exec-command arg1 arg2 ...]", "Watches events stream on keys or prefixes", cmd_watch, WATCH_FLAGS))  # fmt: skip
    add(root, Command("version", "version", "Prints the version of etcdctl", cmd_version))
    lease = add(root, Command("lease", "lease <subcommand>", "Lease related commands"))
    add(lease, Command("grant", "grant <ttl>", "Creates leases", cmd_lease_grant))
    add(lease, Command("revoke", "revoke <leaseID>", "Revokes leases", cmd_lease_revoke))
    add(lease, Command("timetolive", "timetolive <leaseID> [options]", "Get lease information", cmd_lease_timetolive, [Flag("keys", "bool", False, "Get keys attached to this lease")]))  # fmt: skip
    add(lease, Command("list", "list", "List all active leases", cmd_lease_list))
    add(lease, Command("keep-alive", "keep-alive [options] <leaseID>", "Keeps leases alive (renew)", cmd_lease_keep_alive, [Flag("once", "bool", False, "Resets the keep-alive time to its original value and exits immediately")]))  # fmt: skip
    member = add(root, Command("member", "member <subcommand>", "Membership related commands"))
    add(member, Command("list", "list", "Lists all members in the cluster", cmd_member_list))
    snap = add(root, Command("snapshot", "snapshot <subcommand>", "Manages etcd node snapshots"))
    add(snap, Command("save", "save <filename>", "Stores an etcd node backend snapshot to a given file", cmd_snapshot_save))  # fmt: skip
    add(root, Command("lock", "lock <lockname> [exec-command arg1 arg2 ...]", "Acquires a named lock", cmd_lock, [Flag("ttl", "int", 10, "timeout for session")]))  # fmt: skip
    add(root, Command("elect", "elect <election-name> [proposal]", "Observes and participates in leader election", cmd_elect, [Flag("listen", "bool", False, "observation mode", "l")]))  # fmt: skip
    root.subs.sort(key=lambda c: c.name)
    for c in root.subs:
        c.subs.sort(key=lambda s: s.name)
    return root


ROOT = _tree()
_EXTRA_LOADED = False


def _load_extra_commands() -> None:
    """Add the commands that live in their own modules (they import this one, so late)."""
    global _EXTRA_LOADED
    if _EXTRA_LOADED:
        return
    _EXTRA_LOADED = True
    from petcd.ctl import auth, check, completion, help, member, mirror, snapshot

    for mod in (member, mirror, check, snapshot, auth, help, completion):
        mod.register(ROOT)
    ROOT.subs.sort(key=lambda c: c.name)
    for c in ROOT.subs:
        c.subs.sort(key=lambda s: s.name)


def usage(cmd: Command) -> str:
    """etcdctl's usage text for a command (printed on stdout after a flag error)."""
    from petcd.ctl.help import render

    return render(cmd)


# ---------------------------------------------------------------------------------------------
# Entry point


def _find_command(argv: list[str]) -> tuple[Command, list[str]]:
    """Walk the command names among the arguments (skipping flags and their values), as
    cobra's Find does; returns the command and the arguments without the command names."""
    global_values = {f.name for f in GLOBAL_FLAGS if f.kind != "bool"}
    short_values = {f.short for f in GLOBAL_FLAGS if f.short and f.kind != "bool"}
    cmd = ROOT
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest.extend(argv[i:])
            break
        if a.startswith("--") and "=" not in a and a[2:] in global_values:
            rest.extend(argv[i : i + 2])
            i += 2
            continue
        if a.startswith("-") and not a.startswith("--") and len(a) == 2 and a[1] in short_values:
            rest.extend(argv[i : i + 2])
            i += 2
            continue
        if a.startswith("-"):
            rest.append(a)
            i += 1
            continue
        if cmd.subs and (nxt := cmd.find(a)) is not None:
            cmd = nxt
            i += 1
            continue
        if cmd.subs and cmd is ROOT:
            msg = f'unknown command "{a}" for "etcdctl"'
            sys.stderr.write(f"Error: {msg}\nRun 'etcdctl --help' for usage.\n")
            raise CtlExit(EXIT_ERROR, msg)
        rest.append(a)
        i += 1
    return cmd, rest


def _apply_env(fs: FlagSet, names: list[str], extra_known: set[str]) -> None:
    """pkg/flags.SetPflagsFromEnv("ETCDCTL", inherited flags)."""
    used: set[str] = set()
    shadowed: set[str] = set()
    for name in names:
        key = "ETCDCTL_" + name.upper().replace("-", "_")
        if name in fs.changed:
            shadowed.add(key)
            continue
        val = os.environ.get(key, "")
        if val:
            used.add(key)
            with contextlib.suppress(FlagError):
                fs.set(fs.by_name[name], val)
    for k, v in os.environ.items():
        if k in used:
            continue
        if k in shadowed:
            _capnslog(
                "C",
                f'conflicting environment variable "{k}" is shadowed by corresponding '
                "command-line flag (either unset environment variable or disable flag)",
            )
            raise CtlExit(EXIT_ERROR)
        if k.startswith("ETCDCTL_") and k not in extra_known:
            _capnslog("W", f"unrecognized environment variable {k}={v}")


async def _run_async(cmd: Command, ctx: Ctx, args: list[str]) -> None:
    try:
        assert cmd.run is not None
        await cmd.run(ctx, args)
    finally:
        await ctx.close()


def run(argv: list[str]) -> int:
    """Run petcdctl with these arguments (without the program name); returns the exit code."""
    try:
        return _run(argv)
    except CtlExit as e:
        flush()
        if e.msg is not None:
            sys.stderr.write(f"Error: {e.msg}\n")
        return e.code


def _run(argv: list[str]) -> int:
    api = os.environ.pop("ETCDCTL_API", "")
    if api not in ("", "3"):
        sys.stderr.write(f"unsupported API version {api}\n")
        return EXIT_ERROR
    _load_extra_commands()
    if argv and argv[0] in ("__complete", "__completeNoDesc"):
        from petcd.ctl.completion import complete  # cobra's hidden completion request

        return complete(ROOT, argv[1:], descriptions=argv[0] == "__complete")
    cmd, rest = _find_command(argv)
    if cmd.run is None:
        # A command group without a subcommand: cobra prints its usage and succeeds.
        out(usage(cmd))
        return EXIT_SUCCESS
    local = cmd.all_local_flags()
    inherited_names = [f.name for f in GLOBAL_FLAGS]
    p = cmd.parent
    while p is not None:
        inherited_names.extend(f.name for f in p.persistent)
        p = p.parent
    fs = FlagSet(list(GLOBAL_FLAGS) + [VALUE_FORMAT] + local)
    try:
        args, dash = fs.parse(rest)
    except FlagError as e:
        if str(e) == "help":
            out(usage(cmd))
            return EXIT_SUCCESS
        sys.stderr.write(f"Error: {e}\n")
        sys.stderr.flush()
        out(usage(cmd))
        flush()
        sys.stderr.write("\n")
        raise CtlExit(EXIT_ERROR, str(e)) from None
    extra = {"ETCDCTL_WATCH_KEY", "ETCDCTL_WATCH_RANGE_END"} if cmd.name == "watch" else set()
    _apply_env(fs, inherited_names + ["value-format"], extra)
    ctx = Ctx(cmd, fs, dash)
    if cmd.path().split(" ")[0] not in ("version", "help", "completion"):
        ctx.init_display()
    try:
        asyncio.run(_run_async(cmd, ctx, args))
    except Unsupported as e:
        raise CtlExit(EXIT_BAD_FEATURE, str(e)) from None
    except cerr.ClientError as e:
        raise CtlExit(EXIT_ERROR, error_text(e)) from None
    flush()
    return EXIT_SUCCESS


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`petcdctl`)."""
    # Go programs die on SIGINT by default; so does etcdctl (watch, keep-alive). SIGPIPE stays
    # ignored (gRPC's sockets need that); a closed stdout ends the run quietly instead.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        code = run(sys.argv[1:] if argv is None else argv)
        flush()
        sys.stdout.flush()
    except BrokenPipeError:
        code = EXIT_IO
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown (grpc threads); everything is flushed


if __name__ == "__main__":
    main()
