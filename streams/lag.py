"""Consumer lag per partition, and detection of partitions that stop making progress."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionLag:
    """Committed offset, end offset and lag of one topic-partition for a consumer group."""

    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        """Return how many records the group has not committed yet."""
        return max(self.end - self.committed, 0)


def consumer_lag(bootstrap: str, group: str, topics: list[str], options: dict[str, Any] | None = None) -> list[PartitionLag]:
    """Return the lag of `group` on every partition of `topics` (no committed offset counts as 0).

    `options` are kafka-python security settings.
    """
    options = options or {}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="stylestream-lag", **options)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="stylestream-lag", enable_auto_commit=False, **options)
    try:
        committed = admin.list_group_offsets(group).get(group, {})
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        ends = consumer.end_offsets(partitions) if partitions else {}
        return [
            PartitionLag(tp.topic, tp.partition, max(committed[tp].offset, 0) if tp in committed else 0, ends[tp])
            for tp in partitions
        ]
    finally:
        consumer.close()
        admin.close()


@dataclass
class StallDetector:
    """Flag partitions whose committed offset has not moved for `stall_seconds` while their lag is positive.

    A worker restart resumes such a partition, and redelivered events change nothing. The app logs
    every task's await chain when a stall begins.
    """

    stall_seconds: float = 60.0
    _progress: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)

    def update(self, lags: list[PartitionLag], now: float | None = None) -> list[PartitionLag]:
        """Record a lag sample and return the partitions that are stalled now."""
        now = time.monotonic() if now is None else now
        stalled = []
        for lag in lags:
            key = (lag.topic, lag.partition)
            previous = self._progress.get(key)
            if previous is None or lag.committed != previous[0] or lag.lag == 0:
                self._progress[key] = (lag.committed, now)
                continue
            if now - previous[1] >= self.stall_seconds:
                stalled.append(lag)
        return stalled
