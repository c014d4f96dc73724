"""Measure the user-state table in-process: bytes per user and the processor's cost per event.

This is the lighter method for large user counts: no Kafka and no worker. UserProcessor writes into
a plain dict, which is what Faust's memory:// table store keeps, and every `COMMIT_EVERY` events
the users changed since the last commit are serialised once each, as the worker's changelog flush
before an offset commit does. Events are applied in batches per
topic, as the two agents do. Image vectors come from a pre-filled
cache. Each user makes one search (20 results) and one download from it.

Prints JSON: `bytes_per_user` is the growth of this process's RSS divided by the user count,
after a garbage collection; `events_per_s` is the processing rate of those events.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from pathlib import Path
from itertools import islice
from typing import Any, Iterable

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import make_workload, rss_bytes  # noqa: E402
from scenarios import iter_light_history  # noqa: E402
from stylestream.models.preference import PreferenceParams  # noqa: E402
from stylestream.schemas.validation import Limits  # noqa: E402
from stylestream.streams.processor import UserMessage, UserProcessor  # noqa: E402
from stylestream.streams.settings import Settings  # noqa: E402
from stylestream.streams.stats import WorkerStats  # noqa: E402


# Faust's default broker_commit_every: the most acknowledged events between two offset commits.
COMMIT_EVERY = 10_000


class ChangelogTable(dict):
    """A dict that serialises the values changed since the last `commit`, as the worker's changelog flush does."""

    changelog_bytes = 0

    def __init__(self) -> None:
        super().__init__()
        self.changed: set[str] = set()

    def write(self, key: str, partition: int, value: Any) -> None:
        """Set `value` as the processor does. Its changelog record is counted on the next commit."""
        self[key] = value
        self.changed.add(key)

    def commit(self) -> None:
        """Serialise each value changed since the last commit, counting the bytes of its changelog record."""
        self.changelog_bytes += sum(len(orjson.dumps(self[key])) for key in self.changed)
        self.changed.clear()


class StaticImages:
    """An image cache that already holds every vector."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    async def get_many(self, image_ids: Any) -> dict[str, np.ndarray]:
        return {image_id: self.vectors[image_id] for image_id in image_ids if image_id in self.vectors}

    async def wait_for(self, image_ids: Any, timeout: float) -> dict[str, np.ndarray]:
        return await self.get_many(image_ids)


async def apply_all(processor: UserProcessor, table: ChangelogTable, messages: Iterable[tuple[str, bytes, bytes]]) -> None:
    """Validate and apply the messages in batches per topic, as the two agents do, committing every `COMMIT_EVERY`.

    Each window of messages is applied as one searches batch, then one downloads batch; the update
    is the same in any order of events.
    """
    batch_size = Settings().user_batch_size
    numbered = enumerate(messages)
    since_commit = 0
    while window := list(islice(numbered, batch_size)):
        for topic in ("searches", "downloads"):
            batch = [UserMessage(key, value, 0, offset) for offset, (kind, key, value) in window if kind == topic]
            if batch:
                await processor.apply_batch(topic, topic, batch)
        since_commit += len(window)
        if since_commit >= COMMIT_EVERY:
            table.commit()
            since_commit = 0
    table.commit()


def make_processor(table: ChangelogTable, vectors: dict[str, np.ndarray]) -> UserProcessor:
    """Build a processor on one partition that writes into `table`."""
    return UserProcessor(
        table, table.write, StaticImages(vectors), PreferenceParams(), 64, Limits(), 1, WorkerStats(), lambda *_: None, 0.0
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000, help="users to create (default 100000)")
    parser.add_argument("--workload-users", type=int, default=0, help="instead, time the simulated workload of this many users (full histories)")
    args = parser.parse_args()
    if args.workload_users:
        return time_workload(args.workload_users)

    workload = make_workload(users=50, images=2000)
    rng = np.random.default_rng(0)
    vectors = {image["image_id"]: rng.normal(size=64) / 8.0 for image in workload.images}
    messages = ((kind, event["user_id"].encode(), orjson.dumps(event)) for kind, event in iter_light_history(workload, args.users))
    table = ChangelogTable()
    processor = make_processor(table, vectors)

    gc.collect()
    before = rss_bytes_self()
    started = time.perf_counter()
    asyncio.run(apply_all(processor, table, messages))
    seconds = time.perf_counter() - started
    gc.collect()
    after = rss_bytes_self()
    json.dump({
        "users": len(table), "bytes_per_user": (after - before) / len(table), "events_per_s": 2 * len(table) / seconds,
        "changelog_bytes_per_event": table.changelog_bytes / (2 * len(table)),
    }, sys.stdout)
    print()
    return 0


def time_workload(users: int) -> int:
    """Print the processing rate of a simulated marketplace's events, whose users have full histories."""
    workload = make_workload(users=users, images=2000)
    rng = np.random.default_rng(0)
    vectors = {image["image_id"]: rng.normal(size=64) / 8.0 for image in workload.images}
    messages = [(kind, event["user_id"].encode(), orjson.dumps(event)) for kind, event in workload.events]
    table = ChangelogTable()
    processor = make_processor(table, vectors)
    started = time.perf_counter()
    asyncio.run(apply_all(processor, table, messages))
    seconds = time.perf_counter() - started
    json.dump({
        "events": len(messages), "events_per_s": len(messages) / seconds,
        "changelog_bytes_per_event": table.changelog_bytes / len(messages),
    }, sys.stdout)
    print()
    return 0


def rss_bytes_self() -> int:
    import os

    return rss_bytes(os.getpid())


if __name__ == "__main__":
    sys.exit(main())
