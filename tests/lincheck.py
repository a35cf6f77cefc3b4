"""A linearizability checker for single-key KV histories (Wing–Gong / porcupine).

A history is a list of ``Op``: put, get, delete and a single-key compare-and-set
(the Txn ``If(value == expect) Then(put new)``; ``expect=None`` means "the key
does not exist"). Ops on different keys commute, so the history is split by key
(P-compositionality) and each key is checked on its own.

Per key, the search walks a doubly linked list of call/return events in time
order. It may linearize any op whose call comes before the first remaining
return event (that return bounds how late the next linearization point can be:
the "earliest response" pruning). A dead end backtracks. States already seen,
(set of linearized ops, register value), are memoized.

An op whose outcome is unknown (``ret_t == UNKNOWN``: the client timed out or
its member crashed) may or may not have taken effect: its return event sits at
+inf, so the search never has to linearize it, and when it does, any result is
accepted. A get with an unknown result constrains nothing and is dropped.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

UNKNOWN = math.inf

PUT = "put"
GET = "get"
DELETE = "delete"
CAS = "cas"
KINDS = frozenset({PUT, GET, DELETE, CAS})


@dataclass(slots=True)
class Op:
    """One client operation.

    - put: ``arg`` = value; ``ret`` ignored.
    - get: ``ret`` = value or None (absent).
    - delete: ``ret`` = whether the key existed (bool), or None to not check it.
    - cas: ``arg`` = (expect, new), expect None = "must not exist"; ``ret`` = swapped (bool).

    ``call_t < ret_t``; ``ret_t = UNKNOWN`` for an op with an unknown outcome.
    Ties between one op's return and another's call count as concurrent.
    """

    client: int
    kind: str
    key: Hashable
    arg: Any = None
    ret: Any = None
    call_t: float = 0.0
    ret_t: float = UNKNOWN

    def __str__(self) -> str:
        if self.kind == PUT:
            s = f"put({self.arg!r})"
        elif self.kind == GET:
            s = f"get() -> {self.ret!r}" if self.ret_t != UNKNOWN else "get() -> ?"
        elif self.kind == DELETE:
            s = "delete()"
            if self.ret is not None and self.ret_t != UNKNOWN:
                s += f" -> {'existed' if self.ret else 'absent'}"
        else:
            exp, new = self.arg
            s = f"cas({exp!r} -> {new!r})"
            s += f" -> {self.ret!r}" if self.ret_t != UNKNOWN else " -> ?"
        end = "inf (unknown)" if self.ret_t == UNKNOWN else f"{self.ret_t:g}"
        return f"c{self.client} {s} [{self.call_t:g}, {end}]"


@dataclass(slots=True)
class Result:
    ok: bool
    bad_key: Hashable | None = None
    explanation: str = ""
    ops: list[Op] = field(default_factory=list)  # the ops the explanation is about

    def __bool__(self) -> bool:
        return self.ok


def _step(state: Any, op: Op, known: bool) -> tuple[bool, Any]:
    """The register model: (is ``op`` legal in ``state``, state after it)."""
    k = op.kind
    if k == PUT:
        return True, op.arg
    if k == GET:
        return state == op.ret, state
    if k == DELETE:
        if known and op.ret is not None and bool(op.ret) != (state is not None):
            return False, state
        return True, None
    exp, new = op.arg
    swapped = state == exp
    if known and bool(op.ret) != swapped:
        return False, state
    return True, (new if swapped else state)


class BudgetExceededError(Exception):
    """The search took more than ``max_steps`` steps (the answer is unknown)."""


def check_key(ops: list[Op], init: Any = None, max_steps: int | None = None) -> Result:
    """Check the single-key history ``ops`` (all on one key) against a register.

    Unknown-outcome ops sit in the event list at their call, with no return
    event; the search ends once every known op is linearized (the unknown
    ones left over did not take effect). Two rules keep them cheap without
    losing completeness (each only skips linearizations that an explored one
    can replace): an unknown op that would not change the state is never
    linearized (leaving it out is the same); and right after an unknown op,
    a blind write (put, unchecked delete) may not come next, since it would
    hide the unknown op's effect, so dropping that op is equivalent. Thus an
    unknown op only goes right before an op that observes it, which stops
    chains of lost writes from exploding into every subset.
    """
    ops = [o for o in ops if not (o.kind == GET and o.ret_t == UNKNOWN)]
    n = len(ops)
    if n == 0:
        return Result(True)
    for o in ops:
        if o.kind not in KINDS:
            raise ValueError(f"unknown op kind {o.kind!r}")
        if not o.call_t <= o.ret_t:
            raise ValueError(f"op returns before it is called: {o}")
    known = [o.ret_t != UNKNOWN for o in ops]
    # Ops that succeed and set the same state whatever the state before them.
    blind = [
        o.kind == PUT or (o.kind == DELETE and (not known[i] or o.ret is None))
        for i, o in enumerate(ops)
    ]
    # Events 1..m in a doubly linked list sorted by time, calls before returns
    # on ties (so touching intervals are concurrent); node 0 is the head and
    # the terminator. ev_op[e] = op index, ev_ret[e] = is a return.
    evs = sorted(
        [(o.call_t, 0, i) for i, o in enumerate(ops)]
        + [(o.ret_t, 1, i) for i, o in enumerate(ops) if known[i]]
    )
    m = len(evs)
    ev_op = [0] * (m + 1)
    ev_ret = [False] * (m + 1)
    pos_c = [0] * n
    pos_r = [0] * n
    for pos, (_t, is_ret, i) in enumerate(evs, 1):
        ev_op[pos] = i
        ev_ret[pos] = bool(is_ret)
        if is_ret:
            pos_r[i] = pos
        else:
            pos_c[i] = pos
    nxt = list(range(1, m + 2))
    nxt[m] = 0
    prv = list(range(-1, m))
    n_known = sum(known)

    state = init
    linearized = 0  # bitmask of linearized ops
    done_known = 0
    fresh = False  # the last linearized op was an unknown one
    stack: list[tuple[int, Any, bool]] = []  # (op index, state and fresh before it)
    seen: set[tuple[int, Any, bool]] = set()
    best_depth = -1
    best: tuple[list[int], Any, int, list[int]] | None = None
    steps = 0

    e = nxt[0]
    while done_known < n_known:
        steps += 1
        if max_steps is not None and steps > max_steps:
            raise BudgetExceededError(f"key {ops[0].key!r}: more than {max_steps} steps")
        # Known ops are pending, so a return event comes before the list's end.
        if not ev_ret[e]:
            i = ev_op[e]
            ki = known[i]
            ok, new_state = _step(state, ops[i], ki)
            if ok and (ki or new_state != state) and not (fresh and blind[i]):
                lin2 = linearized | (1 << i)
                # A node reached with fresh=False allows more than with True.
                if (lin2, new_state, False) not in seen and (
                    ki or (lin2, new_state, True) not in seen
                ):
                    seen.add((lin2, new_state, not ki))
                    stack.append((i, state, fresh))
                    state = new_state
                    fresh = not ki
                    linearized = lin2
                    done_known += ki
                    # Unlink the op's events (dancing links).
                    c = pos_c[i]
                    nxt[prv[c]] = nxt[c]
                    prv[nxt[c]] = prv[c]
                    if ki:
                        r = pos_r[i]
                        nxt[prv[r]] = nxt[r]
                        prv[nxt[r]] = prv[r]
                    e = nxt[0]
                    continue
            e = nxt[e]
            continue
        # A return event: nothing before it can be linearized next. Backtrack.
        if len(stack) > best_depth:
            best_depth = len(stack)
            cands = []
            p = nxt[0]
            while p != e:
                cands.append(ev_op[p])
                p = nxt[p]
            best = ([i for i, *_ in stack[-8:]], state, ev_op[e], cands)
        if not stack:
            return _explain(ops, best, best_depth)
        i, state, fresh = stack.pop()
        linearized &= ~(1 << i)
        c = pos_c[i]
        if known[i]:
            done_known -= 1
            r = pos_r[i]
            nxt[prv[r]] = r
            prv[nxt[r]] = r
        nxt[prv[c]] = c
        prv[nxt[c]] = c
        e = nxt[c]
    return Result(True)


def _explain(
    ops: list[Op], best: tuple[list[int], Any, int, list[int]] | None, depth: int
) -> Result:
    key = ops[0].key
    if best is None:
        return Result(False, key, f"key {key!r}: no linearization", list(ops))
    tail, state, stuck, cands = best
    lines = [f"key {key!r}: not linearizable."]
    lines.append(f"  The longest linearizable prefix has {depth} ops; its last ones:")
    lines += [f"    {ops[i]}" for i in tail] or ["    (none)"]
    lines.append(f"  leaving the value {state!r}. Then this op must take effect next,")
    lines.append(f"  but it cannot: {ops[stuck]}")
    others = [i for i in cands if i != stuck]
    if others:
        lines.append("  nor can any op concurrent with it:")
        lines += [f"    {ops[i]}" for i in others]
    involved = [ops[i] for i in tail] + [ops[stuck]] + [ops[i] for i in others]
    return Result(False, key, "\n".join(lines), involved)


def check(
    history: Iterable[Op], init: dict[Hashable, Any] | None = None, max_steps: int | None = None
) -> Result:
    """Check a whole history, key by key; the first failing key is reported.

    ``max_steps`` bounds the search per key (BudgetExceededError beyond it)."""
    by_key: dict[Hashable, list[Op]] = defaultdict(list)
    for o in history:
        by_key[o.key].append(o)
    init = init or {}
    for key, ops in by_key.items():
        r = check_key(ops, init.get(key), max_steps)
        if not r.ok:
            return r
    return Result(True)


class Recorder:
    """Builds a history with a logical clock that ticks at every call and return,
    so the real-time order of events within one simulated instant is kept."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.clock = 0

    def call(self, client: int, kind: str, key: Hashable, arg: Any = None) -> Op:
        self.clock += 1
        op = Op(client, kind, key, arg, None, float(self.clock), UNKNOWN)
        self.ops.append(op)
        return op

    def ret(self, op: Op, ret: Any = None) -> None:
        assert op.ret_t == UNKNOWN, f"op returned twice: {op}"
        self.clock += 1
        op.ret = ret
        op.ret_t = float(self.clock)

    def check(self) -> Result:
        return check(self.ops)
