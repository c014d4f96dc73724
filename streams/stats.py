"""In-process counters of a worker, served by its /stats endpoint."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1, 10, 50, 100, 500, 1000, 5000, 10000, 50000)


@dataclass
class Histogram:
    """Cumulative bucket counts, sum and count of observed values, as Prometheus histograms keep them."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        """Add one observation."""
        self.total += value
        self.count += 1
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1

    def to_dict(self) -> dict[str, Any]:
        """Return the histogram as JSON types."""
        return {"buckets": dict(zip(map(str, self.buckets), self.counts)), "sum": self.total, "count": self.count}


@dataclass
class WorkerStats:
    """Counts of consumed, fully processed, applied, skipped and dead-lettered events, and of sink flushes."""

    started_at: float = field(default_factory=time.time)
    consumed: Counter = field(default_factory=Counter)
    processed: Counter = field(default_factory=Counter)
    applied: Counter = field(default_factory=Counter)
    duplicates: Counter = field(default_factory=Counter)
    dead_letters: Counter = field(default_factory=Counter)
    images_upserted: int = 0
    users_upserted: int = 0
    flushes: int = 0
    flush_failures: int = 0
    users_skipped_stale: int = 0
    backpressure_pauses: int = 0
    offset_gaps_rewound: int = 0
    offset_gaps_acknowledged: int = 0
    user_batches: int = 0
    state_writes: int = 0
    records_sent: Counter = field(default_factory=Counter)
    send_failures: Counter = field(default_factory=Counter)
    downloads_counted: int = 0
    last_flush_at: float | None = None
    last_flush_size: int = 0
    last_flush_seconds: float = 0.0
    pending_users: int = 0
    partition_lag: dict[str, int] = field(default_factory=dict)
    stalled_partitions: list[str] = field(default_factory=list)
    table_size: int = 0
    event_to_upsert_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    flush_size: Histogram = field(default_factory=lambda: Histogram(SIZE_BUCKETS))
    flush_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))

    def record_flush(self, size: int, seconds: float) -> None:
        """Record a successful flush of `size` users that took `seconds`."""
        self.last_flush_at = time.time()
        self.last_flush_size = size
        self.last_flush_seconds = seconds
        self.flush_size.observe(size)
        self.flush_seconds.observe(seconds)

    def to_dict(self) -> dict[str, Any]:
        """Return the counters as JSON types."""
        return {
            "started_at": self.started_at,
            "consumed": dict(self.consumed),
            "processed": dict(self.processed),
            "applied": dict(self.applied),
            "duplicates": dict(self.duplicates),
            "dead_letters": dict(self.dead_letters),
            "images_upserted": self.images_upserted,
            "users_upserted": self.users_upserted,
            "flushes": self.flushes,
            "flush_failures": self.flush_failures,
            "users_skipped_stale": self.users_skipped_stale,
            "backpressure_pauses": self.backpressure_pauses,
            "offset_gaps_rewound": self.offset_gaps_rewound,
            "offset_gaps_acknowledged": self.offset_gaps_acknowledged,
            "user_batches": self.user_batches,
            "state_writes": self.state_writes,
            "records_sent": dict(self.records_sent),
            "send_failures": dict(self.send_failures),
            "downloads_counted": self.downloads_counted,
            "last_flush_at": self.last_flush_at,
            "last_flush_size": self.last_flush_size,
            "last_flush_seconds": self.last_flush_seconds,
            "pending_users": self.pending_users,
            "partition_lag": self.partition_lag,
            "stalled_partitions": self.stalled_partitions,
            "table_size": self.table_size,
            "event_to_upsert_seconds": self.event_to_upsert_seconds.to_dict(),
            "flush_size": self.flush_size.to_dict(),
            "flush_seconds": self.flush_seconds.to_dict(),
        }
