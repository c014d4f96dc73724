"""Records sent straight to the producer: table changelogs and the popularity topic.

Faust's `table[key] = value` queues each changelog record in its ProducerBuffer, which one task
hands to aiokafka record by record, and `Topic.send` wraps every record in futures and callbacks.
Here a table write sets the local store and queues its changelog record in the same step, so
records leave in the order the values were set, even when two agents write the same key. The
agents drain the queue after each batch, before its events are acknowledged. Faust flushes the
producer before every offset commit, so a committed offset never covers an event whose records
are unsent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Iterable

import faust
import orjson

from stylestream.streams.stats import WorkerStats

log = logging.getLogger(__name__)


class TopicSender:
    """Send raw records (key, partition, value) to one topic in the order they were queued.

    A partition of None lets the producer pick one from the key's hash.
    """

    def __init__(self, app: faust.App, topic: str, stats: WorkerStats) -> None:
        self.app = app
        self.topic = topic
        self.stats = stats
        self._queue: deque[tuple[bytes | None, int | None, bytes]] = deque()
        self._draining = asyncio.Lock()

    def queue(self, key: bytes | None, partition: int | None, value: bytes) -> None:
        """Queue a record for the next `drain`."""
        self._queue.append((key, partition, value))

    async def send(self, records: Iterable[tuple[bytes | None, int | None, bytes]]) -> None:
        """Queue the records and drain the queue."""
        self._queue.extend(records)
        await self.drain()

    async def drain(self) -> None:
        """Hand every queued record to the producer, oldest first, and return once it has accepted them.

        Delivery completes in the background; a failed one is logged and counted in `send_failures`.
        A caller that finds another drain running waits for it, which also sends the caller's records.
        """
        producer = self.app.producer
        async with self._draining:
            while self._queue:
                key, partition, value = self._queue.popleft()
                delivery = await producer.send(self.topic, key, value, partition, None, None)
                delivery.add_done_callback(self._check_delivery)

    def _check_delivery(self, delivery: Any) -> None:
        if delivery.cancelled() or delivery.exception() is None:
            return
        self.stats.send_failures[self.topic] += 1
        log.error("Failed to write a record to %s: %r", self.topic, delivery.exception())


class ChangelogWriter(TopicSender):
    """Write keys of one Faust table: set the local store and queue the changelog record together.

    Keys and values are JSON, as the table's `json` schema reads them back during recovery.
    """

    def __init__(self, app: faust.App, table: Any, stats: WorkerStats) -> None:
        super().__init__(app, table.changelog_topic.get_topic_name(), stats)
        self.table = table

    def write(self, key: str, partition: int, value: Any) -> None:
        """Set `key` to `value` in the local store and queue its changelog record for `partition`."""
        # NOTE: when a send fails, the local value stays, but a restarted worker recovers the previous one.
        self.table.data[key] = value
        self.queue(orjson.dumps(key), partition, orjson.dumps(value))
