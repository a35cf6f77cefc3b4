"""KV request semantics: Range fields, Put/DeleteRange flags, Txn, validation, Compact."""

import itertools

import pytest

from petcd.backend import Backend
from petcd.errors import (
    ErrCompacted,
    ErrDuplicateKey,
    ErrEmptyKey,
    ErrFutureRev,
    ErrKeyNotFound,
    ErrLeaseNotFound,
    ErrLeaseProvided,
    ErrTooManyOps,
    ErrValueProvided,
)
from petcd.mvcc import KVStore
from petcd.proto.etcdserverpb import rpc_pb2 as pb
from petcd.proto.mvccpb.kv_pb2 import KeyValue
from petcd.server.apply_kv import (
    KVApplier,
    check_delete_request,
    check_put_request,
    check_range_request,
    check_txn_request,
    is_txn_readonly,
)

Cmp = pb.Compare


@pytest.fixture
def ap(tmp_path):
    kv = KVStore(Backend(str(tmp_path / "db"), map_size=64 << 20))
    a = KVApplier(kv, lease_exists=lambda i: i in (5, 6))
    yield a
    kv.backend.close()


def put(ap, k, v=b"x", **kw):
    return ap.put(pb.PutRequest(key=k, value=v, **kw))


def rng(k, e=b"", **kw):
    return pb.RequestOp(request_range=pb.RangeRequest(key=k, range_end=e, **kw))


def oput(k, v=b"x", **kw):
    return pb.RequestOp(request_put=pb.PutRequest(key=k, value=v, **kw))


def odel(k, e=b"", **kw):
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k, range_end=e, **kw))


def otxn(s=(), f=(), c=()):
    return pb.RequestOp(
        request_txn=pb.TxnRequest(compare=list(c), success=list(s), failure=list(f))
    )


def txn(s=(), f=(), c=()):
    return pb.TxnRequest(compare=list(c), success=list(s), failure=list(f))


HEADER = b"\x0a\x04\x18\x63\x20\x02"  # field 1: ResponseHeader{revision: 99, raft_term: 2}


def reference_range(ap, req):
    """etcd's applierV3backend.Range, written plainly over fully parsed KeyValues."""
    all_kvs = [
        KeyValue.FromString(b) for b in ap.kv.range(req.key, req.range_end, rev=req.revision).kvs
    ]
    count = len(all_kvs)
    if req.count_only:
        return [], False, count
    kvs = [
        kv
        for kv in all_kvs
        if not (req.max_mod_revision and kv.mod_revision > req.max_mod_revision)
        and not (req.min_mod_revision and kv.mod_revision < req.min_mod_revision)
        and not (req.max_create_revision and kv.create_revision > req.max_create_revision)
        and not (req.min_create_revision and kv.create_revision < req.min_create_revision)
    ]
    order = req.sort_order
    if order == 0 and req.sort_target != 0:
        order = 1
    field = ["key", "version", "create_revision", "mod_revision", "value"][req.sort_target]
    if order:
        kvs.sort(key=lambda kv: getattr(kv, field), reverse=order == 2)
    more = bool(req.limit) and len(kvs) > req.limit
    if req.limit:
        kvs = kvs[: req.limit]
    if req.keys_only:
        for kv in kvs:
            kv.value = b""
    return kvs, more, count


def load_dataset(ap):
    # varied versions, create and mod revisions, values not in key order
    put(ap, b"a", b"3")  # 2
    put(ap, b"b", b"1")  # 3
    put(ap, b"c", b"2")  # 4
    put(ap, b"a", b"9")  # 5
    put(ap, b"d", b"0")  # 6
    put(ap, b"b", b"5")  # 7
    put(ap, b"b", b"4")  # 8
    put(ap, b"e", b"7")  # 9
    ap.delete_range(pb.DeleteRangeRequest(key=b"c"))  # 10
    put(ap, b"c", b"8")  # 11
    put(ap, b"f", b"5")  # 12


