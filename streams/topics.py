"""Topic declarations: every input and dead-letter topic with its partition count.

Topics are created before anything produces to them, and their partition counts are checked at
start-up. A topic auto-created by an early producer gets the broker's default partition count;
Faust then restarts the agent on a partition mismatch forever while the worker reports ready, so a
mismatch here stops the worker with a message instead.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner import murmur2

from stylestream.schemas.errors import StylestreamError
from stylestream.streams.kafka_security import kafka_python_options
from stylestream.streams.settings import Settings

log = logging.getLogger(__name__)


class TopicError(StylestreamError):
    """A topic is missing, has the wrong partition count, or could not be created."""


@dataclass(frozen=True)
class TopicSpec:
    """A topic stylestream owns: its name and partition count."""

    name: str
    partitions: int


@functools.lru_cache(maxsize=1 << 20)
def partition_for(key: str, partitions: int) -> int:
    """Return the partition Kafka's default partitioner (murmur2) picks for a string key (cached)."""
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Return the input topics and their dead-letter topics for these settings."""
    inputs = [
        TopicSpec(settings.downloads_topic, settings.partitions),
        TopicSpec(settings.searches_topic, settings.partitions),
        TopicSpec(settings.images_topic, settings.image_partitions),
    ]
    dead_letters = [TopicSpec(settings.dlq_topic(spec.name), 1) for spec in inputs]
    return inputs + dead_letters


def _admin(bootstrap: str, options: dict[str, Any], attempts: int = 10) -> KafkaAdminClient:
    for attempt in range(1, attempts + 1):
        try:
            return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="stylestream-admin", request_timeout_ms=10000, **options)
        except KafkaError as exc:
            if attempt == attempts:
                raise TopicError(f"cannot reach Kafka at {bootstrap}: {exc}; check the broker URL") from exc
            log.warning("Kafka admin connection to %s failed (attempt %d/%d): %s", bootstrap, attempt, attempts, exc)
            time.sleep(min(0.5 * attempt, 3.0))
    raise AssertionError("unreachable")


def partition_counts(bootstrap: str, names: list[str], options: dict[str, Any] | None = None) -> dict[str, int]:
    """Return the partition count of each existing topic among `names`; `options` are client security settings."""
    admin = _admin(bootstrap, options or {})
    try:
        existing = set(admin.list_topics())
        present = [name for name in names if name in existing]
        if not present:
            return {}
        return {item.get("name", item.get("topic")): len(item["partitions"]) for item in admin.describe_topics(present)}
    finally:
        admin.close()


def declare_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> None:
    """Create missing topics and check the partition counts of existing ones.

    Raises TopicError naming the topic, both counts and the fix when a count differs.
    """
    specs = specs or topic_specs(settings)
    bootstrap = settings.bootstrap_servers
    options = kafka_python_options(settings)
    counts = partition_counts(bootstrap, [spec.name for spec in specs], options)
    missing = [spec for spec in specs if spec.name not in counts]
    if missing:
        admin = _admin(bootstrap, options)
        try:
            for spec in missing:
                try:
                    admin.create_topics([NewTopic(spec.name, spec.partitions, settings.replication_factor)])
                    log.info("Created topic %s with %d partitions", spec.name, spec.partitions)
                except TopicAlreadyExistsError:
                    log.info("Topic %s was created concurrently", spec.name)
        finally:
            admin.close()
        counts = _wait_for_topics(bootstrap, [spec.name for spec in specs], options)
    for spec in specs:
        actual = counts.get(spec.name)
        if actual != spec.partitions:
            raise TopicError(
                f"topic {spec.name!r} has {actual} partitions but stylestream is configured for {spec.partitions}. "
                "A producer may have auto-created it with the broker's default. Either set the partition "
                f"setting to {actual} (STYLESTREAM_PARTITIONS or STYLESTREAM_IMAGE_PARTITIONS), or delete "
                "the topic and let stylestream declare it."
            )


def _wait_for_topics(bootstrap: str, names: list[str], options: dict[str, Any], timeout: float = 30.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = partition_counts(bootstrap, names, options)
        if len(counts) == len(names) or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)
