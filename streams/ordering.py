"""In-order consumption per partition: an event is applied only after every earlier event of its partition.

A user's state records the last applied offset per source partition, and a redelivered event at or
below it changes nothing. That makes redelivery harmless, but only while each partition is applied
in offset order: an event applied past a skipped one hides the skipped one for good.

Faust (faust-streaming 0.15.3) does not guarantee that order. When the fetch position jumps ahead,
for example after records were dropped during a rebalance, its consumer marks the skipped offsets
as acknowledged, together with the offset of the record that follows them, so they are committed
without being processed. `OffsetGuard` takes that decision over. It tracks the next expected offset
of every partition, from the committed offset the consumer seeks to after an assignment and then
from each processed event. When a later record arrives first, it looks up whether records exist
in between. If they do, it seeks the partition back and skips events until the expected one
arrives. If none exist, which is normal for transaction markers, it acknowledges the gap as Faust would.

Faust's fetch loop also drops every record below the partition's read offset, and it still hands
over the records fetched before a seek, each of which moves the read offset past the seek target.
So the records fetched again after the guard's seek were dropped, and the partition stalled until
the worker restarted. While a partition is sought back, its read offset therefore reads as unknown.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from typing import Any, Callable

import faust
from kafka import KafkaConsumer, TopicPartition

from stylestream.streams.stats import WorkerStats

log = logging.getLogger(__name__)

# How long the look-up for records inside a gap waits for the broker before it assumes records exist.
LOOKUP_TIMEOUT_MS = 2000


class _ReadOffsets(defaultdict):
    """Faust's read offset per partition, which reads as unknown (None) while the partition is sought back."""

    def __init__(self, offsets: dict[Any, int | None], rewinding: dict[tuple[str, int], int]) -> None:
        super().__init__(lambda: None, offsets)
        self.rewinding = rewinding

    def __getitem__(self, tp: Any) -> int | None:
        if (tp.topic, tp.partition) in self.rewinding:
            return None
        return super().__getitem__(tp)


class OffsetGuard:
    """Decide, per incoming event, whether to apply it or skip it while its partition is sought back."""

    def __init__(
        self, app: faust.App, topics: set[str], lookup: Callable[[str, int, int, int], bool], stats: WorkerStats
    ) -> None:
        self.app = app
        self.topics = topics
        self.lookup = lookup
        self.stats = stats
        self.expected: dict[tuple[str, int], int] = {}
        self.rewinding: dict[tuple[str, int], int] = {}
        consumer = app.consumer
        self._add_gap = consumer._add_gap
        # Faust's consumer calls this on every jump in offsets; for `topics` the guard decides instead.
        consumer._add_gap = self._add_gap_outside_topics
        # NOTE: replaces a private mapping of faust-streaming 0.15.3, whose fetch loop binds its
        # __getitem__ when it starts, so this must run before the app starts.
        consumer._read_offset = _ReadOffsets(consumer._read_offset, self.rewinding)

    async def _add_gap_outside_topics(self, tp: Any, offset_from: int, offset_to: int) -> None:
        if tp.topic not in self.topics:
            await self._add_gap(tp, offset_from, offset_to)

    def set_position(self, topic: str, partition: int, offset: int) -> None:
        """Record that the consumer now reads `topic[partition]` from `offset` (after a seek)."""
        key = (topic, partition)
        self.expected[key] = offset
        self.rewinding.pop(key, None)

    async def admit(self, message: Any) -> bool:
        """Return True when `message` may be applied now; False when it is skipped until it is redelivered.

        A skipped message is marked as handled without being acknowledged, so its offset is never
        committed before the redelivered copy is applied.
        """
        key = (message.topic, message.partition)
        offset = message.offset
        waiting_for = self.rewinding.get(key)
        if waiting_for is not None:
            if offset > waiting_for:
                self._skip(message)
                return False
            if offset == waiting_for:
                del self.rewinding[key]

        expected = self.expected.get(key)
        if expected is not None and offset > expected:
            exists = await asyncio.to_thread(self.lookup, message.topic, message.partition, expected, offset)
            if exists:
                log.warning(
                    "Consumer skipped %s[%d] from offset %d to %d; seeking back to %d",
                    message.topic, message.partition, expected, offset, expected,
                )
                self.stats.offset_gaps_rewound += 1
                self.rewinding[key] = expected
                await self.app.consumer.seek(message.tp, expected)
                self._skip(message)
                return False

            # No records in between, as after transaction markers: acknowledge the gap, not this offset.
            self.stats.offset_gaps_acknowledged += 1
            await self._add_gap(message.tp, expected, offset - 1)

        if expected is None or offset >= expected:
            self.expected[key] = offset + 1
        return True

    def _skip(self, message: Any) -> None:
        # Faust's Consumer.ack adds an offset to the committable ones only when `acked` is False.
        message.acked = True
        self.app.consumer._unacked_messages.discard(message)


class RecordLookup:
    """Find out with a group-less consumer whether a partition contains records in an offset range."""

    def __init__(self, bootstrap_servers: str, options: dict[str, Any]) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.options = options
        self._consumer: KafkaConsumer | None = None
        # The downloads and searches agents look up from worker threads, and KafkaConsumer is not thread-safe.
        self._lock = threading.Lock()

    def __call__(self, topic: str, partition: int, start: int, end: int) -> bool:
        """Return True when `topic[partition]` has a record at an offset in [start, end), or the look-up fails."""
        with self._lock:
            return self._lookup(topic, partition, start, end)

    def _lookup(self, topic: str, partition: int, start: int, end: int) -> bool:
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap_servers, client_id="stylestream-gap-lookup",
                enable_auto_commit=False, **self.options,
            )
        consumer = self._consumer
        tp = TopicPartition(topic, partition)
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            batches = consumer.poll(timeout_ms=LOOKUP_TIMEOUT_MS, max_records=1)
        except Exception as exc:  # unknown means unsafe: rewinding costs a refetch, skipping loses events
            log.warning("Could not look up records of %s[%d] from offset %d: %r", topic, partition, start, exc)
            return True
        records = batches.get(tp, [])
        if not records:
            log.warning("Found no record of %s[%d] from offset %d within %d ms", topic, partition, start, LOOKUP_TIMEOUT_MS)
            return True
        return records[0].offset < end

    def close(self) -> None:
        """Close the look-up consumer."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
