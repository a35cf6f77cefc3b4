"""petcdctl `auth`, `user` and `role`, as etcdctl 3.4 prints them; and the global `--user`.

Output follows etcdctl 3.4's printers: simple; json (encoding/json of the response) and
protobuf for every response; fields for all but `user get` / `user list`; table for none
(exit 4 after the call was made, as etcdctl). Passwords are read as etcdctl does: from the
terminal with echo off (speakeasy; when stdin is not a terminal speakeasy's `stty` complains
on stderr, reproduced so scripts see the same output), or with `--interactive=false` as Go's
`fmt.Scanf("%s")` reads stdin.

`auth status` is etcdctl 3.5's. etcd 3.4 has no AuthStatus RPC: petcdctl then tells whether
auth is enabled from an Authenticate probe and prints AuthRevision 0 (unknown).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any

from petcd.client import errors as cerr
from petcd.client.auth import permission_range, permission_type
from petcd.client.errors import ClientError
from petcd.ctl.flags import Flag
from petcd.ctl.gofmt import jenc, pb_json, quote
from petcd.ctl.main import EXIT_BAD_ARGS, EXIT_BAD_CONNECTION, EXIT_ERROR, Command, fail
from petcd.ctl.printer import (
    FieldsPrinter,
    JSONPrinter,
    ProtobufPrinter,
    SimplePrinter,
    Unsupported,
    _fields_hdr,
)
from petcd.proto.authpb import auth_pb2 as authpb
from petcd.proto.etcdserverpb import rpc_pb2 as pb

if TYPE_CHECKING:
    from petcd.ctl.main import Ctx

__all__ = ["ask_password", "auth_config", "login", "register"]

_STTY_ERR = "stty: 'standard input': Inappropriate ioctl for device\n"
_PERM_NAME = {authpb.Permission.READ: "READ", authpb.Permission.WRITE: "WRITE"}
_PERM_NAME[authpb.Permission.READWRITE] = "READWRITE"


# -- reading passwords -------------------------------------------------------------------------


def _read_line() -> bytes:
    # Byte by byte, as speakeasy does, so that a second prompt gets the next line.
    buf = bytearray()
    while True:
        b = os.read(0, 1)
        if not b or b == b"\n":
            return bytes(buf).removesuffix(b"\r")
        buf += b


def ask_password(prompt: str) -> str:
    """speakeasy.Ask: the prompt on stdout, a line read with echo off, then a newline."""
    sys.stdout.buffer.write(prompt.encode())
    sys.stdout.buffer.flush()
    tty = os.isatty(0)
    old = None
    if tty:
        import termios

        with contextlib.suppress(termios.error):
            old = termios.tcgetattr(0)
            new = termios.tcgetattr(0)
            new[3] &= ~termios.ECHO
            termios.tcsetattr(0, termios.TCSANOW, new)
    else:
        sys.stderr.write(_STTY_ERR)  # `stty -echo` failing on a non-terminal
        sys.stderr.flush()
    try:
        line = _read_line()
    finally:
        sys.stdout.buffer.write(b"\n")
        sys.stdout.buffer.flush()
        if old is not None:
            import termios

            termios.tcsetattr(0, termios.TCSANOW, old)
        elif not tty:
            sys.stderr.write(_STTY_ERR)  # `stty echo`
            sys.stderr.flush()
    return line.decode("utf-8", "surrogateescape").strip()


def _scan_word() -> str:
    """fmt.Scanf("%s"): skip spaces, read up to white space; nothing at a newline or EOF."""
    word = bytearray()
    while True:
        b = os.read(0, 1)
        if not b or b == b"\n":
            break
        if b in (b" ", b"\t", b"\r"):
            if word:
                break
            continue
        word += b
    return word.decode("utf-8", "surrogateescape")


def _read_password_interactive(name: str) -> str:
    p1 = ask_password(f"Password of {name}: ")
    if not p1:
        fail(EXIT_BAD_ARGS, "empty password")
    p2 = ask_password(f"Type password of {name} again for confirmation: ")
    if p1 != p2:
        fail(EXIT_BAD_ARGS, "given passwords are different")
    return p1


# -- the global --user / --password --------------------------------------------------------------


def auth_config(ctx: Ctx) -> tuple[str | None, str | None]:
    """etcdctl's authCfgFromCmd: `--user name[:password]`, `--password`, or a prompt."""
    cached = getattr(ctx, "_auth_cfg", None)
    if cached is not None:
        return cached
    user, password = ctx["user"], ctx["password"]
    cfg: tuple[str | None, str | None] = (None, None)
    if user:
        if not password:
            name, sep, pw = user.partition(":")
            cfg = (name, pw) if sep else (user, ask_password("Password: "))
        else:
            cfg = (user, password)
    ctx._auth_cfg = cfg  # type: ignore[attr-defined]
    return cfg