def test_range_every_field_combination(ap):
    load_dataset(ap)
    n = 0
    for (key, end), order, target, limit, keys_only, count_only, flt, rev in itertools.product(
        [(b"a", b"\x00"), (b"b", b"e"), (b"c", b""), (b"\x00", b"\x00"), (b"x", b"y")],
        [0, 1, 2],
        [0, 1, 2, 3, 4],
        [0, 1, 2, 10],
        [False, True],
        [False, True],
        [{}, {"min_mod_revision": 5}, {"max_create_revision": 6, "min_create_revision": 3},
         {"max_mod_revision": 8}],
        [0, 9],
    ):  # fmt: skip
        req = pb.RangeRequest(
            key=key, range_end=end, sort_order=order, sort_target=target, limit=limit,
            keys_only=keys_only, count_only=count_only, revision=rev, **flt,
        )  # fmt: skip
        resp = ap.range(req)
        kvs, more, count = reference_range(ap, req)
        assert (list(resp.kvs), resp.more, resp.count) == (kvs, more, count), req
        assert not resp.HasField("header")
        enc = ap.range_encoded(req, HEADER)
        want = pb.RangeResponse.FromString(HEADER + resp.SerializeToString())
        assert pb.RangeResponse.FromString(enc) == want
        assert enc == HEADER + resp.SerializeToString()  # canonical bytes too
        n += 1
    assert n == 9600


def test_range_known_answers(ap):
    load_dataset(ap)
    r = ap.range(pb.RangeRequest(key=b"a", range_end=b"\x00", limit=2))
    assert [kv.key for kv in r.kvs] == [b"a", b"b"] and r.more and r.count == 6
    r = ap.range(pb.RangeRequest(key=b"a", range_end=b"\x00", limit=1, sort_order=2))
    assert [kv.key for kv in r.kvs] == [b"f"] and r.more and r.count == 6
    # NONE order with a non-key target means ASCEND; ties keep key order
    r = ap.range(pb.RangeRequest(key=b"a", range_end=b"\x00", sort_target=pb.RangeRequest.VALUE))
    assert [kv.value for kv in r.kvs] == [b"0", b"4", b"5", b"7", b"8", b"9"]
    r = ap.range(pb.RangeRequest(key=b"a", range_end=b"\x00", sort_target=1, sort_order=2))
    assert [(kv.key, kv.version) for kv in r.kvs][:3] == [(b"b", 3), (b"a", 2), (b"c", 1)]
    # count is the number of keys in the range before filtering
    r = ap.range(pb.RangeRequest(key=b"a", range_end=b"\x00", min_create_revision=9, limit=1))
    assert [kv.key for kv in r.kvs] == [b"c"] and r.more and r.count == 6
    r = ap.range(pb.RangeRequest(key=b"a", range_end=b"\x00", count_only=True, limit=1))
    assert list(r.kvs) == [] and not r.more and r.count == 6
    r = ap.range(pb.RangeRequest(key=b"c", revision=9))
    assert [(kv.value, kv.create_revision) for kv in r.kvs] == [(b"2", 4)]
    assert list(ap.range(pb.RangeRequest(key=b"c", revision=10)).kvs) == []
    r = ap.range(pb.RangeRequest(key=b"a", keys_only=True))
    assert r.kvs[0].value == b"" and r.kvs[0].version == 2
    with pytest.raises(ErrFutureRev):
        ap.range(pb.RangeRequest(key=b"a", revision=13))
    assert ap.range_encoded(pb.RangeRequest(key=b"zz"), HEADER) == HEADER


def test_put_flags(ap):
    assert put(ap, b"k", b"v1", prev_kv=True) == pb.PutResponse()
    r = put(ap, b"k", b"v2", prev_kv=True, lease=5)
    assert r.prev_kv.value == b"v1" and r.prev_kv.mod_revision == 2
    r = put(ap, b"k", ignore_value=True, v=b"")
    kv = ap.range(pb.RangeRequest(key=b"k")).kvs[0]
    assert (kv.value, kv.lease, kv.version) == (b"v2", 0, 3)  # lease 0 replaces lease 5
    put(ap, b"k", b"v3", lease=6)
    put(ap, b"k", b"v4", ignore_lease=True)
    kv = ap.range(pb.RangeRequest(key=b"k")).kvs[0]
    assert (kv.value, kv.lease) == (b"v4", 6)
    rev = ap.kv.rev
    with pytest.raises(ErrKeyNotFound):
        put(ap, b"missing", b"", ignore_value=True)
    with pytest.raises(ErrKeyNotFound):
        put(ap, b"missing", b"v", ignore_lease=True)
    with pytest.raises(ErrLeaseNotFound):
        put(ap, b"k", b"v", lease=77)
    assert ap.kv.rev == rev  # failed puts change nothing


