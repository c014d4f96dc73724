"""Records sent straight to the producer: table changelogs and the popularity topic.

Faust's `table[key] = value` queues each changelog record in its ProducerBuffer, which one task
hands to aiokafka record by record, and `Topic.send` wraps every record in futures and callbacks.
Here a table write sets the local store at once and marks the key as changed. Its changelog record
waits for the next flush, which the worker runs before every offset commit (see
`BufferDrain.add_flush_hook`), so a user changed by many batches between two commits is written
once, with its newest value. Kafka Streams' record cache works the same way. A committed offset
still never covers an event whose changelog record is unsent. After a crash, the events after the
committed offsets are applied again to the recovered state. A drain hands the records of a
partition to aiokafka as one record batch when there are many, instead of one call per record.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from functools import partial
from typing import Any, Iterable

import faust
import orjson

from stylestream.streams.stats import WorkerStats

log = logging.getLogger(__name__)

# Records of one partition per drain from which they go to aiokafka as one record batch.
MIN_BATCH_RECORDS = 16


class TopicSender:
    """Send raw records (key, partition, value) to one topic, in the order they were queued per partition."""

    def __init__(self, app: faust.App, topic: str, stats: WorkerStats) -> None:
        self.app = app
        self.topic = topic
        self.stats = stats
        self._queue: list[tuple[bytes | None, int, bytes]] = []
        self._draining = asyncio.Lock()

    def queue(self, key: bytes | None, partition: int, value: bytes) -> None:
        """Queue a record for the next `drain`."""
        self._queue.append((key, partition, value))

    async def send(self, records: Iterable[tuple[bytes | None, int, bytes]]) -> None:
        """Queue the records and drain the queue."""
        self._queue.extend(records)
        await self.drain()

    async def drain(self) -> None:
        """Hand every queued record to the producer, oldest first, and return once it has accepted them.

        Delivery completes in the background; a failed batch is logged and its records are counted
        in `send_failures`. A caller that finds another drain running waits for it, which also
        sends the caller's records.
        """
        async with self._draining:
            while self._queue:
                records, self._queue = self._queue, []
                by_partition: dict[int, list[tuple[bytes | None, bytes]]] = defaultdict(list)
                for key, partition, value in records:
                    by_partition[partition].append((key, value))
                try:
                    for partition, items in by_partition.items():
                        await self._send_partition(partition, items)
                except BaseException:
                    # Keep what the producer did not accept at the front of the queue, for the next drain.
                    unsent = [(key, partition, value) for partition, items in by_partition.items() for key, value in items]
                    self._queue[:0] = unsent
                    raise

    async def _send_partition(self, partition: int, items: list[tuple[bytes | None, bytes]]) -> None:
        # Accepted records leave `items`, so after an error it contains the unsent ones.
        if len(items) < MIN_BATCH_RECORDS:
            # aiokafka keeps one record batch per partition until its sender takes it, so a new batch
            # waits up to the producer's linger time. A few records go one by one instead and join it.
            while items:
                key, value = items[0]
                delivery = await self.app.producer.send(self.topic, key, value, partition, None, None)
                delivery.add_done_callback(partial(self._check_delivery, 1))
                del items[0]
            return
        # NOTE: reaches aiokafka's producer through Faust's private _ensure_producer (faust-streaming
        # 0.15.3), because Faust's own send takes one record per call.
        producer = self.app.producer._ensure_producer()
        while items:
            batch = producer.create_batch()
            count = 0
            # A batch accepts its first record whatever the size, then returns None once full.
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    break
                count += 1
            delivery = await producer.send_batch(batch, self.topic, partition=partition)
            delivery.add_done_callback(partial(self._check_delivery, count))
            del items[:count]

    def _check_delivery(self, records: int, delivery: Any) -> None:
        if delivery.cancelled() or delivery.exception() is None:
            self.stats.records_sent[self.topic] += records
            return
        self.stats.send_failures[self.topic] += records
        log.error("Failed to write %d records to %s: %r", records, self.topic, delivery.exception())


class ChangelogWriter(TopicSender):
    """Write keys of one Faust table: set the local store now, send the newest value of each changed key on `flush`.

    Keys and values are JSON, as the table's `json` schema reads them back during recovery.
    """

    def __init__(self, app: faust.App, table: Any, stats: WorkerStats) -> None:
        super().__init__(app, table.changelog_topic.get_topic_name(), stats)
        self.table = table
        # Changed keys since the last flush, each with its partition and newest value. The value is
        # kept here too, because a rebalance may drop it from the table before the flush.
        self._changed: dict[str, tuple[int, Any]] = {}

    def write(self, key: str, partition: int, value: Any) -> None:
        """Set `key` to `value` in the local store. Its changelog record goes out on the next `flush`."""
        # NOTE: when a send fails, the local value stays, but a restarted worker recovers the previous one.
        self.table.data[key] = value
        self._changed[key] = (partition, value)

    def changed(self) -> int:
        """Return the number of keys written since the last flush."""
        return len(self._changed)

    async def flush(self) -> None:
        """Send one changelog record per key written since the last flush, and return once the producer has them all."""
        # Encoding and queueing happen before the first await, so records of two overlapping
        # flushes still leave in write order.
        changed, self._changed = self._changed, {}
        for key, (partition, value) in changed.items():
            self.queue(orjson.dumps(key), partition, orjson.dumps(value))
        await self.drain()
