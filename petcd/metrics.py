"""Latency histograms the storage layers keep and /metrics exports.

Process-wide, like the Prometheus default registry etcd registers its metrics with.
"""

from __future__ import annotations

from bisect import bisect_left


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """Prometheus' ExponentialBuckets: start, start*factor, ... (count upper bounds)."""
    return tuple(start * factor**i for i in range(count))


class Histogram:
    """Cumulative-on-export bucket counts, a sum and a count (a Prometheus histogram)."""

    __slots__ = ("name", "help", "bounds", "counts", "sum", "count")

    def __init__(self, name: str, help_: str, bounds: tuple[float, ...]) -> None:
        self.name, self.help, self.bounds = name, help_, bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1  # first bucket whose bound is >= v
        self.sum += v
        self.count += 1


# etcd's disk metrics (wal/metrics.go, mvcc/backend/metrics.go), same names and buckets.
WAL_FSYNC_SECONDS = Histogram(
    "etcd_disk_wal_fsync_duration_seconds",
    "The latency distributions of fsync called by WAL.",
    exponential_buckets(0.001, 2, 14),
)
BACKEND_COMMIT_SECONDS = Histogram(
    "etcd_disk_backend_commit_duration_seconds",
    "The latency distributions of commit called by backend.",
    exponential_buckets(0.001, 2, 14),
)
