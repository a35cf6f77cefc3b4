"""Leases: the lessor (grant, revoke, renew, expiry, keys attached to leases)."""

from petcd.lease.lessor import (
    FOREVER,
    MAX_LEASE_TTL,
    NO_LEASE,
    Lease,
    Lessor,
    min_lease_ttl,
)

__all__ = ["FOREVER", "MAX_LEASE_TTL", "NO_LEASE", "Lease", "Lessor", "min_lease_ttl"]
