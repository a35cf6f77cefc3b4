"""A small pflag work-alike: GNU-style flags interleaved with arguments, with pflag's exact
error messages (cobra prints them as `Error: ...`), Go value syntax (ParseBool, ParseInt base 0,
ParseDuration) and etcd's `ETCDCTL_*` environment variables for the global flags."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Flag", "FlagError", "FlagSet", "parse_bool", "parse_duration", "parse_int"]


class FlagError(Exception):
    """A command-line error cobra reports with the command's usage."""


@dataclass
class Flag:
    name: str
    kind: str  # bool | string | int | duration | strslice
    default: Any
    usage: str = ""
    short: str = ""


_BOOL = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True}
_BOOL.update({"0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False})


def parse_bool(s: str) -> bool:
    try:
        return _BOOL[s]
    except KeyError:
        raise ValueError(f'strconv.ParseBool: parsing "{s}": invalid syntax') from None


_INT = re.compile(r"[+-]?(0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO]?[0-7_]*|[1-9][0-9_]*)")


def parse_int(s: str) -> int:
    """strconv.ParseInt(s, 0, 64)."""
    if not _INT.fullmatch(s):
        raise ValueError(f'strconv.ParseInt: parsing "{s}": invalid syntax')
    body = s.lstrip("+-")
    sign = -1 if s.startswith("-") else 1
    if len(body) > 1 and body[0] == "0" and body[1] in "0123456789_":
        v = int(body[1:].replace("_", "") or "0", 8)
    else:
        v = int(body, 0)
    v *= sign
    if not -(2**63) <= v < 2**63:
        raise ValueError(f'strconv.ParseInt: parsing "{s}": value out of range')
    return v


_DUR_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DUR_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(s: str) -> float:
    """time.ParseDuration, in seconds."""
    orig = s
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f'time: invalid duration "{orig}"')
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DUR_PART.match(s, pos)
        if not m or m.group(1) in ("", "."):
            if re.match(r"[0-9.]+$", s[pos:]):
                raise ValueError(f'time: missing unit in duration "{orig}"')
            raise ValueError(f'time: invalid duration "{orig}"')
        total += float(m.group(1)) * _DUR_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def _go_default(f: Flag) -> str:
    # How cobra/etcdctl's usage shows a default value.
    if f.kind == "string":
        return f'"{f.default}"'
    if f.kind == "bool":
        return "[=" + ("true" if f.default else "false") + "]"
    if f.kind == "strslice":
        return "[" + ",".join(f.default) + "]"
    if f.kind == "duration":
        from petcd.ctl.gofmt import duration

        return duration(f.default)
    return str(f.default)


@dataclass
class FlagSet:
    flags: list[Flag]
    values: dict[str, Any] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.by_name = {f.name: f for f in self.flags}
        self.by_short = {f.short: f for f in self.flags if f.short}
        for f in self.flags:
            self.values.setdefault(f.name, list(f.default) if f.kind == "strslice" else f.default)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def set(self, f: Flag, raw: str, shown: str | None = None) -> None:
        try:
            if f.kind == "bool":
                v: Any = parse_bool(raw)
            elif f.kind == "int":
                v = parse_int(raw)
            elif f.kind == "duration":
                v = parse_duration(raw)
            elif f.kind == "strslice":
                items = [x for x in raw.split(",")] if raw else []
                v = items if f.name not in self.changed else self.values[f.name] + items
            else:
                v = raw
        except ValueError as e:
            name = shown or (f"-{f.short}, --{f.name}" if f.short else f"--{f.name}")
            raise FlagError(f'invalid argument "{raw}" for "{name}" flag: {e}') from None
        self.values[f.name] = v
        self.changed.add(f.name)

    def parse(self, args: list[str]) -> tuple[list[str], int]:
        """Parse flags out of `args`; returns the positional arguments and the index among them
        where `--` was seen (-1 if none)."""
        pos: list[str] = []
        dash = -1
        i = 0
        while i < len(args):
            a = args[i]
            i += 1
            if a == "--":
                dash = len(pos)
                pos.extend(args[i:])
                break
            if a.startswith("--"):
                name, eq, val = a[2:].partition("=")
                f = self.by_name.get(name)
                if f is None:
                    if name == "help":
                        raise FlagError("help")
                    raise FlagError(f"unknown flag: --{name}")
                if eq:
                    self.set(f, val)
                elif f.kind == "bool":
                    self.set(f, "true")
                elif i < len(args):
                    self.set(f, args[i])
                    i += 1
                else:
                    raise FlagError(f"flag needs an argument: --{name}")
            elif a.startswith("-") and len(a) > 1:
                shorts = a[1:]
                j = 0
                while j < len(shorts):
                    c = shorts[j]
                    f = self.by_short.get(c)
                    if f is None:
                        if c == "h":
                            raise FlagError("help")
                        raise FlagError(f"unknown shorthand flag: '{c}' in -{shorts}")
                    rest = shorts[j + 1 :]
                    if rest.startswith("="):
                        self.set(f, rest[1:])
                        break
                    if f.kind == "bool":
                        self.set(f, "true")
                        j += 1
                        continue
                    if rest:
                        self.set(f, rest)
                    elif i < len(args):
                        self.set(f, args[i])
                        i += 1
                    else:
                        raise FlagError(f"flag needs an argument: '{c}' in -{shorts}")
                    break
            else:
                pos.append(a)
        return pos, dash

    def usage_lines(self) -> list[str]:
        """etcdctl's help lines for these flags (sorted by name, tab-separated like its
        tabwriter-free template)."""
        rows = []
        for f in sorted(self.flags, key=lambda f: f.name):
            lead = f"  -{f.short}, --{f.name}" if f.short else f"      --{f.name}"
            d = _go_default(f)
            lead += d if f.kind == "bool" else "=" + d
            rows.append((lead, f.usage))
        return _tabify(rows)


def _tabify(rows: list[tuple[str, str]]) -> list[str]:
    # etcdctl renders flag usages through text/tabwriter with tab padding (tabwidth 8).
    if not rows:
        return []
    width = max(len(a) for a, _ in rows)
    cell = (width // 8 + 1) * 8  # the column ends on the next tab stop after the widest cell
    out = []
    for a, b in rows:
        tabs = max(1, -(-(cell - len(a)) // 8))
        out.append(a + "\t" * tabs + b)
    return out