def test_delete_range_flags(ap):
    for k in (b"foo", b"foo1", b"foo3", b"zoo", b"zoo1", b"zoo2", b"a", b"b", b"z"):
        put(ap, k, b"val")
    d = lambda k, e=b"", p=False: ap.delete_range(  # noqa: E731
        pb.DeleteRangeRequest(key=k, range_end=e, prev_kv=p)
    )
    assert d(b"foo").deleted == 1
    assert d(b"foo", b"foo9").deleted == 2
    r = d(b"zoo", p=True)
    assert r.deleted == 1 and [(kv.key, kv.value) for kv in r.prev_kvs] == [(b"zoo", b"val")]
    assert d(b"zoo", b"zop").deleted == 2
    rev = ap.kv.rev
    assert d(b"b", b"\x00").deleted == 2  # b and z
    assert ap.kv.rev == rev + 1
    assert d(b"nothing").deleted == 0 and ap.kv.rev == rev + 1


def test_txn_compares_on_missing_keys(ap):
    put(ap, b"here", b"v", lease=5)
    cases = [
        (Cmp(key=b"nope", target=Cmp.CREATE, result=Cmp.EQUAL, create_revision=0), True),
        (Cmp(key=b"nope", target=Cmp.VERSION, result=Cmp.GREATER, version=0), False),
        (Cmp(key=b"nope", target=Cmp.MOD, result=Cmp.LESS, mod_revision=5), True),
        (Cmp(key=b"nope", target=Cmp.LEASE, result=Cmp.EQUAL, lease=0), True),
        (Cmp(key=b"nope", target=Cmp.VALUE, result=Cmp.NOT_EQUAL, value=b"x"), False),
        (Cmp(key=b"nope", target=Cmp.VALUE, result=Cmp.EQUAL), False),
        (Cmp(key=b"here", target=Cmp.VALUE, result=Cmp.EQUAL, value=b"v"), True),
        (Cmp(key=b"here", target=Cmp.VALUE, result=Cmp.GREATER, value=b"u"), True),
        (Cmp(key=b"here", target=Cmp.LEASE, result=Cmp.EQUAL, lease=5), True),
        (Cmp(key=b"here", target=Cmp.VERSION, result=Cmp.NOT_EQUAL, version=1), False),
        (Cmp(key=b"here", target=Cmp.MOD, result=Cmp.EQUAL, mod_revision=2), True),
        # target_union set to another field: compares against 0
        (Cmp(key=b"here", target=Cmp.MOD, result=Cmp.GREATER, version=100), True),
    ]
    for c, want in cases:
        r = ap.txn(txn(c=[c], s=[rng(b"here")], f=[]))
        assert r.succeeded is want, c
    # a conjunction, evaluated before the branch
    r = ap.txn(txn(c=[cases[0][0], cases[1][0]], s=[oput(b"s")], f=[oput(b"f")]))
    assert not r.succeeded and ap.range(pb.RangeRequest(key=b"f")).count == 1


def test_txn_range_compares(ap):
    for i in range(3):
        put(ap, b"r%d" % i, b"v")
    all_v1 = Cmp(key=b"r", range_end=b"s", target=Cmp.VERSION, result=Cmp.EQUAL, version=1)
    assert ap.txn(txn(c=[all_v1])).succeeded
    put(ap, b"r1", b"v")
    assert not ap.txn(txn(c=[all_v1])).succeeded
    from_key = Cmp(key=b"r", range_end=b"\x00", target=Cmp.VALUE, result=Cmp.EQUAL, value=b"v")
    assert ap.txn(txn(c=[from_key])).succeeded
    put(ap, b"zzz", b"other")
    assert not ap.txn(txn(c=[from_key])).succeeded