async def login(ctx: Ctx) -> None:
    """Authenticate every client of this run that has credentials and no token yet; failing
    exits 2 as etcdctl does when its client cannot be made (clientv3 authenticates at dial)."""
    for c in ctx._clients:
        ta = c._token_auth
        if ta is None or ta.fetched:
            continue
        try:
            await c.login(timeout=ctx.fs["dial-timeout"])
        except ClientError as e:
            from petcd.ctl.main import error_text

            ctx.warn_rpc(e)
            fail(EXIT_BAD_CONNECTION, error_text(e))
        if ta.not_enabled is not None:
            ctx.warn_rpc(ta.not_enabled)  # clientv3 logs it, then goes on without a token


# -- output -------------------------------------------------------------------------------------


def _w(s: str | bytes) -> None:
    sys.stdout.buffer.write(s.encode() if isinstance(s, str) else s)


def _print(ctx: Ctx, resp: Any, simple: str | bytes | None, fields: str | bytes | None) -> None:
    """One response in the chosen format; None: etcdctl has no such output (exit 4)."""
    p = ctx.display
    if isinstance(p, SimplePrinter) and simple is not None:
        _w(simple)
    elif isinstance(p, JSONPrinter):
        _w(jenc(pb_json(resp, p.is_hex)) + "\n")
    elif isinstance(p, ProtobufPrinter):
        _w(resp.SerializeToString())
    elif isinstance(p, FieldsPrinter) and fields is not None:
        _w(fields)
    else:
        raise Unsupported(f"{p.name} not supported as output format")


def _hdr(resp: Any) -> str:
    return _fields_hdr(resp.header)


def _role_get_simple(role: str, r: pb.AuthRoleGetResponse) -> bytes:
    from petcd.client.aio import prefix_range_end

    def rng(perm: authpb.Permission) -> bytes:
        if not perm.range_end:
            return b"\t" + perm.key + b"\n"
        if perm.range_end != b"\x00":
            s = b"\t[" + perm.key + b", " + perm.range_end + b")"
        else:
            s = b"\t[" + perm.key + b", <open ended>"
        # Go's GetPrefixRangeEnd of an empty key is "\x00" too.
        if (prefix_range_end(perm.key) if perm.key else b"\x00") == perm.range_end:
            s += b" (prefix " + perm.key + b")"
        return s + b"\n"

    out = [f"Role {role}\nKV Read:\n".encode()]
    read = (authpb.Permission.READ, authpb.Permission.READWRITE)
    write = (authpb.Permission.WRITE, authpb.Permission.READWRITE)
    out += [rng(p) for p in r.perm if p.permType in read]
    out.append(b"KV Write:\n")
    out += [rng(p) for p in r.perm if p.permType in write]
    return b"".join(out)


def _role_get_fields(r: pb.AuthRoleGetResponse) -> str:
    return _hdr(r) + "".join(
        f'"PermType" :  {_PERM_NAME.get(p.permType, str(p.permType))}\n'
        f'"Key" : {quote(p.key)}\n"RangeEnd" : {quote(p.range_end)}\n'
        for p in r.perm
    )


def _print_role_get(ctx: Ctx, role: str, r: pb.AuthRoleGetResponse) -> None:
    _print(ctx, r, _role_get_simple(role, r), _role_get_fields(r))


# -- auth ---------------------------------------------------------------------------------------


