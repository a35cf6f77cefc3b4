"""petcdctl `member add|remove|update|promote`, as etcdctl 3.4 prints them.

etcdctl 3.4's printers only know these responses in the simple, json and protobuf formats;
fields and table exit 4 after the change is made. `member promote` with anything but simple
output dereferences a nil printer in etcdctl (a panic, exit 2, after the promotion happened):
petcdctl prints the head of the same panic and exits 2 too, so scripts see the same result.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any

from petcd.ctl.flags import Flag
from petcd.ctl.gofmt import jenc, pb_json, quote
from petcd.ctl.main import Command, CtlExit, _go_parse_hex, fail
from petcd.ctl.printer import JSONPrinter, ProtobufPrinter, SimplePrinter, Unsupported
from petcd.proto.etcdserverpb import rpc_pb2 as pb

if TYPE_CHECKING:
    from petcd.ctl.main import Ctx

__all__ = ["register", "validate_urls"]

EXIT_ERROR = 1
EXIT_PANIC = 2
EXIT_BAD_ARGS = 128


# -- types.NewURLs, the check clientv3 runs before MemberAdd/MemberUpdate ----------------------

_SCHEME_CHARS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_PORT = re.compile(r":[0-9]*")


def _url_parse(raw: str) -> tuple[str, str, str]:
    """The (scheme, host, path) Go's url.Parse finds, or ValueError with its message."""

    def err(msg: str) -> ValueError:
        return ValueError(f"parse {quote(raw)}: {msg}")

    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise err("net/url: invalid control character in URL")
    rest = raw.split("#", 1)[0]
    scheme = ""
    i = rest.find(":")
    if i == 0:
        raise err("missing protocol scheme")
    if i > 0 and _SCHEME_CHARS.fullmatch(rest[:i]):
        scheme, rest = rest[:i].lower(), rest[i + 1 :]
    rest = rest.split("?", 1)[0]
    if not scheme:
        seg = rest.split("/", 1)[0]
        if ":" in seg:
            raise err("first path segment in URL cannot contain colon")
        return "", "", rest
    if not rest.startswith("/"):
        return scheme, "", ""  # opaque: no host
    if not rest.startswith("//"):
        return scheme, "", rest
    authority, slash, path = rest[2:].partition("/")
    host = authority.rpartition("@")[2]
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise err("missing ']' in host")
        port = host[end + 1 :]
        if port and not _PORT.fullmatch(port):
            raise err(f"invalid port {quote(port)} after host")
    else:
        j = host.rfind(":")
        if j >= 0 and not _PORT.fullmatch(host[j:]):
            raise err(f"invalid port {quote(host[j:])} after host")
        for c in host:
            if c in ' <>"`{}|\\^':
                raise err(f"invalid character {quote(c)} in host name")
    return scheme, host, slash + path


def _split_host_port(host: str) -> bool:
    if host.startswith("["):
        end = host.find("]")
        return end >= 0 and host[end + 1 : end + 2] == ":" and ":" not in host[end + 2 :]
    return host.count(":") == 1


def validate_urls(urls: list[str]) -> None:
    """Raise ValueError with etcd's message when a peer URL list is not acceptable."""
    if not urls:
        raise ValueError("no valid URLs given")
    for raw in urls:
        u = raw.strip(" \t\n\v\f\r")
        scheme, host, path = _url_parse(u)
        if scheme not in ("http", "https", "unix", "unixs"):
            raise ValueError(f"URL scheme must be http, https, unix, or unixs: {u}")
        if not _split_host_port(host):
            raise ValueError(f'URL address does not have the form "host:port": {u}')
        if path:
            raise ValueError(f"URL must not contain a path: {u}")


# -- output -------------------------------------------------------------------------------------


def _write(s: str | bytes) -> None:
    sys.stdout.buffer.write(s.encode() if isinstance(s, str) else s)


def _print(ctx: Ctx, resp: Any, simple: str) -> None:
    """What etcdctl's printerRPC writes for a membership response."""
    p = ctx.display
    if isinstance(p, SimplePrinter):
        _write(simple)
    elif isinstance(p, JSONPrinter):
        _write(jenc(pb_json(resp, p.is_hex)) + "\n")
    elif isinstance(p, ProtobufPrinter):
        _write(resp.SerializeToString())
    else:
        raise Unsupported(f"{p.name} not supported as output format")


def _member_id(arg_list: list[str]) -> int:
    if len(arg_list) != 1:
        fail(EXIT_BAD_ARGS, "member ID is not provided")
    try:
        return _go_parse_hex(arg_list[0], "id", unsigned=True)
    except ValueError as e:
        fail(EXIT_BAD_ARGS, f"bad member ID arg ({e}), expecting ID in Hex")


