"""grpc.health.v1 request parsing (the e2e test compares the service with etcd's)."""

import pytest

from petcd.api.v3.health import requested_service


def test_requested_service_reads_field_one_and_skips_the_rest():
    assert requested_service(b"") == ""
    assert requested_service(b"\x0a\x03abc") == "abc"
    # unknown varint, fixed64, fixed32 and bytes fields around it are skipped
    raw = b"\x10\x96\x01" + b"\x19" + b"\0" * 8 + b"\x0a\x02kv" + b"\x25" + b"\0" * 4 + b"\x12\x01z"
    assert requested_service(raw) == "kv"
    for bad in (b"\x0a\x05ab", b"\x0a", b"\x10\xff", b"\x0b", b"\x0a\x01\xff"):
        with pytest.raises((ValueError, UnicodeDecodeError)):
            requested_service(bad)