def test_txn_one_revision_and_reads_see_earlier_writes(ap):
    put(ap, b"a", b"1")  # rev 2
    r = ap.txn(txn(s=[oput(b"k1", b"v1"), rng(b"k", b"l"), oput(b"k2", b"v2"), odel(b"a"),
                      rng(b"\x00", b"\x00", count_only=True)]))  # fmt: skip
    assert r.succeeded and ap.kv.rev == 3
    assert [kv.key for kv in r.responses[1].response_range.kvs] == [b"k1"]
    assert r.responses[1].response_range.header.revision == 3
    assert r.responses[4].response_range.count == 2
    for k in (b"k1", b"k2"):
        assert ap.range(pb.RangeRequest(key=k)).kvs[0].mod_revision == 3
    # read-only txn: no new revision
    ap.txn(txn(s=[rng(b"k1")]))
    assert ap.kv.rev == 3


def test_txn_wire_identical_to_etcd(ap):
    # Expected bytes captured from etcd 3.4.23 (response without the top-level header).
    put(ap, b"a", b"1")
    put(ap, b"b", b"2")
    r = ap.txn(txn(s=[odel(b"a", b"\x00"), oput(b"b")]))
    assert r.SerializeToString().hex() == "10011a081a060a02180410021a0612040a021804"
    r = ap.txn(txn(s=[otxn(s=[oput(b"z")], f=[oput(b"z")])]))
    assert r.SerializeToString().hex() == "10011a0e220c0a0010011a0612040a021805"
    r = ap.txn(txn(s=[rng(b"a"), oput(b"q"), otxn(s=[rng(b"q")]), odel(b"nothing")]))
    assert r.SerializeToString().hex() == (
        "1001"
        "1a060a040a021805"
        "1a0612040a021806"
        "1a1e221c0a0010011a160a140a021806120c0a01711006180620012a01782001"
        "1a061a040a021806"
    )


def test_nested_txn_paths(ap):
    put(ap, b"x", b"1")
    inner_true = Cmp(key=b"x", target=Cmp.VALUE, result=Cmp.EQUAL, value=b"1")
    inner_false = Cmp(key=b"x", target=Cmp.VALUE, result=Cmp.EQUAL, value=b"2")
    r = ap.txn(
        txn(
            c=[inner_true],
            s=[
                otxn(c=[inner_false], s=[oput(b"n1s")], f=[oput(b"n1f"), otxn(c=[inner_true], s=[oput(b"deep")])]),
                otxn(c=[inner_true], s=[oput(b"n2s")], f=[oput(b"n2f")]),
                oput(b"x", b"3"),
            ],
        )
    )  # fmt: skip
    assert r.succeeded
    n1, n2, _ = r.responses
    assert not n1.response_txn.succeeded and n1.response_txn.responses[1].response_txn.succeeded
    assert n2.response_txn.succeeded
    keys = [kv.key for kv in ap.range(pb.RangeRequest(key=b"\x00", range_end=b"\x00")).kvs]
    assert keys == [b"deep", b"n1f", b"n2s", b"x"]
    # compares all ran against the state before the txn: x was still 1
    assert ap.range(pb.RangeRequest(key=b"x")).kvs[0].value == b"3"


def test_txn_prechecks_leave_state_untouched(ap):
    put(ap, b"a", b"1")
    rev = ap.kv.rev
    with pytest.raises(ErrKeyNotFound):
        ap.txn(txn(s=[oput(b"b"), oput(b"missing", b"", ignore_value=True)]))
    with pytest.raises(ErrLeaseNotFound):
        ap.txn(txn(s=[oput(b"b"), oput(b"c", lease=99)]))
    with pytest.raises(ErrFutureRev):
        ap.txn(txn(s=[oput(b"b"), rng(b"a", revision=rev + 1)]))
    # checks only look at the branch taken
    ok = ap.txn(txn(c=[Cmp(key=b"a", target=Cmp.VERSION, result=Cmp.EQUAL, version=1)],
                    s=[oput(b"b")], f=[oput(b"c", lease=99)]))  # fmt: skip
    assert ok.succeeded and ap.kv.rev == rev + 1
    ap.compact(pb.CompactionRequest(revision=rev + 1))
    with pytest.raises(ErrCompacted):
        ap.txn(txn(s=[rng(b"a", revision=rev)]))


