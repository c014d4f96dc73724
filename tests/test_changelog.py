"""ChangelogWriter: records leave in the order values were set, across concurrent writers."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson

from stylestream.streams.changelog import ChangelogWriter
from stylestream.streams.stats import WorkerStats


class SlowProducer:
    """Accept each record after yielding to the event loop, and keep what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, int]] = []

    async def send(self, topic: str, key: bytes, value: bytes, partition: int, timestamp: Any, headers: Any) -> asyncio.Future:
        await asyncio.sleep(0)
        self.sent.append((topic, key, value, partition))
        delivery: asyncio.Future = asyncio.get_running_loop().create_future()
        delivery.set_result(None)
        return delivery


def make_writer() -> tuple[ChangelogWriter, SlowProducer, SimpleNamespace]:
    producer = SlowProducer()
    table = SimpleNamespace(data={}, changelog_topic=SimpleNamespace(get_topic_name=lambda: "app-user-state-changelog"))
    return ChangelogWriter(SimpleNamespace(producer=producer), table, WorkerStats()), producer, table


def test_concurrent_writes_keep_set_order() -> None:
    writer, producer, table = make_writer()

    async def first() -> None:
        writer.write("user-1", 2, {"version": 1})
        writer.write("user-2", 0, {"version": 1})
        await writer.drain()

    async def second() -> None:
        await asyncio.sleep(0)  # runs while the first drain is sending
        writer.write("user-1", 2, {"version": 2})
        await writer.drain()

    async def both() -> None:
        await asyncio.gather(first(), second())

    asyncio.run(both())

    sent_user_1 = [orjson.loads(value)["version"] for _, key, value, _ in producer.sent if key == b'"user-1"']
    assert sent_user_1 == [1, 2]
    assert table.data["user-1"] == {"version": 2}
    assert {(key, partition) for _, key, _, partition in producer.sent} == {(b'"user-1"', 2), (b'"user-2"', 0)}


def test_drain_returns_after_own_records_sent() -> None:
    writer, producer, _ = make_writer()

    async def run() -> int:
        writer.write("user-1", 1, {"version": 1})
        await writer.drain()
        return len(producer.sent)

    assert asyncio.run(run()) == 1
