"""ChangelogWriter: one record per changed key and flush, leaving in the order values were set."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson

from stylestream.streams.changelog import MIN_BATCH_RECORDS, ChangelogWriter
from stylestream.streams.stats import WorkerStats


class FakeBatch:
    """A record batch that holds up to `capacity` records, like aiokafka's BatchBuilder by size."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes | None, bytes]] = []

    def append(self, *, key: bytes | None, value: bytes, timestamp: Any) -> object | None:
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return object()


class SlowProducer:
    """Accept each batch after yielding to the event loop, and keep what was sent.

    It stands in for aiokafka's producer behind Faust's (`_ensure_producer` returns itself).
    """

    def __init__(self, batch_capacity: int = 100, failing_partition: int | None = None) -> None:
        self.batch_capacity = batch_capacity
        self.failing_partition = failing_partition
        self.sent: list[tuple[str, bytes | None, bytes, int]] = []
        self.batches = 0
        self.records_sent_alone = 0

    def _ensure_producer(self) -> "SlowProducer":
        return self

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int, timestamp: Any, headers: Any) -> asyncio.Future:
        await asyncio.sleep(0)
        if partition == self.failing_partition:
            raise ConnectionError(f"partition {partition} is unavailable")
        self.records_sent_alone += 1
        self.sent.append((topic, key, value, partition))
        delivery: asyncio.Future = asyncio.get_running_loop().create_future()
        delivery.set_result(None)
        return delivery

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.batch_capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future:
        await asyncio.sleep(0)
        if partition == self.failing_partition:
            raise ConnectionError(f"partition {partition} is unavailable")
        self.batches += 1
        self.sent.extend((topic, key, value, partition) for key, value in batch.records)
        delivery: asyncio.Future = asyncio.get_running_loop().create_future()
        delivery.set_result(None)
        return delivery


def make_writer(producer: SlowProducer | None = None) -> tuple[ChangelogWriter, SlowProducer, SimpleNamespace]:
    producer = producer or SlowProducer()
    table = SimpleNamespace(data={}, changelog_topic=SimpleNamespace(get_topic_name=lambda: "app-user-state-changelog"))
    return ChangelogWriter(SimpleNamespace(producer=producer), table, WorkerStats()), producer, table


def test_concurrent_writes_keep_set_order() -> None:
    writer, producer, table = make_writer()

    async def first() -> None:
        writer.write("user-1", 2, {"version": 1})
        writer.write("user-2", 0, {"version": 1})
        await writer.flush()

    async def second() -> None:
        await asyncio.sleep(0)  # runs while the first drain is sending
        writer.write("user-1", 2, {"version": 2})
        await writer.flush()

    async def both() -> None:
        await asyncio.gather(first(), second())

    asyncio.run(both())

    sent_user_1 = [orjson.loads(value)["version"] for _, key, value, _ in producer.sent if key == b'"user-1"']
    assert sent_user_1 == [1, 2]
    assert table.data["user-1"] == {"version": 2}
    assert {(key, partition) for _, key, _, partition in producer.sent} == {(b'"user-1"', 2), (b'"user-2"', 0)}


def test_flush_sends_newest_value_once_per_key() -> None:
    writer, producer, table = make_writer()

    async def run() -> None:
        for version in range(5):
            writer.write("user-1", 3, {"version": version})
        writer.write("user-2", 0, {"version": 0})
        assert producer.sent == []
        await writer.flush()
        await writer.flush()

    asyncio.run(run())

    assert [(key, partition, orjson.loads(value)["version"]) for _, key, value, partition in producer.sent] == [
        (b'"user-1"', 3, 4), (b'"user-2"', 0, 0),
    ]
    assert table.data["user-1"] == {"version": 4}
    assert writer.changed() == 0


def test_drain_returns_after_own_records_sent() -> None:
    writer, producer, _ = make_writer()

    async def run() -> int:
        writer.write("user-1", 1, {"version": 1})
        await writer.flush()
        return len(producer.sent)

    assert asyncio.run(run()) == 1


def test_full_batch_continues_in_next() -> None:
    writer, producer, _ = make_writer(SlowProducer(batch_capacity=7))
    count = MIN_BATCH_RECORDS + 4

    async def run() -> None:
        for version in range(count):
            writer.write(f"user-{version}", 1, {"version": version})
        await writer.flush()

    asyncio.run(run())

    assert producer.batches == -(-count // 7)
    assert producer.records_sent_alone == 0
    assert [orjson.loads(value)["version"] for _, _, value, _ in producer.sent] == list(range(count))


def test_few_records_sent_one_by_one() -> None:
    writer, producer, _ = make_writer()

    async def run() -> None:
        for version in range(3):
            writer.write(f"user-{version}", 0, {"version": version})
        await writer.flush()

    asyncio.run(run())

    assert producer.batches == 0
    assert producer.records_sent_alone == 3
    assert [orjson.loads(value)["version"] for _, _, value, _ in producer.sent] == [0, 1, 2]


def test_failed_send_keeps_unsent_records() -> None:
    writer, producer, _ = make_writer(SlowProducer(failing_partition=1))

    async def run() -> None:
        writer.write("user-a", 0, {"version": 1})
        writer.write("user-b", 1, {"version": 1})
        writer.write("user-c", 1, {"version": 2})
        try:
            await writer.flush()
        except ConnectionError:
            pass
        else:
            raise AssertionError("flush should raise the producer's error")
        producer.failing_partition = None
        await writer.flush()

    asyncio.run(run())

    assert [(key, partition) for _, key, _, partition in producer.sent] == [
        (b'"user-a"', 0), (b'"user-b"', 1), (b'"user-c"', 1),
    ]