def _no_args(args: list[str], what: str) -> None:
    if args:
        fail(EXIT_BAD_ARGS, f"{what} command does not accept any arguments")


async def cmd_auth_enable(ctx: Ctx, args: list[str]) -> None:
    _no_args(args, "auth enable")
    c = ctx.client()
    await login(ctx)
    while True:
        try:
            await c.auth_enable(timeout=ctx.timeout)
            break
        except ClientError as e:
            ctx.warn_rpc(e)
            if not isinstance(e, cerr.ErrRootRoleNotExist):  # type: ignore[attr-defined]
                from petcd.ctl.main import error_text

                fail(EXIT_ERROR, error_text(e))
        # etcdctl creates the root role and grants it to root, then tries again.
        await ctx.call(c.role_add("root", timeout=ctx.timeout))
        await ctx.call(c.user_grant_role("root", "root", timeout=ctx.timeout))
    _w("Authentication Enabled\n")


async def cmd_auth_disable(ctx: Ctx, args: list[str]) -> None:
    _no_args(args, "auth disable")
    c = ctx.client()
    await ctx.call(c.auth_disable(timeout=ctx.timeout))
    _w("Authentication Disabled\n")


async def cmd_auth_status(ctx: Ctx, args: list[str]) -> None:
    _no_args(args, "auth status")
    c = ctx.client()
    await login(ctx)
    try:
        resp = await c.auth_status(timeout=ctx.timeout)
    except cerr.Unimplemented:
        # etcd 3.4: Authenticate answers "not enabled" before it looks at the credentials.
        try:
            await c.authenticate("", "", timeout=ctx.timeout)
            enabled = True
        except cerr.ErrAuthNotEnabled:  # type: ignore[attr-defined]
            enabled = False
        except cerr.ErrAuthFailed:  # type: ignore[attr-defined]
            enabled = True
        except ClientError as e:
            await ctx.call(_raise(e))
        resp = pb.AuthStatusResponse(enabled=enabled)
    except ClientError as e:
        await ctx.call(_raise(e))
    on = "true" if resp.enabled else "false"
    _print(ctx, resp, f"Authentication Status: {on}\nAuthRevision: {resp.authRevision}\n", None)


async def _raise(e: BaseException) -> None:
    raise e


# -- user ---------------------------------------------------------------------------------------


async def cmd_user_add(ctx: Ctx, args: list[str]) -> None:
    if len(args) != 1:
        fail(EXIT_BAD_ARGS, "user add command requires user name as its argument")
    no_password = ctx["no-password"]
    password = ""
    if no_password:
        user = args[0]
    elif ctx["new-user-password"]:
        user, password = args[0], ctx["new-user-password"]
    else:
        name, sep, pw = args[0].partition(":")
        if not sep:
            user = args[0]
            password = _read_password_interactive(user) if ctx["interactive"] else _scan_word()
        else:
            user, password = name, pw
            if not user:
                fail(EXIT_BAD_ARGS, "empty user name is not allowed")
    c = ctx.client()
    resp = await ctx.call(c.user_add(user, password, no_password=no_password))
    _print(ctx, resp, f"User {user} created\n", _hdr(resp))


async def cmd_user_delete(ctx: Ctx, args: list[str]) -> None:
    if len(args) != 1:
        fail(EXIT_BAD_ARGS, "user delete command requires user name as its argument")
    c = ctx.client()
    resp = await ctx.call(c.user_delete(args[0]))
    _print(ctx, resp, f"User {args[0]} deleted\n", _hdr(resp))


async def cmd_user_get(ctx: Ctx, args: list[str]) -> None:
    if len(args) != 1:
        fail(EXIT_BAD_ARGS, "user get command requires user name as its argument")
    name = args[0]
    c = ctx.client()
    resp = await ctx.call(c.user_get(name))
    if ctx["detail"]:
        _w(f"User: {name}\n")
        for role in resp.roles:
            _w("\n")
            _print_role_get(ctx, role, await ctx.call(c.role_get(role)))
        return
    _print(ctx, resp, f"User: {name}\nRoles:" + "".join(" " + r for r in resp.roles) + "\n", None)


