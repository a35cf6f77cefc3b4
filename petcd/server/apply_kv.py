"""KV request semantics (etcd's applierV3backend Range/Put/DeleteRange/Txn/Compaction).

Top-level responses are returned WITHOUT a header: the caller adds it (its revision is the
store's ``rev`` after the call). Responses nested in a Txn carry the header etcd gives
them (revision only; an empty header for a nested Txn).

``range_encoded`` is the hot read path: it builds the serialized RangeResponse by byte
concatenation from the raw KeyValue bytes the store returns, parsing only when a sort,
filter or keys_only needs fields.

The ``check_*_request`` functions are the pure validation done before proposing
(etcd's v3rpc/key.go).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

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
    EtcdError,
)
from petcd.mvcc.kvstore import KVStore, TxnRead, TxnWrite, encode_varint
from petcd.proto.etcdserverpb.rpc_pb2 import (
    CompactionRequest,
    CompactionResponse,
    Compare,
    DeleteRangeRequest,
    DeleteRangeResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    TxnRequest,
    TxnResponse,
)
from petcd.proto.mvccpb.kv_pb2 import KeyValue

View = TxnRead | TxnWrite

_SORT_NONE, _SORT_ASCEND, _SORT_DESCEND = 0, 1, 2
_TARGET_KEY, _TARGET_VERSION, _TARGET_CREATE, _TARGET_MOD, _TARGET_VALUE = 0, 1, 2, 3, 4
_CMP_EQUAL, _CMP_GREATER, _CMP_LESS, _CMP_NOT_EQUAL = 0, 1, 2, 3
_CT_VERSION, _CT_CREATE, _CT_MOD, _CT_VALUE, _CT_LEASE = 0, 1, 2, 3, 4

_SORT_KEYS: dict[int, Callable[[KeyValue], object]] = {
    _TARGET_KEY: lambda kv: kv.key,
    _TARGET_VERSION: lambda kv: kv.version,
    _TARGET_CREATE: lambda kv: kv.create_revision,
    _TARGET_MOD: lambda kv: kv.mod_revision,
    _TARGET_VALUE: lambda kv: kv.value,
}

# Precomputed varints for lengths: one list index instead of a Python loop per KeyValue.
_VARINT = [encode_varint(i) for i in range(1 << 14)]


def _varint(n: int) -> bytes:
    return _VARINT[n] if n < 16384 else encode_varint(n)


def _kvs_field(kvs: Iterable[bytes], tag: bytes = b"\x12") -> bytes:
    v = _VARINT
    return b"".join(
        [tag + (v[len(kv)] if len(kv) < 16384 else encode_varint(len(kv))) + kv for kv in kvs]
    )


class KVApplier:
    """Applies KV requests to a KVStore with etcd's exact semantics."""

    def __init__(
        self,
        kv: KVStore,
        *,
        lease_exists: Callable[[int], bool] = lambda _id: False,
        compact_sync: bool = True,
    ) -> None:
        self.kv = kv
        self.lease_exists = lease_exists
        # False: compact() only schedules the physical deletion; the server must drive
        # kv.compact_step() between applied entries.
        self.compact_sync = compact_sync

    # -- Range -------------------------------------------------------------------------

    def _range_body(self, view: View, req: RangeRequest) -> tuple[bytes, int]:
        """Serialized RangeResponse without header, and the read view's revision."""
        limit = req.limit
        order = req.sort_order
        target = req.sort_target
        filtered = bool(
            req.min_mod_revision
            or req.max_mod_revision
            or req.min_create_revision
            or req.max_create_revision
        )
        if order == _SORT_NONE and target != _TARGET_KEY:
            order = _SORT_ASCEND
        # Key-ascending is the store's natural order: the limit can be pushed down (etcd
        # fetches everything then sorts, with the same result).
        natural = target == _TARGET_KEY and order != _SORT_DESCEND
        fetch = limit + 1 if (limit > 0 and natural and not filtered) else 0
        rr = view.range(
            req.key, req.range_end, rev=req.revision, limit=fetch, count_only=req.count_only
        )
        raw = rr.kvs
        count = rr.count
        if not filtered and not req.keys_only and target == _TARGET_KEY:
            if order == _SORT_DESCEND:
                raw.reverse()
            more = False
            if limit > 0 and len(raw) > limit:
                del raw[limit:]
                more = True
            body = _kvs_field(raw) if raw else b""
            if more:
                body += b"\x18\x01"
            if count:
                body += b"\x20" + _varint(count)
            return body, rr.rev

        parse = KeyValue.FromString
        kvs = [parse(b) for b in raw]
        if filtered:
            if req.max_mod_revision:
                mx = req.max_mod_revision
                kvs = [kv for kv in kvs if kv.mod_revision <= mx]
            if req.min_mod_revision:
                mn = req.min_mod_revision
                kvs = [kv for kv in kvs if kv.mod_revision >= mn]
            if req.max_create_revision:
                mx = req.max_create_revision
                kvs = [kv for kv in kvs if kv.create_revision <= mx]
            if req.min_create_revision:
                mn = req.min_create_revision
                kvs = [kv for kv in kvs if kv.create_revision >= mn]
        if order != _SORT_NONE and not (order == _SORT_ASCEND and target == _TARGET_KEY):
            keyf = _SORT_KEYS.get(target)
            if keyf is not None:
                # Stable: ties keep key order, like Go's insertion sort on small inputs.
                kvs.sort(key=keyf, reverse=order == _SORT_DESCEND)
        more = False
        if limit > 0 and len(kvs) > limit:
            del kvs[limit:]
            more = True
        if req.keys_only:
            for kv in kvs:
                kv.value = b""
        return RangeResponse(kvs=kvs, more=more, count=count).SerializeToString(), rr.rev

    def range(self, req: RangeRequest) -> RangeResponse:
        body, _ = self._range_body(self.kv.read(), req)
        return RangeResponse.FromString(body)

    def range_encoded(self, req: RangeRequest, header: bytes) -> bytes:
        """Serialized RangeResponse; ``header`` is the encoded field 1 (tag, length, body)."""
        if not req.range_end and not (
            req.keys_only
            or req.count_only
            or req.min_mod_revision
            or req.max_mod_revision
            or req.min_create_revision
            or req.max_create_revision
        ):
            # One key, nothing to parse: sort and limit cannot change a 0/1-item answer.
            v = self.kv.get_raw(req.key, req.revision)
            if v is None:
                return header
            n = len(v)
            return (
                header + b"\x12" + (_VARINT[n] if n < 16384 else encode_varint(n)) + v + b"\x20\x01"
            )
        body, _ = self._range_body(self.kv.read(), req)
        return header + body

    # -- Put / DeleteRange ---------------------------------------------------------------

    def _put(self, tw: TxnWrite, req: PutRequest) -> tuple[PutResponse, int]:
        key = req.key
        value = req.value
        lease = req.lease
        prev = None
        if req.ignore_value or req.ignore_lease or req.prev_kv:
            kvs = tw.range(key).kvs
            prev = kvs[0] if kvs else None
            if req.ignore_value or req.ignore_lease:
                if prev is None:
                    raise ErrKeyNotFound()
                pkv = KeyValue.FromString(prev)
                if req.ignore_value:
                    value = pkv.value
                if req.ignore_lease:
                    lease = pkv.lease
        rev = tw.put(key, value, lease)
        resp = PutResponse()
        if req.prev_kv and prev is not None:
            resp.prev_kv.MergeFromString(prev)
        return resp, rev

    def put(self, req: PutRequest) -> PutResponse:
        if req.lease and not self.lease_exists(req.lease):
            raise ErrLeaseNotFound()
        tw = self.kv.write()
        try:
            resp, _ = self._put(tw, req)
        finally:
            tw.end()
        return resp

    def _delete_range(
        self, tw: TxnWrite, req: DeleteRangeRequest
    ) -> tuple[DeleteRangeResponse, int]:
        resp = DeleteRangeResponse()
        if req.prev_kv:
            kvs = tw.range(req.key, req.range_end).kvs
            if kvs:
                resp.MergeFromString(_kvs_field(kvs, b"\x1a"))
        n, rev = tw.delete_range(req.key, req.range_end)
        resp.deleted = n
        return resp, rev

    def delete_range(self, req: DeleteRangeRequest) -> DeleteRangeResponse:
        tw = self.kv.write()
        try:
            resp, _ = self._delete_range(tw, req)
        finally:
            tw.end()
        return resp

    # -- Txn -------------------------------------------------------------------------------

    def txn(self, req: TxnRequest) -> TxnResponse:
        """Evaluate compares, then run one branch in a single write transaction.

        Errors a write could hit (missing key for ignore_*, missing lease, bad revision in
        a nested Range) are checked before any write; an exception after a write has
        happened means a bug and must be treated as fatal by the caller.
        """
        view = self.kv.read()
        path: list[bool] = []
        self._compare_to_path(view, req, path)
        if not is_txn_readonly(req):
            self._check_requests(view, req, path, 0, self._check_put)
        self._check_requests(view, req, path, 0, _check_range)
        resp = TxnResponse()
        tw = self.kv.write()
        try:
            self._apply_txn(tw, req, path, 0, resp)
        finally:
            tw.end()
        return resp

    def _compare_to_path(self, view: TxnRead, req: TxnRequest, path: list[bool]) -> None:
        ok = True
        for c in req.compare:
            if not self._apply_compare(view, c):
                ok = False
                break
        path.append(ok)
        for op in req.success if ok else req.failure:
            if op.WhichOneof("request") == "request_txn":
                self._compare_to_path(view, op.request_txn, path)

    def _apply_compare(self, view: TxnRead, c: Compare) -> bool:
        target = c.target
        result = c.result
        if target == _CT_VALUE or view.rev != self.kv.rev:
            try:
                raws = view.range(c.key, c.range_end).kvs
            except EtcdError:
                return False
            if not raws:
                if target == _CT_VALUE:
                    # A missing value cannot be compared: always false.
                    return False
                metas = [(0, 0, 0, 0)]
            else:
                kvs = [KeyValue.FromString(b) for b in raws]
                if target == _CT_VALUE:
                    want_b = c.value
                    return all(_cmp_ok(_cmp(kv.value, want_b), result) for kv in kvs)
                metas = [(kv.mod_revision, kv.create_revision, kv.version, kv.lease) for kv in kvs]
        else:
            # Compares run before any write, at the latest revision: the index has it all.
            metas = self.kv.latest_meta(c.key, c.range_end) or [(0, 0, 0, 0)]
        if target == _CT_VERSION:
            want, pos = c.version, 2
        elif target == _CT_CREATE:
            want, pos = c.create_revision, 1
        elif target == _CT_MOD:
            want, pos = c.mod_revision, 0
        elif target == _CT_LEASE:
            want, pos = c.lease, 3
        else:
            return all(_cmp_ok(0, result) for _ in metas)
        return all(_cmp_ok(_cmp(m[pos], want), result) for m in metas)

    def _check_requests(
        self,
        view: TxnRead,
        req: TxnRequest,
        path: list[bool],
        pos: int,
        f: Callable[[TxnRead, RequestOp], None],
    ) -> int:
        consumed = 0
        for op in req.success if path[pos] else req.failure:
            if op.WhichOneof("request") == "request_txn":
                n = self._check_requests(view, op.request_txn, path, pos + 1 + consumed, f)
                consumed += n + 1
                continue
            f(view, op)
        return consumed

    def _check_put(self, view: TxnRead, op: RequestOp) -> None:
        if op.WhichOneof("request") != "request_put":
            return
        p = op.request_put
        if p.ignore_value or p.ignore_lease:
            if not view.range(p.key).kvs:
                raise ErrKeyNotFound()
        if p.lease and not self.lease_exists(p.lease):
            raise ErrLeaseNotFound()

    def _apply_txn(
        self, tw: TxnWrite, req: TxnRequest, path: list[bool], pos: int, resp: TxnResponse
    ) -> int:
        ok = path[pos]
        resp.succeeded = ok
        consumed = 0
        responses = resp.responses
        for op in req.success if ok else req.failure:
            which = op.WhichOneof("request")
            r = responses.add()
            if which == "request_range":
                body, rev = self._range_body(tw, op.request_range)
                rr = r.response_range
                rr.MergeFromString(body)
                rr.header.revision = rev
                rr.header.SetInParent()
            elif which == "request_put":
                presp, rev = self._put(tw, op.request_put)
                presp.header.revision = rev
                r.response_put.CopyFrom(presp)
            elif which == "request_delete_range":
                dresp, rev = self._delete_range(tw, op.request_delete_range)
                dresp.header.revision = rev
                r.response_delete_range.CopyFrom(dresp)
            elif which == "request_txn":
                sub = r.response_txn
                sub.header.SetInParent()
                n = self._apply_txn(tw, op.request_txn, path, pos + 1 + consumed, sub)
                consumed += n + 1
        return consumed

    # -- Compact ---------------------------------------------------------------------------

    def compact(self, req: CompactionRequest) -> CompactionResponse:
        self.kv.compact(req.revision)
        if self.compact_sync:
            self.kv.run_compaction()
        return CompactionResponse()


