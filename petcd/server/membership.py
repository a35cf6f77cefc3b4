"""Cluster membership: the members, their attributes, and the cluster version.

Stored in the backend's `members` bucket as JSON, one record per member keyed by its
hex ID, so a restarted member knows its cluster without re-reading its flags.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

MEMBERS_BUCKET = "members"
MEMBERS_REMOVED_BUCKET = "members_removed"
CLUSTER_BUCKET = "cluster"
CLUSTER_VERSION_KEY = b"clusterVersion"


@dataclass(slots=True)
class Member:
    id: int
    name: str = ""
    peer_urls: list[str] = field(default_factory=list)
    client_urls: list[str] = field(default_factory=list)
    is_learner: bool = False

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "peerURLs": self.peer_urls,
            "clientURLs": self.client_urls,
            "isLearner": self.is_learner,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict()).encode()

    @classmethod
    def from_dict(cls, d: dict) -> Member:
        return cls(
            id=int(d["id"]),
            name=d.get("name", ""),
            peer_urls=list(d.get("peerURLs", [])),
            client_urls=list(d.get("clientURLs", [])),
            is_learner=bool(d.get("isLearner", False)),
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Member:
        return cls.from_dict(json.loads(raw))


class RaftCluster:
    def __init__(self, cluster_id: int, local_id: int) -> None:
        self.cluster_id = cluster_id
        self.local_id = local_id
        self.members: dict[int, Member] = {}
        self.removed: set[int] = set()
        self.version: str | None = None

    def add(self, m: Member) -> None:
        self.members[m.id] = m

    def remove(self, member_id: int, backend) -> None:
        """Remove for good: a removed ID can never rejoin (etcd's members_removed bucket)."""
        self.members.pop(member_id, None)
        self.removed.add(member_id)
        backend.delete(MEMBERS_BUCKET, b"%016x" % member_id)
        backend.put(MEMBERS_REMOVED_BUCKET, b"%016x" % member_id, b"removed")

    def member_list(self) -> list[Member]:
        return [self.members[k] for k in sorted(self.members)]

    def voters(self) -> list[int]:
        return sorted(m.id for m in self.members.values() if not m.is_learner)

    def by_peer_url(self, url: str) -> Member | None:
        for m in self.members.values():
            if url in m.peer_urls:
                return m
        return None

    def save(self, backend) -> None:
        for m in self.members.values():
            backend.put(MEMBERS_BUCKET, b"%016x" % m.id, m.to_json())
        if self.version:
            backend.put(CLUSTER_BUCKET, CLUSTER_VERSION_KEY, self.version.encode())

    def save_member(self, backend, m: Member) -> None:
        backend.put(MEMBERS_BUCKET, b"%016x" % m.id, m.to_json())

    def load(self, backend) -> None:
        self.members = {}
        self.removed = set()
        for _k, v in backend.range(MEMBERS_BUCKET, b""):
            m = Member.from_json(v)
            self.members[m.id] = m
        for k, _v in backend.range(MEMBERS_REMOVED_BUCKET, b""):
            self.removed.add(int(bytes(k), 16))
        ver = backend.get(CLUSTER_BUCKET, CLUSTER_VERSION_KEY)
        if ver:
            self.version = bytes(ver).decode()

    def to_json(self) -> bytes:
        """What a joining member fetches from a peer: the cluster ID and its members."""
        return json.dumps(
            {
                "clusterID": self.cluster_id,
                "members": [m.to_dict() for m in self.member_list()],
                "removed": sorted(self.removed),
            }
        ).encode()

    def to_snapshot(self) -> bytes:
        return json.dumps(
            {
                "members": [m.to_dict() for m in self.member_list()],
                "version": self.version,
            }
        ).encode()
