"""OffsetGuard: events of a partition are applied in offset order, and skipped ranges are sought back."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from stylestream.streams.ordering import OffsetGuard
from stylestream.streams.stats import WorkerStats

TOPIC = "downloads"


@dataclass(eq=False)
class FakeMessage:
    """The fields of a Faust message that the guard reads and sets."""

    topic: str
    partition: int
    offset: int
    acked: bool = False

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass
class FakeConsumer:
    """Records the seeks and gaps that the guard requests from Faust's consumer."""

    seeks: list[tuple[TP, int]] = field(default_factory=list)
    gaps: list[tuple[TP, int, int]] = field(default_factory=list)
    _unacked_messages: set[Any] = field(default_factory=set)
    _read_offset: dict[TP, int | None] = field(default_factory=dict)

    async def seek(self, tp: TP, offset: int) -> None:
        # Faust's seek sets the read offset; its fetch loop sets it again after each record it hands over.
        self.seeks.append((tp, offset))
        self._read_offset[tp] = offset

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        self.gaps.append((tp, offset_from, offset_to))


@dataclass
class FakeApp:
    consumer: FakeConsumer = field(default_factory=FakeConsumer)


def _guard(records_exist: bool) -> tuple[OffsetGuard, FakeConsumer]:
    app = FakeApp()
    guard = OffsetGuard(app, {TOPIC}, lookup=lambda topic, partition, start, end: records_exist, stats=WorkerStats())
    guard.set_position(TOPIC, 0, 10)
    return guard, app.consumer


def _admit(guard: OffsetGuard, message: FakeMessage) -> bool:
    return asyncio.run(guard.admit(message))


def test_in_order_events_admitted() -> None:
    guard, consumer = _guard(records_exist=True)

    admitted = [_admit(guard, FakeMessage(TOPIC, 0, offset)) for offset in (10, 11, 12)]

    assert admitted == [True, True, True]
    assert consumer.seeks == []
    assert guard.expected[(TOPIC, 0)] == 13


def test_skipped_records_sought_back() -> None:
    guard, consumer = _guard(records_exist=True)
    ahead = FakeMessage(TOPIC, 0, 15)
    consumer._unacked_messages.add(ahead)

    first = _admit(guard, ahead)
    stale = _admit(guard, FakeMessage(TOPIC, 0, 16))
    redelivered = [_admit(guard, FakeMessage(TOPIC, 0, offset)) for offset in range(10, 16)]

    assert first is False
    assert stale is False
    assert consumer.seeks == [(TP(TOPIC, 0), 10)]
    assert ahead.acked is True
    assert ahead not in consumer._unacked_messages
    assert redelivered == [True] * 6
    assert guard.stats.offset_gaps_rewound == 1
    assert (TOPIC, 0) not in guard.rewinding
    assert consumer.gaps == []


def test_read_offset_unknown_while_rewinding() -> None:
    guard, consumer = _guard(records_exist=True)
    tp = TP(TOPIC, 0)

    _admit(guard, FakeMessage(TOPIC, 0, 15))
    # A record fetched before the seek is handed over after it and moves the read offset past 10.
    consumer._read_offset[tp] = 16
    during = consumer._read_offset[tp]
    _admit(guard, FakeMessage(TOPIC, 0, 10))
    consumer._read_offset[tp] = 10
    after = consumer._read_offset[tp]

    assert during is None
    assert after == 10
    assert consumer._read_offset[TP(TOPIC, 1)] is None


def test_gap_without_records_acknowledged() -> None:
    guard, consumer = _guard(records_exist=False)

    admitted = _admit(guard, FakeMessage(TOPIC, 0, 12))

    assert admitted is True
    assert consumer.gaps == [(TP(TOPIC, 0), 10, 11)]
    assert guard.stats.offset_gaps_acknowledged == 1
    assert consumer.seeks == []
    assert guard.expected[(TOPIC, 0)] == 13


def test_redelivered_event_admitted() -> None:
    guard, consumer = _guard(records_exist=True)
    _admit(guard, FakeMessage(TOPIC, 0, 10))
    _admit(guard, FakeMessage(TOPIC, 0, 11))

    again = _admit(guard, FakeMessage(TOPIC, 0, 10))

    assert again is True
    assert guard.expected[(TOPIC, 0)] == 12
    assert consumer.seeks == []


def test_other_topics_keep_faust_gaps() -> None:
    guard, consumer = _guard(records_exist=True)

    asyncio.run(guard.app.consumer._add_gap(TP("images", 0), 3, 5))
    asyncio.run(guard.app.consumer._add_gap(TP(TOPIC, 0), 3, 5))

    assert consumer.gaps == [(TP("images", 0), 3, 5)]
