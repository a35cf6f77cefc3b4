"""The linearizability checker on hand-built histories."""

from __future__ import annotations

import random
import time

import pytest

from tests.lincheck import CAS, DELETE, GET, PUT, UNKNOWN, Op, Recorder, check, check_key


def op(client, kind, arg=None, ret=None, call=0, end=UNKNOWN, key="k") -> Op:
    return Op(client, kind, key, arg, ret, call, end)


# -- linearizable --------------------------------------------------------------


def test_empty_and_sequential() -> None:
    assert check([]).ok
    h = [
        op(1, GET, ret=None, call=0, end=1),
        op(1, PUT, "a", call=2, end=3),
        op(1, GET, ret="a", call=4, end=5),
        op(1, CAS, ("a", "b"), True, call=6, end=7),
        op(1, CAS, ("a", "c"), False, call=8, end=9),
        op(1, DELETE, ret=True, call=10, end=11),
        op(1, DELETE, ret=False, call=12, end=13),
        op(1, CAS, (None, "d"), True, call=14, end=15),
        op(1, GET, ret="d", call=16, end=17),
    ]
    assert check(h).ok


def test_concurrent_reads_may_see_either_side_of_a_write() -> None:
    h = [
        op(1, PUT, "a", call=0, end=1),
        op(2, PUT, "b", call=2, end=10),
        op(3, GET, ret="b", call=3, end=4),  # the write took effect early...
        op(4, GET, ret="b", call=5, end=6),
        op(5, GET, ret="b", call=7, end=12),
    ]
    assert check(h).ok
    h2 = [
        op(1, PUT, "a", call=0, end=1),
        op(2, PUT, "b", call=2, end=10),
        op(3, GET, ret="a", call=3, end=4),  # ... or late
        op(4, GET, ret="b", call=5, end=6),
    ]
    assert check(h2).ok


def test_concurrent_writes_in_any_order() -> None:
    h = [
        op(1, PUT, "a", call=0, end=5),
        op(2, PUT, "b", call=1, end=6),
        op(3, GET, ret="a", call=7, end=8),
    ]
    assert check(h).ok  # b then a
    h[2] = op(3, GET, ret="b", call=7, end=8)
    assert check(h).ok  # a then b


def test_touching_intervals_count_as_concurrent() -> None:
    h = [op(1, PUT, "a", call=0, end=5), op(2, GET, ret=None, call=5, end=6)]
    assert check(h).ok


def test_unknown_outcome_that_took_effect() -> None:
    h = [
        op(1, PUT, "a", call=0, end=1),
        op(2, PUT, "b", call=2),  # timed out
        op(3, GET, ret="b", call=20, end=21),
        op(3, GET, ret="b", call=22, end=23),
    ]
    assert check(h).ok


def test_unknown_outcome_that_did_not_take_effect() -> None:
    h = [
        op(1, PUT, "a", call=0, end=1),
        op(2, PUT, "b", call=2),
        op(2, CAS, ("a", "c"), call=3),
        op(3, GET, ret="a", call=20, end=21),
    ]
    assert check(h).ok


def test_unknown_cas_takes_effect_only_from_its_expected_value() -> None:
    h = [
        op(1, PUT, "a", call=0, end=1),
        op(2, CAS, ("zzz", "c"), call=2),  # could only swap from "zzz"
        op(3, GET, ret="c", call=20, end=21),
    ]
    assert not check(h).ok
    h[1] = op(2, CAS, ("a", "c"), call=2)
    assert check(h).ok


def test_unknown_get_is_ignored() -> None:
    h = [op(1, PUT, "a", call=0, end=1), op(2, GET, ret="nonsense", call=2)]
    assert check(h).ok


def test_keys_are_independent() -> None:
    h = [
        op(1, PUT, "a", call=0, end=1, key="x"),
        op(1, PUT, "b", call=2, end=3, key="y"),
        op(2, GET, ret="a", call=4, end=5, key="x"),
        op(2, GET, ret=None, call=6, end=7, key="z"),
    ]
    assert check(h).ok


def test_initial_state() -> None:
    h = [op(1, GET, ret="init", call=0, end=1)]
    assert not check(h).ok
    assert check(h, init={"k": "init"}).ok


# -- not linearizable -------------------------------------------------------------


def test_stale_read_after_completed_write() -> None:
    h = [
        op(1, PUT, "a", call=0, end=1),
        op(1, PUT, "b", call=2, end=3),
        op(2, GET, ret="a", call=4, end=5),
    ]
    r = check(h)
    assert not r.ok and r.bad_key == "k"
    assert "get() -> 'a'" in r.explanation and "'b'" in r.explanation
    assert h[2] in r.ops


def test_lost_acknowledged_write() -> None:
    h = [
        op(1, PUT, "a", call=0, end=1),
        op(2, PUT, "b", call=2, end=3),  # acknowledged ...
        op(3, GET, ret="a", call=10, end=11),  # ... and gone
        op(3, GET, ret="a", call=12, end=13),
    ]
    assert not check(h).ok


