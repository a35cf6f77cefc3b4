"""petcdctl's help: etcdctl 3.4's usage template (etcdctl/ctlv3/help.go) and cobra's `help`.

The text is rendered exactly as etcdctl does it: the template's output goes through Go's
text/tabwriter (minwidth 0, tabwidth 8, padding 1, tab padding), so columns line up the same
way whatever commands are registered. The listing is derived from the command tree, so commands
that other modules register appear on their own.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from petcd.ctl.flags import Flag, _go_default
from petcd.ctl.gofmt import quote

if TYPE_CHECKING:
    from petcd.ctl.main import Command, Ctx

__all__ = ["LONG", "NO_FLAGS_IN_USE", "flag_usages", "register", "render", "tabwrite"]

# Long descriptions (cobra's `Long`), by command path. A command may also carry `long` itself.
LONG: dict[str, str] = {
    "check datascale": "If no endpoint is provided, localhost will be used. If multiple endpoints are provided, first endpoint will be used.",
    "endpoint status": """When --write-out is set to simple, this command prints out comma-separated status lists for each endpoint.
The items in the lists are endpoint, ID, version, db size, is leader, is learner, raft term, raft index, raft applied index, errors.
""",
    "member list": """When --write-out is set to simple, this command prints out comma-separated member lists for each endpoint.
The items in the lists are ID, Status, Name, Peer Addrs, Client Addrs, Is Learner.
""",
    "member promote": """Promotes a non-voting learner member to a voting one in the cluster.
""",
    "put": """
Puts the given key into the store.

When <value> begins with '-', <value> is interpreted as a flag.
Insert '--' for workaround:

$ put <key> -- <value>
$ put -- <key> <value>

If <value> isn't given as a command line argument and '--ignore-value' is not specified,
this command tries to read the value from standard input.

If <lease> isn't given as a command line argument and '--ignore-lease' is not specified,
this command tries to read the value from standard input.

For example,
$ cat file | put <key>
will store the content of the file to <key>.
""",
    "snapshot status": """When --write-out is set to simple, this command prints out comma-separated status lists for each endpoint.
The items in the lists are hash, revision, total keys, total size.
""",
    "help": """Help provides help for any command in the application.
