"""Popularity records: counts per image, grouped by the partition each image belongs to."""

from __future__ import annotations

import asyncio
from typing import Iterable

import pytest

from stylestream.streams.popularity import DownloadTally, InvalidPopularityRecord, decode_counts, encode_counts
from stylestream.streams.topics import partition_for


def test_encode_one_record_per_partition() -> None:
    counts = {f"img-{number}": number + 1 for number in range(40)}

    records = encode_counts(counts, partitions=3)

    assert [partition for _, partition, _ in records] == sorted({partition_for(image_id, 3) for image_id in counts})
    decoded: dict[str, int] = {}
    for key, partition, value in records:
        assert key is None
        part = decode_counts(key, value)
        assert all(partition_for(image_id, 3) == partition for image_id in part)
        decoded.update(part)
    assert decoded == counts


def test_encode_nothing_for_no_downloads() -> None:
    assert encode_counts({}, partitions=2) == []


class RecordingSender:
    """A TopicSender stand-in that keeps the records it is given."""

    def __init__(self) -> None:
        self.sent: list[tuple[None, int, bytes]] = []

    async def send(self, records: Iterable[tuple[None, int, bytes]]) -> None:
        self.sent.extend(records)


def test_tally_sends_sum_of_batches_per_flush() -> None:
    sender = RecordingSender()
    tally = DownloadTally(sender, partitions=2)  # type: ignore[arg-type]

    async def run() -> list[dict[str, int]]:
        tally.add({"img-1": 1, "img-2": 2})
        tally.add({"img-1": 3})
        await tally.flush()
        first = [decode_counts(key, value) for key, _, value in sender.sent]
        await tally.flush()
        return first

    first = asyncio.run(run())

    assert {image_id: count for part in first for image_id, count in part.items()} == {"img-1": 4, "img-2": 2}
    assert len(sender.sent) == len(first)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [(b"img-1", None, {"img-1": 1}), (b"img-1", b"", {"img-1": 1}), (b"img-1", b"7", {"img-1": 7})],
)
def test_decode_keyed_record(key: bytes, value: bytes | None, expected: dict[str, int]) -> None:
    assert decode_counts(key, value) == expected


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (None, b"{not json", "not JSON"),
        (None, b"[1, 2]", "JSON object"),
        (None, b'{"img-1": 0}', "positive integer"),
        (None, b'{"img-1": 1.5}', "positive integer"),
        (None, b'{"img-1": true}', "positive integer"),
        (None, None, "not JSON"),
        (b"img-1", b"seven", "decimal count"),
        (b"img-1", b"-2", "positive"),
        (b"\xff", b"1", "UTF-8 image id"),
    ],
)
def test_decode_rejects_invalid_record(key: bytes | None, value: bytes | None, message: str) -> None:
    with pytest.raises(InvalidPopularityRecord, match=message):
        decode_counts(key, value)
