"""Popularity records: counts per image, grouped by the partition each image belongs to."""

from __future__ import annotations

import pytest

from stylestream.streams.popularity import InvalidPopularityRecord, decode_counts, encode_counts
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
