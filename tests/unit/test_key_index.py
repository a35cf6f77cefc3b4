"""KeyIndex / TreeIndex: generations, reads at revisions, compaction (etcd key_index_test)."""

import pytest

from petcd.mvcc.key_index import KeyIndex, RevisionNotFound, TreeIndex, pack_rev


def R(main: int, sub: int = 0) -> int:
    return pack_rev(main, sub)


def revs(g) -> list[tuple[int, int]]:
    return [(r >> 32, r & 0xFFFFFFFF) for r in g.revs]


def book_example() -> KeyIndex:
    ki = KeyIndex(b"foo")
    ki.put(R(1))
    ki.put(R(2))
    ki.tombstone(R(3))
    ki.put(R(4))
    ki.tombstone(R(5))
    return ki


def etcd_test_index() -> KeyIndex:
    # etcd's newTestKeyIndex: put 2,4, tomb 6, put 8,10, tomb 12, put 14, 15.1, tomb 16
    ki = KeyIndex(b"foo")
    ki.put(R(2))
    ki.put(R(4))
    ki.tombstone(R(6))
    ki.put(R(8))
    ki.put(R(10))
    ki.tombstone(R(12))
    ki.put(R(14))
    ki.put(R(15, 1))
    ki.tombstone(R(16))
    return ki


def test_generations_shape():
    ki = book_example()
    assert ki.modified == R(5)
    assert len(ki.generations) == 3
    g0, g1, g2 = ki.generations
    assert (g0.created, g0.ver, revs(g0)) == (R(1), 3, [(1, 0), (2, 0), (3, 0)])
    assert (g1.created, g1.ver, revs(g1)) == (R(4), 2, [(4, 0), (5, 0)])
    assert g2.revs == []
    assert not ki.is_live()


@pytest.mark.parametrize(
    "at,want",
    [
        (0, None),
        (1, (R(1), R(1), 1)),
        (2, (R(2), R(1), 2)),
        (3, None),
        (4, (R(4), R(4), 1)),
        (5, None),
        (6, None),
    ],
)
def test_get_book_example(at, want):
    ki = book_example()
    assert ki.get(at) == want
    assert ki.get_rev(at) == (want[0] if want else None)


def test_get_etcd_cases():
    ki = etcd_test_index()
    cases = {
        0: None, 1: None, 2: (R(2), R(2), 1), 3: (R(2), R(2), 1), 4: (R(4), R(2), 2),
        5: (R(4), R(2), 2), 6: None, 7: None, 8: (R(8), R(8), 1), 9: (R(8), R(8), 1),
        10: (R(10), R(8), 2), 11: (R(10), R(8), 2), 12: None, 13: None,
        14: (R(14), R(14), 1), 15: (R(15, 1), R(14), 2), 16: None, 17: None,
    }  # fmt: skip
    for at, want in cases.items():
        assert ki.get(at) == want, at


def test_put_requires_increasing_revision_and_tombstone_needs_live_key():
    ki = KeyIndex(b"k")
    ki.put(R(5))
    with pytest.raises(ValueError):
        ki.put(R(5))
    ki.tombstone(R(6))
    with pytest.raises(RevisionNotFound):
        ki.tombstone(R(7))


def test_version_survives_compaction():
    ki = KeyIndex(b"k")
    for m in range(2, 7):
        ki.put(R(m))
    avail: set[int] = set()
    ki.compact(4, avail)
    assert avail == {R(4)}
    assert revs(ki.generations[0]) == [(4, 0), (5, 0), (6, 0)]
    assert ki.get(6) == (R(6), R(2), 5)
    assert ki.get(4) == (R(4), R(2), 3)


def test_since():
    ki = etcd_test_index()
    assert ki.since(1) == [R(2), R(4), R(6), R(8), R(10), R(12), R(14), R(15, 1), R(16)]
    assert ki.since(12) == [R(12), R(14), R(15, 1), R(16)]
    assert ki.since(17) == []
    # Only the highest sub of one main revision.
    k2 = KeyIndex(b"x")
    k2.put(R(3, 0))
    k2.put(R(3, 2))
    k2.put(R(4, 0))
    assert k2.since(3) == [R(3, 2), R(4)]


def test_compact_book_example_keeps_tombstone_at_compact_rev():
    def after(at: int):
        ki = book_example()
        avail: set[int] = set()
        ki.compact(at, avail)
        return [revs(g) for g in ki.generations], avail, ki.is_empty()

    assert after(2) == ([[(2, 0), (3, 0)], [(4, 0), (5, 0)], []], {R(2)}, False)
    assert after(4) == ([[(4, 0), (5, 0)], []], {R(4)}, False)
    # etcd >= 3.5.20: the tombstone AT the compact revision stays.
    assert after(5) == ([[(5, 0)], []], {R(5)}, False)
    assert after(6) == ([[]], set(), True)


