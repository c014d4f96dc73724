"""Records of the popularity topic: applied downloads per image, on their way to the count table.

User events are partitioned by user, and the image-download-counts table by image, so the user
agents repartition their counts through this topic. `DownloadTally` adds up the downloads the user
agents apply. Before every offset commit it sends them as one record per partition of the topic,
with no key and a JSON object of image id to count, for example `{"img-1": 2}`. Every image in a
record belongs to that partition under the default partitioner, as the table's keys do.

A consumed record costs Faust about as much as a user event. With one record per image and batch,
this topic would carry about 0.4 records per user event on the simulated workload. A record with a
key is the earlier form, still read: the key is one image id and the value its count as a decimal
integer, where an empty value counts 1.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Mapping

import orjson

from stylestream.streams.changelog import TopicSender
from stylestream.streams.topics import partition_for


class InvalidPopularityRecord(ValueError):
    """A popularity record whose value is not a count per image."""


def encode_counts(counts: Mapping[str, int], partitions: int) -> list[tuple[None, int, bytes]]:
    """Return the records (key, partition, value) that carry `counts` to a topic of `partitions` partitions."""
    by_partition: dict[int, dict[str, int]] = defaultdict(dict)
    for image_id, count in counts.items():
        by_partition[partition_for(image_id, partitions)][image_id] = count
    return [(None, partition, orjson.dumps(part)) for partition, part in sorted(by_partition.items())]


class DownloadTally:
    """Downloads per image applied since the last flush, on their way to the popularity topic."""

    def __init__(self, sender: TopicSender, partitions: int) -> None:
        self.sender = sender
        self.partitions = partitions
        self._counts: Counter[str] = Counter()

    def add(self, counts: Mapping[str, int]) -> None:
        """Add applied downloads per image."""
        self._counts.update(counts)

    async def flush(self) -> None:
        """Send the counts added since the last flush, and return once the producer has them."""
        counts, self._counts = self._counts, Counter()
        await self.sender.send(encode_counts(counts, self.partitions))


def decode_counts(key: bytes | None, value: bytes | None) -> dict[str, int]:
    """Return the download count per image of one popularity record.

    Raises InvalidPopularityRecord when a key is not UTF-8, or the value is neither a JSON object of positive integer
    counts nor, for a keyed record, a decimal count.
    """
    if key:
        try:
            image_id = key.decode()
        except UnicodeDecodeError:
            raise InvalidPopularityRecord(f"key must be a UTF-8 image id, got {key[:32]!r}") from None
        return {image_id: _keyed_count(value)}
    try:
        counts = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise InvalidPopularityRecord(f"value is not JSON: {exc}") from None
    if not isinstance(counts, dict):
        raise InvalidPopularityRecord(f"value must be a JSON object of image id to count, got {type(counts).__name__}")
    for image_id, count in counts.items():
        if type(count) is not int or count < 1:
            raise InvalidPopularityRecord(f"count of image {image_id!r} must be a positive integer, got {count!r}")
    return counts


def _keyed_count(value: bytes | None) -> int:
    if not value:
        return 1
    try:
        count = int(value)
    except ValueError:
        raise InvalidPopularityRecord(f"value must be a decimal count, got {value[:32]!r}") from None
    if count < 1:
        raise InvalidPopularityRecord(f"count must be positive, got {count}")
    return count