def _cmp(a: object, b: object) -> int:
    return (a > b) - (a < b)  # type: ignore[operator]


def _cmp_ok(r: int, result: int) -> bool:
    if result == _CMP_EQUAL:
        return r == 0
    if result == _CMP_NOT_EQUAL:
        return r != 0
    if result == _CMP_GREATER:
        return r > 0
    if result == _CMP_LESS:
        return r < 0
    return True


def _check_range(view: TxnRead, op: RequestOp) -> None:
    if op.WhichOneof("request") != "request_range":
        return
    rev = op.request_range.revision
    if rev == 0:
        return
    if rev > view.rev:
        raise ErrFutureRev()
    if rev < view.first_rev:
        raise ErrCompacted()


def is_txn_readonly(req: TxnRequest) -> bool:
    """True iff every op of both branches is a Range (a nested Txn counts as a write)."""
    for op in req.success:
        if op.WhichOneof("request") != "request_range":
            return False
    for op in req.failure:
        if op.WhichOneof("request") != "request_range":
            return False
    return True


def is_txn_serializable(req: TxnRequest) -> bool:
    """True iff every Range of a read-only txn asks for a serializable read."""
    for op in req.success:
        if not op.request_range.serializable:
            return False
    for op in req.failure:
        if not op.request_range.serializable:
            return False
    return True