def test_compact_and_keep_etcd_table():
    # (compact rev, remaining generations as lists of main revs, available set)
    table = [
        (1, [[2, 4, 6], [8, 10, 12], [14, 15, 16], []], set()),
        (2, [[2, 4, 6], [8, 10, 12], [14, 15, 16], []], {R(2)}),
        (3, [[2, 4, 6], [8, 10, 12], [14, 15, 16], []], {R(2)}),
        (4, [[4, 6], [8, 10, 12], [14, 15, 16], []], {R(4)}),
        (5, [[4, 6], [8, 10, 12], [14, 15, 16], []], {R(4)}),
        (6, [[6], [8, 10, 12], [14, 15, 16], []], {R(6)}),
        (7, [[8, 10, 12], [14, 15, 16], []], set()),
        (8, [[8, 10, 12], [14, 15, 16], []], {R(8)}),
        (10, [[10, 12], [14, 15, 16], []], {R(10)}),
        (12, [[12], [14, 15, 16], []], {R(12)}),
        (13, [[14, 15, 16], []], set()),
        (15, [[15, 16], []], {R(15, 1)}),
        (16, [[16], []], {R(16)}),
        (17, [[]], set()),
    ]
    for at, gens, avail in table:
        # compacting a fresh index and compacting incrementally must agree
        ki = etcd_test_index()
        got: set[int] = set()
        ki.compact(at, got)
        assert [[r >> 32 for r in g.revs] for g in ki.generations] == gens, at
        assert got == avail, at
        # keep(): same set, minus a tombstone exactly at the compact revision
        kept: set[int] = set()
        etcd_test_index().keep(at, kept)
        want_keep = avail - {R(6), R(12), R(16)} if at in (6, 12, 16) else avail
        assert kept == want_keep, at

    ki = etcd_test_index()
    for at, gens, avail in table:
        got = set()
        ki.compact(at, got)
        assert [[r >> 32 for r in g.revs] for g in ki.generations] == gens, at
        assert got == avail, at


def test_restore_and_restore_tombstone():
    ki = KeyIndex(b"k")
    ki.restore(R(3), R(7), 4)
    assert ki.get(7) == (R(7), R(3), 4)
    ki.put(R(8))
    assert ki.get(8) == (R(8), R(3), 5)
    kt = KeyIndex(b"t")
    kt.restore_tombstone(R(9))
    assert kt.get(9) is None and not kt.is_live()
    kt.put(R(10))
    assert kt.get(10) == (R(10), R(10), 1)


def test_tree_index_ranges_and_compaction():
    ti = TreeIndex()
    ti.put(b"a", R(2))
    ti.put(b"b", R(3))
    ti.put(b"c", R(4))
    ti.tombstone(b"b", R(5))
    ti.put(b"d", R(6))
    assert ti.revisions(b"a", b"\x00", 6) == ([R(2), R(4), R(6)], 3)
    assert ti.revisions(b"a", b"\x00", 4) == ([R(2), R(3), R(4)], 3)
    assert ti.revisions(b"a", b"\x00", 6, limit=2) == ([R(2), R(4)], 3)
    assert ti.revisions(b"b", b"d", 6) == ([R(4)], 1)
    assert ti.revisions(b"b", b"", 4) == ([R(3)], 1)
    assert ti.revisions(b"b", b"", 5) == ([], 0)
    assert ti.revisions(b"d", b"a", 6) == ([], 0)  # key >= end: empty
    assert ti.count_revisions(b"\x00", b"\x00", 6) == 3
    assert ti.range(b"a", b"c", 6) == ([b"a"], [R(2)])
    keep = ti.compact(6)
    assert keep == {R(2), R(4), R(6)}
    assert b"b" not in ti.map and list(ti.keys) == [b"a", b"c", b"d"]
    assert ti.keep(6) == {R(2), R(4), R(6)}


def test_latest_counts_track_deletes_recreates_and_compaction():
    import random

    rnd = random.Random(7)
    ti = TreeIndex()
    main = 1
    keys = [b"k%02d" % i for i in range(40)]
    for step in range(600):
        main += 1
        k = rnd.choice(keys)
        ki = ti.key_index(k)
        if ki is not None and ki.is_live() and rnd.random() < 0.4:
            ti.tombstone(k, R(main))
        else:
            ti.put(k, R(main))
        if step % 97 == 0:
            ti.compact(main - 5)
        for lo, hi in ((b"k05", b"k20"), (b"k", b"\x00"), (b"k10", b""), (b"k30", b"k10")):
            brute = ti.count_revisions(lo, hi, main)
            assert ti.count_latest(lo, hi) == brute
            full, total = ti.revisions(lo, hi, main)
            assert total == brute
            assert ti.revisions(lo, hi, main, limit=3, latest=True) == (full[:3], total)
    assert list(ti.dead) == sorted(k for k, ki in ti.map.items() if not ki.is_live())