Simply type etcdctl help [path to command] for full details.""",
}  # fmt: skip

# cobra's DisableFlagsInUseLine: no " [flags]" after these commands' usage line.
NO_FLAGS_IN_USE: set[str] = set()

HELP_FLAG_USAGE = "help for %s"


def tabwrite(text: str, tabwidth: int = 8, padding: int = 1) -> str:
    """Go's text/tabwriter with '\\t' as padding character and no flags.

    A cell is text ended by a tab; a column block is a run of consecutive lines that all have a
    cell in that column; every cell of a block is padded with tabs to the block's widest cell
    plus `padding`, rounded up to a multiple of `tabwidth`. A line's last cell (the text before
    its newline) belongs to no column.
    """
    lines = [line.split("\t") for line in text.split("\n")]
    widths: list[int] = []
    out: list[str] = []

    def write_lines(l0: int, l1: int) -> None:
        for cells in lines[l0:l1]:
            parts = []
            for j, c in enumerate(cells[:-1]):
                cellw = -(-widths[j] // tabwidth) * tabwidth
                parts.append(c + "\t" * -(-(cellw - len(c)) // tabwidth))
            parts.append(cells[-1])
            out.append("".join(parts))

    def fmt(l0: int, l1: int) -> None:
        column = len(widths)
        this = l0
        while this < l1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write_lines(l0, this)
            l0 = this
            width = 0
            while this < l1 and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            widths.append(width)
            fmt(l0, this)
            widths.pop()
            l0 = this
        write_lines(l0, l1)

    fmt(0, len(lines))
    return "\n".join(out)


def flag_usages(flags: list[Flag]) -> str:
    """etcdFlagUsages: one tab-separated line per flag, sorted by name (pflag's order)."""
    lines = []
    for f in sorted(flags, key=lambda f: f.name):
        lead = f"  -{f.short}, --{f.name}" if f.short else f"      --{f.name}"
        d = _go_default(f)
        if f.kind == "string":
            d = quote(str(f.default))
        lead += d if f.kind == "bool" else "=" + d
        lines.append(f"{lead}\t{f.usage}\n")
    return "".join(lines)


def _rel_name(cmd: Command, start: Command) -> str:
    """The template's cmdName: the names from below `start` down to `cmd`."""
    parts = [cmd.name]
    c = cmd
    while c.parent is not None and c.parent.name != start.name:
        c = c.parent
        parts.insert(0, c.name)
    return " ".join(parts)


def _root(cmd: Command) -> Command:
    while cmd.parent is not None:
        cmd = cmd.parent
    return cmd


def _all_subs(cmd: Command) -> list[Command]:
    res: list[Command] = []
    for s in cmd.subs:
        res.append(s)
        res.extend(_all_subs(s))
    return res


def long_of(cmd: Command) -> str:
    return getattr(cmd, "long", "") or LONG.get(cmd.path(), "")


def use_line(cmd: Command) -> str:
    """cobra's UseLine: the parent's command path, this command's Use, then " [flags]"."""
    line = cmd.use
    if cmd.parent is not None:
        line = _command_path(cmd.parent) + " " + cmd.use
    if cmd.path() in NO_FLAGS_IN_USE or "[flags]" in line:
        return line
    return line + " [flags]"  # every command has at least --help


def _command_path(cmd: Command) -> str:
    names = []
    c: Command | None = cmd
    while c is not None:
        names.append(c.name)
        c = c.parent
    return " ".join(reversed(names))


def render(cmd: Command, help_flag: bool = True) -> str:
    """etcdctl's usage text for `cmd` (what `--help`, `help <cmd>` and flag errors print).
    Without `help_flag` (cobra adds --help only to the command it runs or shows help for)."""
    from petcd.ctl.main import API_VERSION, GLOBAL_FLAGS, VERSION

    root = _root(cmd)
    t = ["NAME:\n"]
    name = cmd.name if cmd.parent is None else _rel_name(cmd, root)
    t.append(f"\t{name} - {cmd.short}\n")
    t.append(f"\nUSAGE:\n\t{use_line(cmd)}\n")
    if cmd.parent is None:
        t.append(f"\nVERSION:\n\t{VERSION}\n")
    if cmd.subs:
        t.append(f"\nAPI VERSION:\n\t{API_VERSION}\n")
        t.append("\n\nCOMMANDS:\n")
        for s in _all_subs(cmd):
            if s.run is not None:
                t.append(f"\t{_rel_name(s, cmd)}\t{s.short}\n")
    long = long_of(cmd)
    if long:
        t.append("\nDESCRIPTION:\n")
        t.extend(f"\t{line}\n" for line in long.strip("\n\t ").split("\n"))
    local = cmd.flags + cmd.persistent
    if help_flag:
        local = local + [Flag("help", "bool", False, HELP_FLAG_USAGE % cmd.name, "h")]
    inherited: list[Flag] = []
    p = cmd.parent
    while p is not None:
        inherited.extend(p.persistent)
        p = p.parent
    if cmd.parent is None:
        local = local + list(GLOBAL_FLAGS)
    else:
        inherited.extend(GLOBAL_FLAGS)
    t.append("\nOPTIONS:\n" + flag_usages(local))
    if inherited:
        t.append("\nGLOBAL OPTIONS:\n" + flag_usages(inherited))
    t.append("\n")
    return tabwrite("".join(t))


def _find(root: Command, args: list[str]) -> Command | None:
    """cobra's Find as the help command uses it: walk the names; None when the root itself
    would be handed an unknown argument (cobra's legacyArgs error)."""
    cmd = root
    for a in args:
        nxt = cmd.find(a) if cmd.subs else None
        if nxt is None:
            if cmd is root and root.subs:
                return None
            return cmd
        cmd = nxt
    return cmd


def _go_hash_q(args: list[str]) -> str:
    """fmt's %#q of a []string: backquoted where strconv.CanBackquote allows."""

    def one(s: str) -> str:
        if "`" not in s and all(c == "\t" or (" " <= c and c != "\x7f") for c in s):
            return f"`{s}`"
        return quote(s)

    return "[" + " ".join(one(a) for a in args) + "]"


async def cmd_help(ctx: Ctx, args: list[str]) -> None:
    from petcd.ctl.main import out

    root = _root(ctx.cmd)
    target = _find(root, args)
    if target is None:
        sys.stderr.write(f"Unknown help topic {_go_hash_q(args)}\n")
        out(render(root, help_flag=False))
        return
    out(render(target))


def register(root: Command) -> None:
    from petcd.ctl.main import Command

    if any(s.name == "help" for s in root.subs):
        return
    cmd = Command("help", "help [command]", "Help about any command", cmd_help)
    cmd.parent = root
    root.subs.append(cmd)
