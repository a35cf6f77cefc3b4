"""Structured logging in the shape of etcd 3.5's zap JSON lines.

    {"level":"info","ts":"2026-11-22T03:49:10.123Z","caller":"server/x.py:12","msg":"...","k":"v"}

A thin layer over stdlib logging: `get(name)` returns a Logger whose methods take a message
and keyword fields. Disabled levels cost one integer comparison, so debug calls may stay on
hot paths. `setup()` picks the level and the outputs (stderr, stdout, default, file paths).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

DEBUG, INFO, WARN, ERROR, FATAL = 10, 20, 30, 40, 50

_LEVELS = {
    "debug": DEBUG,
    "info": INFO,
    "warn": WARN,
    "warning": WARN,
    "error": ERROR,
    "dpanic": FATAL,
    "panic": FATAL,
    "fatal": FATAL,
}
_NAMES = {DEBUG: "debug", INFO: "info", WARN: "warn", ERROR: "error", FATAL: "fatal"}

_ROOT = "petcd"
_root = logging.getLogger(_ROOT)


class _State:
    level = INFO  # module-wide threshold checked before touching stdlib logging


_state = _State()


def _json_default(v: Any) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).decode("utf-8", "replace")
    if isinstance(v, set | frozenset | tuple):
        return list(v)
    if isinstance(v, BaseException):
        return str(v) or type(v).__name__
    return str(v)


_encode = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, default=_json_default, check_circular=False
).encode


class ZapFormatter(logging.Formatter):
    """Formats a record as one zap-style JSON object (UTC timestamps, millisecond precision)."""

    _sec = -1
    _prefix = ""

    def format(self, record: logging.LogRecord) -> str:
        created = record.created
        sec = int(created)
        if sec != self._sec:  # strftime once per second
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        ts = f"{self._prefix}.{int((created - sec) * 1000):03d}Z"
        path = record.pathname
        caller = f"{os.path.basename(os.path.dirname(path))}/{os.path.basename(path)}:{record.lineno}"
        out: dict[str, Any] = {
            "level": _NAMES.get(record.levelno) or record.levelname.lower(),
            "ts": ts,
            "caller": caller,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info and "error" not in out:
            out["error"] = str(record.exc_info[1])
        return _encode(out)


class _StreamHandler(logging.Handler):
    """Writes to sys.stderr/sys.stdout as they are at emit time (tests swap them)."""

    def __init__(self, which: str) -> None:
        super().__init__()
        self.which = which

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream: TextIO = sys.stdout if self.which == "stdout" else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


class Logger:
    """`log.info("msg", key=value, ...)`; fields become JSON keys after "msg"."""

    __slots__ = ("_l", "name")

    def __init__(self, logger: logging.Logger) -> None:
        self._l = logger
        self.name = logger.name

    def enabled(self, level: int) -> bool:
        return level >= _state.level

    def debug(self, msg: str, **fields: Any) -> None:
        if _state.level <= DEBUG:
            self._l.log(DEBUG, msg, extra={"fields": fields}, stacklevel=2)

    def info(self, msg: str, **fields: Any) -> None:
        if _state.level <= INFO:
            self._l.log(INFO, msg, extra={"fields": fields}, stacklevel=2)

    def warning(self, msg: str, **fields: Any) -> None:
        if _state.level <= WARN:
            self._l.log(WARN, msg, extra={"fields": fields}, stacklevel=2)

    warn = warning

    def error(self, msg: str, **fields: Any) -> None:
        if _state.level <= ERROR:
            self._l.log(ERROR, msg, extra={"fields": fields}, stacklevel=2)

    def fatal(self, msg: str, **fields: Any) -> None:
        """Logs at level "fatal"; unlike zap it does not exit (the caller decides)."""
        self._l.log(FATAL, msg, extra={"fields": fields}, stacklevel=2)

    def log(self, level: str | int, msg: str, **fields: Any) -> None:
        lvl = _LEVELS[level] if isinstance(level, str) else level
        if lvl >= _state.level:
            self._l.log(lvl, msg, extra={"fields": fields}, stacklevel=2)


_loggers: dict[str, Logger] = {}


def get(name: str) -> Logger:
    """The logger for a component, e.g. get("server") or get(__name__)."""
    lg = _loggers.get(name)
    if lg is None:
        full = name if name == _ROOT or name.startswith(_ROOT + ".") else f"{_ROOT}.{name}"
        lg = _loggers[name] = Logger(logging.getLogger(full))
    return lg


def level_number(level: str) -> int:
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f'unknown level "{level}"') from None


def setup(level: str = "info", outputs: Sequence[str] = ("stderr",)) -> None:
    """(Re)configure petcd logging. outputs: "stderr", "default" (= stderr), "stdout",
    "systemd/journal" (written to stderr) or file paths (appended); "/dev/null" discards."""
    lvl = level_number(level)
    for h in list(_root.handlers):
        _root.removeHandler(h)
        if isinstance(h, logging.FileHandler):
            h.close()
    fmt = ZapFormatter()
    targets = {"stderr" if o in ("default", "systemd/journal") else o for o in outputs} or {"stderr"}
    if "/dev/null" not in targets:
        for target in sorted(targets):
            handler: logging.Handler
            if target in ("stderr", "stdout"):
                handler = _StreamHandler(target)
            else:
                handler = logging.FileHandler(target, mode="a", encoding="utf-8", delay=False)
            handler.setFormatter(fmt)
            _root.addHandler(handler)
    else:
        _root.addHandler(logging.NullHandler())
        lvl = FATAL + 10  # nothing is written, so skip building records at all
    _root.setLevel(lvl)
    _state.level = lvl


def _default_setup() -> None:
    # Usable before setup() (tests, tools): info and above on stderr.
    if not _root.handlers:
        h = _StreamHandler("stderr")
        h.setFormatter(ZapFormatter())
        _root.addHandler(h)
        _root.setLevel(INFO)


_default_setup()
