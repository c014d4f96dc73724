"""In-process counters of a worker, served by its /stats endpoint."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


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
    last_flush_at: float | None = None
    last_flush_size: int = 0
    last_flush_seconds: float = 0.0
    pending_users: int = 0
    partition_lag: dict[str, int] = field(default_factory=dict)
    stalled_partitions: list[str] = field(default_factory=list)

    def record_flush(self, size: int, seconds: float) -> None:
        """Record a successful flush of `size` users that took `seconds`."""
        self.last_flush_at = time.time()
        self.last_flush_size = size
        self.last_flush_seconds = seconds

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
            "last_flush_at": self.last_flush_at,
            "last_flush_size": self.last_flush_size,
            "last_flush_seconds": self.last_flush_seconds,
            "pending_users": self.pending_users,
            "partition_lag": self.partition_lag,
            "stalled_partitions": self.stalled_partitions,
        }
