"""Records sent straight to the producer a batch at a time: table changelogs and the popularity topic.

Faust's `table[key] = value` queues each changelog record in its ProducerBuffer, which one task
hands to aiokafka record by record, and `Topic.send` wraps every record in futures and callbacks.
At a few hundred writes per second those per-record paths took a large share of the worker's time.
Here the agents update a table's local store at once and await the sends after each batch, before
its events are acknowledged. Faust flushes the producer before every offset commit, so a committed
offset never covers an event whose records are unsent.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import faust
import orjson

from stylestream.streams.stats import WorkerStats

log = logging.getLogger(__name__)


class TopicSender:
    """Send raw records (key, partition, value) to one topic; a partition of None uses the key's hash."""

    def __init__(self, app: faust.App, topic: str, stats: WorkerStats) -> None:
        self.app = app
        self.topic = topic
        self.stats = stats

    async def send(self, records: Iterable[tuple[bytes | None, int | None, bytes]]) -> None:
        """Hand the records to the producer and return once it has accepted them.

        Delivery completes in the background; a failed one is logged and counted in `send_failures`.
        """
        producer = self.app.producer
        for key, partition, value in records:
            delivery = await producer.send(self.topic, key, value, partition, None, None)
            delivery.add_done_callback(self._check_delivery)

    def _check_delivery(self, delivery: Any) -> None:
        if delivery.cancelled() or delivery.exception() is None:
            return
        self.stats.send_failures[self.topic] += 1
        log.error("Failed to write a record to %s: %r", self.topic, delivery.exception())


class ChangelogWriter(TopicSender):
    """Write keys of one Faust table: its local store at once, its changelog topic with `send`.

    Keys and values are JSON, as the table's `json` schema reads them back during recovery.
    """

    def __init__(self, app: faust.App, table: Any, stats: WorkerStats) -> None:
        super().__init__(app, table.changelog_topic.get_topic_name(), stats)
        self.table = table

    def set_local(self, key: str, value: Any) -> None:
        """Set `key` in the table's local store without a changelog record; `send_values` must follow."""
        self.table.data[key] = value

    async def send_values(self, writes: Iterable[tuple[str, int, Any]]) -> None:
        """Send changelog records for (key, partition, value) writes."""
        # NOTE: when a send fails, the local value stays, but a restarted worker recovers the previous one.
        await self.send((orjson.dumps(key), partition, orjson.dumps(value)) for key, partition, value in writes)