def _peer_urls(ctx: Ctx) -> list[str]:
    raw = ctx["peer-urls"]
    if not raw:
        fail(EXIT_BAD_ARGS, "member peer urls not provided")
    urls = raw.split(",")
    try:
        validate_urls(urls)
    except ValueError as e:
        fail(EXIT_ERROR, str(e))
    return urls


async def cmd_member_add(ctx: Ctx, args: list[str]) -> None:
    if not args:
        fail(EXIT_BAD_ARGS, "member name not provided")
    if len(args) > 1:
        ev = "too many arguments"
        for s in args:
            if s.lower().startswith("http"):
                ev += f", did you mean --peer-urls={s}"
        fail(EXIT_BAD_ARGS, ev)
    name = args[0]
    if not ctx["peer-urls"]:
        fail(EXIT_BAD_ARGS, "member peer urls not provided")
    c = ctx.client()
    urls = _peer_urls(ctx)
    resp: pb.MemberAddResponse = await ctx.call(
        c.member_add(urls, learner=ctx["learner"], timeout=ctx.timeout)
    )
    new_id = resp.member.ID
    text = f"Member {new_id:16x} added to cluster {resp.header.cluster_id:16x}\n"
    _print(ctx, resp, text)
    if isinstance(ctx.display, SimplePrinter):
        conf = [
            f"{name if mb.ID == new_id else mb.name}={u}"
            for mb in resp.members
            for u in mb.peerURLs
        ]
        _write(
            f"\nETCD_NAME={quote(name)}\n"
            f"ETCD_INITIAL_CLUSTER={quote(','.join(conf))}\n"
            f"ETCD_INITIAL_ADVERTISE_PEER_URLS={quote(ctx['peer-urls'])}\n"
            'ETCD_INITIAL_CLUSTER_STATE="existing"\n'
        )


async def cmd_member_remove(ctx: Ctx, args: list[str]) -> None:
    mid = _member_id(args)
    c = ctx.client()
    resp = await ctx.call(c.member_remove(mid, timeout=ctx.timeout))
    _print(ctx, resp, f"Member {mid:16x} removed from cluster {resp.header.cluster_id:16x}\n")


async def cmd_member_update(ctx: Ctx, args: list[str]) -> None:
    mid = _member_id(args)
    if not ctx["peer-urls"]:
        fail(EXIT_BAD_ARGS, "member peer urls not provided")
    c = ctx.client()
    urls = _peer_urls(ctx)
    resp = await ctx.call(c.member_update(mid, urls, timeout=ctx.timeout))
    _print(ctx, resp, f"Member {mid:16x} updated in cluster {resp.header.cluster_id:16x}\n")


_PANIC = (
    "panic: runtime error: invalid memory address or nil pointer dereference\n"
    "[signal SIGSEGV: segmentation violation code=0x1 addr=0x78 pc=0x0]\n\n"
    "goroutine 1 [running]:\n"
    "go.etcd.io/etcd/etcdctl/ctlv3/command.(*printerUnsupported).MemberPromote(...)\n"
)


async def cmd_member_promote(ctx: Ctx, args: list[str]) -> None:
    mid = _member_id(args)
    c = ctx.client()
    resp = await ctx.call(c.member_promote(mid, timeout=ctx.timeout))
    if not isinstance(ctx.display, SimplePrinter):
        sys.stdout.flush()
        sys.stderr.write(_PANIC)
        raise CtlExit(EXIT_PANIC)
    _write(f"Member {mid:16x} promoted in cluster {resp.header.cluster_id:16x}\n")


def register(root: Command) -> None:
    """Add the membership-change subcommands under `member`."""
    group = next(s for s in root.subs if s.name == "member")
    cmds = [
        Command(
            "add",
            "add <memberName> [options]",
            "Adds a member into the cluster",
            cmd_member_add,
            [  # fmt: skip
                Flag("learner", "bool", False, "indicates if the new member is raft learner"),
                Flag("peer-urls", "string", "", "comma separated peer URLs for the new member."),
            ],
        ),
        Command(
            "promote",
            "promote <memberID>",
            "Promotes a non-voting member in the cluster",
            cmd_member_promote,
        ),  # fmt: skip
        Command(
            "remove", "remove <memberID>", "Removes a member from the cluster", cmd_member_remove
        ),  # fmt: skip
        Command(
            "update",
            "update <memberID> [options]",
            "Updates a member in the cluster",
            cmd_member_update,
            [  # fmt: skip
                Flag(
                    "peer-urls", "string", "", "comma separated peer URLs for the updated member."
                ),
            ],
        ),
    ]
    for cmd in cmds:
        if any(s.name == cmd.name for s in group.subs):
            continue
        cmd.parent = group
        group.subs.append(cmd)
    group.subs.sort(key=lambda s: s.name)