async def cmd_user_list(ctx: Ctx, args: list[str]) -> None:
    if args:
        fail(EXIT_BAD_ARGS, "user list command requires no arguments")
    c = ctx.client()
    resp = await ctx.call(c.user_list())
    _print(ctx, resp, "".join(u + "\n" for u in resp.users), None)


async def cmd_user_passwd(ctx: Ctx, args: list[str]) -> None:
    if len(args) != 1:
        fail(EXIT_BAD_ARGS, "user passwd command requires user name as its argument")
    password = _read_password_interactive(args[0]) if ctx["interactive"] else _scan_word()
    c = ctx.client()
    resp = await ctx.call(c.user_change_password(args[0], password))
    _print(ctx, resp, "Password updated\n", _hdr(resp))


async def cmd_user_grant_role(ctx: Ctx, args: list[str]) -> None:
    if len(args) != 2:
        fail(EXIT_BAD_ARGS, "user grant command requires user name and role name as its argument")
    c = ctx.client()
    resp = await ctx.call(c.user_grant_role(args[0], args[1]))
    _print(ctx, resp, f"Role {args[1]} is granted to user {args[0]}\n", _hdr(resp))


async def cmd_user_revoke_role(ctx: Ctx, args: list[str]) -> None:
    if len(args) != 2:
        fail(EXIT_BAD_ARGS, "user revoke-role requires user name and role name as its argument")
    c = ctx.client()
    resp = await ctx.call(c.user_revoke_role(args[0], args[1]))
    _print(ctx, resp, f"Role {args[1]} is revoked from user {args[0]}\n", _hdr(resp))


# -- role ---------------------------------------------------------------------------------------


def _one_role(args: list[str], what: str) -> str:
    if len(args) != 1:
        fail(EXIT_BAD_ARGS, f"role {what} command requires role name as its argument")
    return args[0]


async def cmd_role_add(ctx: Ctx, args: list[str]) -> None:
    role = _one_role(args, "add")
    resp = await ctx.call(ctx.client().role_add(role))
    _print(ctx, resp, f"Role {role} created\n", _hdr(resp))


async def cmd_role_delete(ctx: Ctx, args: list[str]) -> None:
    role = _one_role(args, "delete")
    resp = await ctx.call(ctx.client().role_delete(role))
    _print(ctx, resp, f"Role {role} deleted\n", _hdr(resp))


async def cmd_role_get(ctx: Ctx, args: list[str]) -> None:
    role = _one_role(args, "get")
    _print_role_get(ctx, role, await ctx.call(ctx.client().role_get(role)))


async def cmd_role_list(ctx: Ctx, args: list[str]) -> None:
    if args:
        fail(EXIT_BAD_ARGS, "role list command requires no arguments")
    resp = await ctx.call(ctx.client().role_list())
    fields = _hdr(resp) + '"Roles" :' + "".join(" " + quote(r) for r in resp.roles) + "\n"
    _print(ctx, resp, "".join(r + "\n" for r in resp.roles), fields)


def _perm_range(ctx: Ctx, args: list[str]) -> tuple[bytes, bytes]:
    key = args[0]
    end = args[1] if len(args) > 1 and key else None
    try:
        return permission_range(key, end, prefix=ctx["prefix"], from_key=ctx["from-key"])
    except ValueError as e:
        fail(EXIT_BAD_ARGS, str(e))


async def cmd_role_grant_permission(ctx: Ctx, args: list[str]) -> None:
    if len(args) < 3:
        fail(
            EXIT_BAD_ARGS,
            "role grant command requires role name, permission type, and key [endkey] as its argument",
        )
    try:
        perm = permission_type(args[1])
    except ValueError as e:
        fail(EXIT_BAD_ARGS, str(e))
    key, end = _perm_range(ctx, args[2:])
    c = ctx.client()
    resp = await ctx.call(c.role_grant_permission(args[0], perm, key, end or None))
    _print(ctx, resp, f"Role {args[0]} updated\n", _hdr(resp))


