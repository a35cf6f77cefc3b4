"""Go formatting helpers so petcdctl prints what etcdctl (Go) prints, byte for byte.

`quote` is Go's `%q` (strconv.Quote), `jenc` is encoding/json's output (HTML-safe escapes, no
spaces), `pb_json` renders a protobuf message the way `json.Marshal` renders the gogoproto
struct (proto field names, `omitempty` everywhere, oneofs as `{"Oneof":{"FieldName":...}}`),
`humanize_bytes` is go-humanize's `Bytes`, `duration` is `time.Duration.String`.
"""

from __future__ import annotations

import base64
import math
import re
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

__all__ = [
    "Raw",
    "duration",
    "go_list",
    "humanize_bytes",
    "jenc",
    "jstr",
    "pb_json",
    "quote",
]

_FD = FieldDescriptor

# -- %q ---------------------------------------------------------------------------------------

_Q_SIMPLE = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    '"': '\\"',
    "\\": "\\\\",
}
_Q_NEEDS = re.compile(r"[^ -!#-\[\]-~]")  # anything but printable ASCII minus " and \


def _q_char(m: re.Match[str]) -> str:
    c = m.group()
    if c in _Q_SIMPLE:
        return _Q_SIMPLE[c]
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # an invalid UTF-8 byte (surrogateescape)
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x80:
        return f"\\x{o:02x}"
    if c.isprintable():
        return c
    return f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def quote(b: bytes | str) -> str:
    """Go's strconv.Quote of a byte string."""
    s = b.decode("utf-8", "surrogateescape") if isinstance(b, bytes) else b
    return '"' + _Q_NEEDS.sub(_q_char, s) + '"'


def go_list(items: list[str]) -> str:
    """`fmt.Print` of a []string: `[a b c]`."""
    return "[" + " ".join(items) + "]"


# -- encoding/json -----------------------------------------------------------------------------

_J_MAP = {chr(i): f"\\u{i:04x}" for i in range(0x20)}
_J_MAP.update(
    {
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
        '"': '\\"',
        "\\": "\\\\",
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)
_J_NEEDS = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029]')


def jstr(s: str | bytes) -> str:
    if isinstance(s, bytes):
        s = s.decode("utf-8", "replace")  # Go replaces invalid UTF-8 with U+FFFD
    return '"' + _J_NEEDS.sub(lambda m: _J_MAP[m.group()], s) + '"'


class Raw(str):
    """Pre-encoded JSON."""


def jenc(v: Any) -> str:
    """Encode dicts (in order), lists, str, bytes (base64), ints, bools and None like Go."""
    if isinstance(v, Raw):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return jstr(v)
    if isinstance(v, bytes):
        return '"' + base64.b64encode(v).decode() + '"'
    if v is None:
        return "null"
    if isinstance(v, dict):
        return "{" + ",".join(jstr(k) + ":" + jenc(x) for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ",".join(jenc(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    raise TypeError(f"cannot encode {type(v).__name__}")


def _camel(name: str) -> str:
    # protoc-gen-go's CamelCase for the oneof wrapper field names.
    return "".join(p[:1].upper() + p[1:] for p in name.split("_"))


# Fields holding member / cluster / lease IDs: printed as hex strings with `-w json --hex`.
HEX_ID_FIELDS = frozenset(
    {"cluster_id", "member_id", "ID", "id", "leader", "memberID", "lease", "targetID"}
)


def _scalar(fd: FieldDescriptor, v: Any, hex_ids: bool) -> Any:
    if fd.type == _FD.TYPE_BYTES:
        return v
    if hex_ids and fd.name in HEX_ID_FIELDS and isinstance(v, int) and not isinstance(v, bool):
        return f"{v & 0xFFFFFFFFFFFFFFFF:x}"
    return v


def _repeated(fd: FieldDescriptor) -> bool:
    # protobuf >= 6 has is_repeated (label is gone in 7); older versions only label.
    r = getattr(fd, "is_repeated", None)
    return bool(r) if r is not None else fd.label == _FD.LABEL_REPEATED


def pb_json(msg: Any, hex_ids: bool = False) -> dict[str, Any]:
    """A protobuf message as the ordered dict Go's json.Marshal would produce."""
    out: dict[str, Any] = {}
    done_oneofs: set[str] = set()
    for fd in msg.DESCRIPTOR.fields:
        oneof = fd.containing_oneof
        if oneof is not None:
            if oneof.name in done_oneofs:
                continue
            done_oneofs.add(oneof.name)
            which = msg.WhichOneof(oneof.name)
            if which is None:
                out[_camel(oneof.name)] = None
                continue
            sub = msg.DESCRIPTOR.fields_by_name[which]
            val = getattr(msg, which)
            if sub.type == _FD.TYPE_MESSAGE:
                val = pb_json(val, hex_ids)
            else:
                val = _scalar(sub, val, hex_ids)
            out[_camel(oneof.name)] = {_camel(which): val}
            continue
        val = getattr(msg, fd.name)
        if _repeated(fd):
            if not len(val):
                continue
            if fd.type == _FD.TYPE_MESSAGE:
                out[fd.name] = [pb_json(x, hex_ids) for x in val]
            else:
                out[fd.name] = [_scalar(fd, x, hex_ids) for x in val]
        elif fd.type == _FD.TYPE_MESSAGE:
            if msg.HasField(fd.name):
                out[fd.name] = pb_json(val, hex_ids)
        elif val:
            out[fd.name] = _scalar(fd, val, hex_ids)
    return out


# -- go-humanize and time.Duration -------------------------------------------------------------

_SI = ("B", "kB", "MB", "GB", "TB", "PB", "EB")


def humanize_bytes(n: int) -> str:
    if n < 10:
        return f"{n} B"
    e = math.floor(math.log(n) / math.log(1000))
    val = math.floor(n / 1000**e * 10 + 0.5) / 10
    return f"{val:.0f} {_SI[e]}" if val >= 10 else f"{val:.1f} {_SI[e]}"


def _trim(x: float, prec: int) -> str:
    s = f"{x:.{prec}f}".rstrip("0").rstrip(".")
    return s or "0"


def duration(seconds: float) -> str:
    """Go's time.Duration.String() (to nanosecond precision)."""
    ns = int(round(seconds * 1e9))
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_trim(ns / 1e3, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_trim(ns / 1e6, 6)}ms"
    h, rem = divmod(ns, 3_600_000_000_000)
    m, rem = divmod(rem, 60_000_000_000)
    s = _trim(rem / 1e9, 9) + "s"
    if h:
        return f"{sign}{h}h{m}m{s}"
    if m:
        return f"{sign}{m}m{s}"
    return sign + s
