"""Committed offsets for every input partition before the consumer group first consumes it.

A partition without a committed offset starts wherever the consumer's reset policy puts it. In the
two-worker rebalance test (faust-streaming 0.15.3, aiokafka 0.14.0), the new owner of such a
partition skipped the events the killed owner had not committed. `stylestream.streams.delivery`
explains the cause and contains the main fix. Committing the log-start offset for every
partition that has none, before the worker joins the group, makes the group's starting point
explicit: every partition then resumes from a committed offset, and lag tools show all of them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from stylestream.streams.kafka_security import kafka_python_options
from stylestream.streams.settings import Settings

log = logging.getLogger(__name__)


def consumed_topics(settings: Settings) -> list[str]:
    """Return the topics a worker's consumer group reads: the three inputs and the popularity topic."""
    return [settings.downloads_topic, settings.searches_topic, settings.images_topic, settings.popularity_topic()]


def _missing(admin: KafkaAdminClient, group: str, partitions: list[TopicPartition]) -> list[TopicPartition]:
    committed = admin.list_group_offsets(group).get(group, {})
    return [tp for tp in partitions if tp not in committed or committed[tp].offset < 0]


def commit_missing_offsets(settings: Settings, topics: list[str] | None = None, attempts: int = 12) -> int:
    """Commit the log-start offset of every partition of `topics` that the worker's group has not committed.

    Returns the number of partitions committed. Retries while the group coordinator is unavailable or
    still loading. Kafka accepts such a commit only while the group has no active member, so a worker
    that joins a running group leaves this to the first worker, and a partition still missing an
    offset then is logged as a warning.
    """
    group = settings.app_id
    for attempt in range(1, attempts + 1):
        try:
            return _commit_missing_offsets(settings, topics)
        except KafkaError as exc:
            if not exc.retriable or attempt == attempts:
                log.warning("Could not commit log-start offsets of consumer group %s: %r", group, exc)
                return 0
            log.info("Committing log-start offsets of consumer group %s failed (attempt %d/%d): %r; retrying", group, attempt, attempts, exc)
            time.sleep(min(0.25 * attempt, 2.0))
    return 0


def _commit_missing_offsets(settings: Settings, topics: list[str] | None) -> int:
    group = settings.app_id
    options: dict[str, Any] = kafka_python_options(settings)
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, client_id="stylestream-offsets", enable_auto_commit=False, **options)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="stylestream-offsets", **options)
    try:
        existing = set(consumer.topics())
        partitions = [
            TopicPartition(topic, number)
            for topic in (topics if topics is not None else consumed_topics(settings))
            if topic in existing
            for number in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        missing = _missing(admin, group, partitions)
        if not missing:
            return 0

        starts = consumer.beginning_offsets(missing)
        results = admin.alter_group_offsets(group, {tp: OffsetAndMetadata(starts[tp], "", -1) for tp in missing})
        failed = {tp: error for tp, error in results.items() if error is not None and error.errno != 0}
        retriable = [error for error in failed.values() if error.retriable]
        if retriable:
            raise retriable[0]()

        if failed:
            log.warning(
                "Consumer group %s is active and has no committed offset for %s, so they were left as they are; "
                "a worker that takes one over in a rebalance may skip its uncommitted events",
                group, ", ".join(f"{tp.topic}[{tp.partition}]" for tp in failed),
            )
        committed = len(missing) - len(failed)
        log.info("Committed log-start offsets of consumer group %s for %d partitions", group, committed)
        return committed
    finally:
        admin.close()
        consumer.close()