def test_compact_request(ap):
    put(ap, b"a", b"1")
    put(ap, b"a", b"2")
    assert ap.compact(pb.CompactionRequest(revision=0)) == pb.CompactionResponse()
    ap.compact(pb.CompactionRequest(revision=2))
    with pytest.raises(ErrCompacted):
        ap.compact(pb.CompactionRequest(revision=2))
    with pytest.raises(ErrFutureRev):
        ap.compact(pb.CompactionRequest(revision=4))
    with pytest.raises(ErrCompacted):
        ap.range(pb.RangeRequest(key=b"a", revision=1))
    assert not ap.kv.compaction_pending
    assert ap.range(pb.RangeRequest(key=b"a", revision=2)).kvs[0].value == b"1"


def test_duplicate_key_rule():
    bad = [
        txn(s=[oput(b"a"), oput(b"a")]),
        txn(s=[odel(b"a", b"c"), oput(b"b")]),
        txn(s=[odel(b"b"), oput(b"b")]),
        txn(s=[otxn(s=[oput(b"z")]), oput(b"z")]),
        txn(s=[otxn(s=[oput(b"z")]), otxn(f=[oput(b"z")])]),
        txn(s=[odel(b"y", b"zz"), otxn(s=[oput(b"z")])]),
        txn(s=[otxn(s=[odel(b"a", b"c")]), oput(b"b")]),
        txn(f=[oput(b"a"), oput(b"a")]),
    ]
    for t in bad:
        with pytest.raises(ErrDuplicateKey):
            check_txn_request(t, 128)
    good = [
        txn(s=[oput(b"a")], f=[oput(b"a")]),
        txn(s=[odel(b"a", b"\x00"), oput(b"b")]),  # "\x00" end is literal here, as in etcd
        txn(s=[odel(b"a", b"b"), oput(b"b")]),
        txn(s=[otxn(s=[oput(b"z")], f=[oput(b"z")])]),
        txn(s=[odel(b"a"), odel(b"a")]),
        txn(s=[rng(b"a"), oput(b"a")]),
    ]
    for t in good:
        check_txn_request(t, 128)


def test_request_validation():
    with pytest.raises(ErrEmptyKey):
        check_range_request(pb.RangeRequest())
    with pytest.raises(ErrEmptyKey):
        check_delete_request(pb.DeleteRangeRequest())
    with pytest.raises(ErrEmptyKey):
        check_put_request(pb.PutRequest(value=b"v"))
    with pytest.raises(ErrValueProvided):
        check_put_request(pb.PutRequest(key=b"k", value=b"v", ignore_value=True))
    with pytest.raises(ErrLeaseProvided):
        check_put_request(pb.PutRequest(key=b"k", lease=1, ignore_lease=True))
    check_put_request(pb.PutRequest(key=b"k", ignore_value=True, ignore_lease=True))
    with pytest.raises(ErrTooManyOps):
        check_txn_request(txn(s=[oput(b"%d" % i) for i in range(4)]), 3)
    with pytest.raises(ErrTooManyOps):
        check_txn_request(txn(c=[Cmp(key=b"k")] * 4), 3)
    # nested txns count against what is left
    check_txn_request(txn(s=[oput(b"a"), otxn(s=[oput(b"b")])]), 3)
    with pytest.raises(ErrTooManyOps):
        check_txn_request(txn(s=[oput(b"a"), otxn(s=[oput(b"b"), oput(b"c")])]), 3)
    with pytest.raises(ErrEmptyKey):
        check_txn_request(txn(c=[Cmp(key=b"")]), 128)
    with pytest.raises(ErrEmptyKey):
        check_txn_request(txn(f=[otxn(s=[rng(b"")])]), 128)
    with pytest.raises(ErrKeyNotFound):
        check_txn_request(txn(s=[pb.RequestOp()]), 128)
    assert is_txn_readonly(txn(s=[rng(b"a")], f=[rng(b"b")]))
    assert not is_txn_readonly(txn(s=[rng(b"a")], f=[otxn(s=[rng(b"b")])]))