def test_read_then_older_read() -> None:
    """Reads of a slow write must not flip back: b seen, then a again."""
    h = [
        op(1, PUT, "a", call=0, end=1),
        op(2, PUT, "b", call=2, end=100),
        op(3, GET, ret="b", call=3, end=4),
        op(4, GET, ret="a", call=5, end=6),
    ]
    r = check(h)
    assert not r.ok
    assert "get() -> 'a'" in r.explanation


def test_two_successful_cas_from_the_same_value() -> None:
    h = [
        op(1, PUT, "a", call=0, end=1),
        op(2, CAS, ("a", "b"), True, call=2, end=6),
        op(3, CAS, ("a", "c"), True, call=3, end=7),
    ]
    r = check(h)
    assert not r.ok
    assert "cas" in r.explanation


def test_failed_cas_that_should_have_succeeded() -> None:
    h = [op(1, PUT, "a", call=0, end=1), op(2, CAS, ("a", "b"), False, call=2, end=3)]
    assert not check(h).ok


def test_delete_result_is_checked() -> None:
    h = [op(1, PUT, "a", call=0, end=1), op(2, DELETE, ret=False, call=2, end=3)]
    assert not check(h).ok
    h[1] = op(2, DELETE, ret=None, call=2, end=3)
    assert check(h).ok


def test_failure_reports_the_bad_key_only() -> None:
    h = [
        op(1, PUT, "a", call=0, end=1, key="good"),
        op(1, GET, ret="a", call=2, end=3, key="good"),
        op(1, PUT, "a", call=0, end=1, key="bad"),
        op(1, GET, ret="x", call=2, end=3, key="bad"),
    ]
    r = check(h)
    assert not r.ok and r.bad_key == "bad"
    assert all(o.key == "bad" for o in r.ops)


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        check([op(1, "incr", call=0, end=1)])
    with pytest.raises(ValueError):
        check([op(1, PUT, "a", call=5, end=1)])


# -- scale -------------------------------------------------------------------------


def _random_linearizable(rng: random.Random, n: int, clients: int, p_unknown: float) -> list[Op]:
    """Simulate a register with ``clients`` concurrent clients: each op takes
    effect at a random instant inside its interval."""
    rec = Recorder()
    value = None
    pending: dict[int, tuple[Op, int]] = {}  # client -> (op, remaining steps before effect)
    made = 0
    vals: list = [None]
    while made < n or pending:
        c = rng.randrange(clients)
        if c not in pending:
            if made >= n:
                continue
            made += 1
            kind = rng.choice([PUT, GET, GET, CAS, DELETE])
            if kind == PUT:
                arg = f"v{made}"
            elif kind == CAS:
                arg = (rng.choice(vals[-3:]), f"v{made}")
            else:
                arg = None
            pending[c] = (rec.call(c, kind, "k", arg), rng.randrange(3))
            continue
        o, wait = pending[c]
        if wait:
            pending[c] = (o, wait - 1)
            continue
        del pending[c]
        if o.kind == PUT:
            value, ret = o.arg, None
        elif o.kind == GET:
            ret = value
        elif o.kind == DELETE:
            ret, value = value is not None, None
        else:
            ret = value == o.arg[0]
            if ret:
                value = o.arg[1]
        vals.append(value)
        if rng.random() < p_unknown:
            continue  # the client never hears back
        rec.ret(o, ret)
    return rec.ops


def test_random_linearizable_histories_pass() -> None:
    rng = random.Random(5)
    for _ in range(40):
        h = _random_linearizable(rng, 60, rng.randint(1, 5), rng.choice([0.0, 0.1]))
        r = check(h)
        assert r.ok, r.explanation


def test_a_mutated_history_fails_with_the_culprit() -> None:
    rng = random.Random(9)
    h = _random_linearizable(rng, 400, 3, 0.0)
    # Make a late read return a value overwritten long before.
    gets = [o for o in h if o.kind == GET and o.call_t > h[200].ret_t]
    puts = [o for o in h if o.kind == PUT and o.ret_t < h[50].call_t]
    g = gets[-1]
    g.ret = puts[0].arg
    r = check(h)
    assert not r.ok
    assert g in r.ops


def test_thousands_of_ops_per_key_are_fast() -> None:
    rng = random.Random(1)
    h = _random_linearizable(rng, 4000, 4, 0.02)
    t = time.perf_counter()
    r = check_key(h)
    dt = time.perf_counter() - t
    assert r.ok, r.explanation
    assert dt < 1.0, dt


def test_many_lost_writes_are_cheap() -> None:
    """Unknown writes that never took effect must not blow up the search (a
    long outage leaves dozens of them on one key)."""
    h = [op(0, PUT, "a", call=0, end=1)]
    h += [op(i, PUT, f"lost{i}", call=2 + i) for i in range(1, 60)]
    h += [op(i, CAS, ("zz", f"c{i}"), call=2 + i) for i in range(60, 80)]
    h += [op(99, GET, ret="a", call=200 + 2 * i, end=201 + 2 * i) for i in range(30)]
    t = time.perf_counter()
    assert check(h, max_steps=200_000).ok
    h.append(op(98, GET, ret="lost7", call=300, end=301))  # one of them did happen
    assert check(h, max_steps=200_000).ok
    h.append(op(98, GET, ret="a", call=302, end=303))  # and then it was undone?
    assert not check(h, max_steps=200_000).ok
    assert time.perf_counter() - t < 1.0
