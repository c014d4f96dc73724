"""The dead-letter path: rejected messages go to `<topic>.dlq` with their original bytes and a reason."""

from __future__ import annotations

import logging
from typing import Any

import faust

from stylestream.streams.stats import WorkerStats

log = logging.getLogger(__name__)


class DeadLetters:
    """Send rejected messages to the dead-letter topic of their source topic.

    The value is the original bytes; headers carry the reason, the error message and the source
    topic, partition and offset.
    """

    def __init__(self, topics: dict[str, faust.TopicT], stats: WorkerStats) -> None:
        self.topics = topics
        self.stats = stats

    async def send(
        self, source: str, key: bytes | None, value: bytes | None, reason: str, error: str, partition: int = -1, offset: int = -1
    ) -> None:
        """Dead-letter one message and count it by reason."""
        headers: dict[str, Any] = {
            "reason": reason.encode(),
            "error": error[:2000].encode("utf-8", "replace"),
            "source_topic": source.encode(),
            "source_partition": str(partition).encode(),
            "source_offset": str(offset).encode(),
        }
        log.warning("Dead-lettering %s[%d]@%d (%s): %s", source, partition, offset, reason, error[:300])
        await self.topics[source].send(key=key, value=value if value is not None else b"", headers=headers)
        self.stats.dead_letters[reason] += 1