async def cmd_role_revoke_permission(ctx: Ctx, args: list[str]) -> None:
    if len(args) < 2:
        fail(
            EXIT_BAD_ARGS,
            "role revoke-permission command requires role name and key [endkey] as its argument",
        )
    key, end = _perm_range(ctx, args[1:])
    c = ctx.client()
    resp = await ctx.call(c.role_revoke_permission(args[0], key, end or None))
    role, shown = args[0], args[1].encode("utf-8", "surrogateescape")
    if not end:
        simple = b"Permission of key " + shown + b" is revoked from role " + role.encode() + b"\n"
    elif end != b"\x00":
        simple = b"Permission of range [" + shown + b", " + end + b") is revoked from role "
        simple += role.encode() + b"\n"
    else:
        simple = b"Permission of range [" + shown + b", <open ended> is revoked from role "
        simple += role.encode() + b"\n"
    _print(ctx, resp, simple, _hdr(resp))


# -- registration -------------------------------------------------------------------------------


def _perm_flags(verb: str) -> list[Flag]:
    return [
        Flag("from-key", "bool", False, f"{verb} a permission of keys that are greater than or equal to the given key using byte compare"),
        Flag("prefix", "bool", False, f"{verb} a prefix permission"),
    ]  # fmt: skip


def register(root: Command) -> None:
    """Add the `auth`, `user` and `role` command groups."""
    groups = {
        "auth": Command("auth", "auth <enable or disable>", "Enable or disable authentication"),
        "user": Command("user", "user <subcommand>", "User related commands"),
        "role": Command("role", "role <subcommand>", "Role related commands"),
    }
    subs = {
        "auth": [
            Command("disable", "disable", "Disables authentication", cmd_auth_disable),
            Command("enable", "enable", "Enables authentication", cmd_auth_enable),
            Command("status", "status", "Returns authentication status", cmd_auth_status),
        ],
        "user": [
            Command("add", "add <user name or user:password> [options]", "Adds a new user", cmd_user_add, [
                Flag("interactive", "bool", True, "Read password from stdin instead of interactive terminal"),
                Flag("new-user-password", "string", "", "Supply password from the command line flag"),
                Flag("no-password", "bool", False, "Create a user without password (CN based auth only)"),
            ]),
            Command("delete", "delete <user name>", "Deletes a user", cmd_user_delete),
            Command("get", "get <user name> [options]", "Gets detailed information of a user", cmd_user_get, [
                Flag("detail", "bool", False, "Show permissions of roles granted to the user"),
            ]),
            Command("grant-role", "grant-role <user name> <role name>", "Grants a role to a user", cmd_user_grant_role),
            Command("list", "list", "Lists all users", cmd_user_list),
            Command("passwd", "passwd <user name> [options]", "Changes password of user", cmd_user_passwd, [
                Flag("interactive", "bool", True, "If true, read password from stdin instead of interactive terminal"),
            ]),
            Command("revoke-role", "revoke-role <user name> <role name>", "Revokes a role from a user", cmd_user_revoke_role),
        ],
        "role": [
            Command("add", "add <role name>", "Adds a new role", cmd_role_add),
            Command("delete", "delete <role name>", "Deletes a role", cmd_role_delete),
            Command("get", "get <role name>", "Gets detailed information of a role", cmd_role_get),
            Command("grant-permission", "grant-permission [options] <role name> <permission type> <key> [endkey]", "Grants a key to a role", cmd_role_grant_permission, _perm_flags("grant")),
            Command("list", "list", "Lists all roles", cmd_role_list),
            Command("revoke-permission", "revoke-permission <role name> <key> [endkey]", "Revokes a key from a role", cmd_role_revoke_permission, _perm_flags("revoke")),
        ],
    }  # fmt: skip
    for name, group in groups.items():
        existing = next((s for s in root.subs if s.name == name), None)
        if existing is None:
            group.parent = root
            root.subs.append(group)
            existing = group
        for cmd in subs[name]:
            if any(s.name == cmd.name for s in existing.subs):
                continue
            cmd.parent = existing
            existing.subs.append(cmd)
        existing.subs.sort(key=lambda s: s.name)
