"""Member, cluster and request IDs, derived the way etcd derives them.

Member and cluster IDs are wire-visible (etcdctl prints them, clients check them), so a
cluster bootstrapped with the same flags gets the same IDs as etcd would give it.
"""

from __future__ import annotations

import hashlib
import struct
import time


def member_id(peer_urls: list[str], cluster_token: str, now: float | None = None) -> int:
    b = "".join(sorted(peer_urls)).encode() + cluster_token.encode()
    if now is not None:
        b += str(int(now)).encode()
    return struct.unpack(">Q", hashlib.sha1(b).digest()[:8])[0]


def cluster_id(member_ids: list[int]) -> int:
    b = b"".join(struct.pack(">Q", m) for m in sorted(member_ids))
    return struct.unpack(">Q", hashlib.sha1(b).digest()[:8])[0]


class RequestIDGenerator:
    """Unique request IDs: 2 bytes of member ID, 5 bytes of start time in ms, then a counter.

    The same layout as etcd's idutil so IDs stay unique across restarts of a member.
    """

    def __init__(self, member: int, now_ms: int | None = None) -> None:
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        prefix = (member & 0xFFFF) << 48
        self._next = prefix | ((now_ms & 0xFFFFFFFFFF) << 8)
        self._mask = (1 << 64) - 1

    def next(self) -> int:
        self._next = (self._next + 1) & self._mask
        return self._next