def txn_has_put(req: TxnRequest) -> bool:
    """Whether a Put appears in either branch, nested txns included (the quota applies)."""
    for ops in (req.success, req.failure):
        for op in ops:
            which = op.WhichOneof("request")
            if which == "request_put":
                return True
            if which == "request_txn" and txn_has_put(op.request_txn):
                return True
    return False


# -- validation before proposing (v3rpc/key.go) ----------------------------------------------


def check_range_request(req: RangeRequest) -> None:
    if not req.key:
        raise ErrEmptyKey()


def check_put_request(req: PutRequest) -> None:
    if not req.key:
        raise ErrEmptyKey()
    if req.ignore_value and req.value:
        raise ErrValueProvided()
    if req.ignore_lease and req.lease:
        raise ErrLeaseProvided()


def check_delete_request(req: DeleteRangeRequest) -> None:
    if not req.key:
        raise ErrEmptyKey()


def _check_txn(req: TxnRequest, max_txn_ops: int) -> None:
    opc = max(len(req.compare), len(req.success), len(req.failure))
    if opc > max_txn_ops:
        raise ErrTooManyOps()
    for c in req.compare:
        if not c.key:
            raise ErrEmptyKey()
    for op in req.success:
        _check_request_op(op, max_txn_ops - opc)
    for op in req.failure:
        _check_request_op(op, max_txn_ops - opc)


def _check_request_op(op: RequestOp, max_txn_ops: int) -> None:
    which = op.WhichOneof("request")
    if which == "request_range":
        check_range_request(op.request_range)
    elif which == "request_put":
        check_put_request(op.request_put)
    elif which == "request_delete_range":
        check_delete_request(op.request_delete_range)
    elif which == "request_txn":
        _check_txn(op.request_txn, max_txn_ops)
    else:
        raise ErrKeyNotFound()  # empty op: etcd answers ErrGRPCKeyNotFound


def check_txn_request(req: TxnRequest, max_txn_ops: int = 128) -> None:
    """Op counts, empty keys, ignore_* flags, then etcd's no-key-modified-twice rule."""
    _check_txn(req, max_txn_ops)
    _check_intervals(req.success)
    _check_intervals(req.failure)


def _intersects(dels: list[tuple[bytes, bytes]], k: bytes) -> bool:
    for start, end in dels:
        if start <= k < end:
            return True
    return False


def _check_intervals(ops: Iterable[RequestOp]) -> tuple[set[bytes], list[tuple[bytes, bytes]]]:
    """Puts and delete intervals of a branch; raise ErrDuplicateKey on an overlap.

    A put may not repeat another put's key or fall inside a delete of the same branch,
    including nested txns (their then/else puts may repeat each other). As in etcd, a
    delete's range_end b"\\x00" is taken literally, so such a delete overlaps nothing.
    """
    ops = list(ops)
    dels: list[tuple[bytes, bytes]] = []
    for op in ops:
        if op.WhichOneof("request") == "request_delete_range":
            d = op.request_delete_range
            dels.append((d.key, d.range_end if d.range_end else d.key + b"\x00"))
    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        puts_then, dels_then = _check_intervals(op.request_txn.success)
        puts_else, dels_else = _check_intervals(op.request_txn.failure)
        for k in puts_then:
            if k in puts or _intersects(dels, k):
                raise ErrDuplicateKey()
            puts.add(k)
        for k in puts_else:
            if k in puts and k not in puts_then:
                raise ErrDuplicateKey()
            if _intersects(dels, k):
                raise ErrDuplicateKey()
            puts.add(k)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        k = op.request_put.key
        if k in puts or _intersects(dels, k):
            raise ErrDuplicateKey()
        puts.add(k)
    return puts, dels
