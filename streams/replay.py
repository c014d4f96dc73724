"""Replay: rebuild every user's state from the event topics at transport speed.

A replay reads `downloads` and `searches` with a bulk aiokafka consumer, up to the end offsets it
finds when it starts. It validates each fetched batch at once (`validate_batch`), with the same
outcome as the worker's per-event validation, and skips invalid events, which the worker
dead-letters. Then it computes the states in one vectorised pass (`models.batch`) and
bulk-upserts the served vectors into the model version's users collection.

Continuity: with `seed_app_id`, the replay hands its result to the live worker of that app id.
It writes each state to the table's changelog topic (the worker recovers its table from it),
then commits the consumer group's offsets at the replay's end offsets. The worker then applies
exactly the events after the replay, including those produced while it ran. The group must have
no running members while it is seeded.

Progress is checkpointed in chunks of raw messages under `data_dir/replay/`, so an interrupted replay
resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import pickle
import shutil
import time
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata
from tqdm import tqdm

from stylestream.models.batch import BatchResult, EventLog, build_states
from stylestream.models.encoder import StyleEncoder
from stylestream.models.preference import UserState
from stylestream.schemas.errors import StylestreamError
from stylestream.schemas.validation import VALIDATORS, InvalidEvent, validate_batch
from stylestream.streams.kafka_security import kafka_python_options
from stylestream.streams.settings import Settings
from stylestream.streams.store import StyleStore
from stylestream.streams.topics import partition_for

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 250_000
UPSERT_BATCH = 1000


class ReplayError(StylestreamError):
    """A replay could not read its topics, seed the live worker, or write the store."""


@dataclass
class ReplayResult:
    """Counts, timings, end offsets and target collections of one replay."""

    events: int = 0
    invalid: int = 0
    event_seconds: float = 0.0
    users: int = 0
    users_with_vectors: int = 0
    images: int = 0
    seconds: float = 0.0
    end_offsets: dict[str, int] = field(default_factory=dict)
    collections: dict[str, str] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        """Return the throughput of reading events and computing and writing users (image encoding excluded)."""
        return self.events / self.event_seconds if self.event_seconds else 0.0


def offset_ranges(settings: Settings, topics: list[str], start: str | float) -> dict[TopicPartition, tuple[int, int]]:
    """Return (start, end) offsets of every partition: from the beginning or from a UTC epoch time, to the end now."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, **kafka_python_options(settings))
    try:
        partitions = [
            KafkaTopicPartition(topic, number) for topic in topics for number in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            raise ReplayError(f"none of the topics {topics} exist on {settings.broker}")
        ends = consumer.end_offsets(partitions)
        if start == "earliest":
            starts = consumer.beginning_offsets(partitions)
        else:
            found = consumer.offsets_for_times({tp: int(float(start) * 1000) for tp in partitions})
            starts = {tp: (found[tp].offset if found[tp] is not None else ends[tp]) for tp in partitions}
    finally:
        consumer.close()
    return {TopicPartition(tp.topic, tp.partition): (starts[tp], ends[tp]) for tp in partitions}


async def _consume(
    settings: Settings, ranges: dict[TopicPartition, tuple[int, int]], checkpoint: Path, limits: Any, log_so_far: EventLog
) -> int:
    """Read and validate every event in `ranges` into `log_so_far`; return the count of invalid events.

    Resumes from and appends to the chunks in the `checkpoint` folder. The log is filled in place
    rather than returned, because asyncio may format a coroutine's result for its debug output.
    """
    kinds = {settings.downloads_topic: "downloads", settings.searches_topic: "searches"}
    positions, invalid, resumed = {tp: start for tp, (start, _) in ranges.items()}, 0, 0
    for chunk_path in sorted(checkpoint.glob("raw-chunk-*.pickle")):
        chunk = pickle.loads(chunk_path.read_bytes())
        for topic, partition, values, keys, offsets in chunk["batches"]:
            invalid += _add_batch(log_so_far, kinds[topic], topic, partition, settings.partitions, values, keys, offsets, limits)
            resumed += len(offsets)
        positions.update({TopicPartition(topic, partition): offset for (topic, partition), offset in chunk["positions"].items()})
    if resumed:
        log.info("Resuming replay from %s with %d events already read", checkpoint, resumed)
    pending = {tp for tp, (_, end) in ranges.items() if positions[tp] < end}
    total = sum(end - start for start, end in ranges.values())
    done = sum(positions[tp] - start for tp, (start, _) in ranges.items())

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, fetch_max_bytes=64 * 1048576,
        max_partition_fetch_bytes=16 * 1048576, max_poll_records=50_000,
    )
    await consumer.start()
    delta: list[tuple[str, int, list[Any], list[Any], list[int]]] = []
    delta_events = 0
    try:
        consumer.assign(list(pending))
        for tp in pending:
            consumer.seek(tp, positions[tp])
        with tqdm(total=total, initial=done, unit="event", desc="replay", smoothing=0.1) as bar:
            while pending:
                batches = await consumer.getmany(*pending, timeout_ms=1000, max_records=50_000)
                for tp, messages in batches.items():
                    end = ranges[tp][1]
                    taken = messages if messages[-1].offset < end else [message for message in messages if message.offset < end]
                    values, keys = [message.value for message in taken], [message.key for message in taken]
                    offsets = [message.offset for message in taken]
                    invalid += _add_batch(log_so_far, kinds[tp.topic], tp.topic, tp.partition, settings.partitions, values, keys, offsets, limits)
                    delta.append((tp.topic, tp.partition, values, keys, offsets))
                    delta_events += len(taken)
                    positions[tp] = messages[-1].offset + 1 if len(taken) == len(messages) else end
                    if positions[tp] >= end:
                        pending.discard(tp)
                        consumer.pause(tp)
                    bar.update(len(taken))
                    if delta_events >= CHECKPOINT_EVERY:
                        _save_chunk(checkpoint, delta, positions)
                        delta, delta_events = [], 0
    finally:
        await consumer.stop()
    return invalid


def _add_batch(
    event_log: EventLog, kind: str, topic: str, partition: int, partitions: int, values: list[Any], keys: list[Any],
    offsets: list[int], limits: Any,
) -> int:
    """Validate the messages of one topic-partition into `event_log`; return the count of invalid ones."""
    validated = validate_batch(kind, values, keys, limits)
    columns, rows = validated.columns, validated.rows
    # The worker dead-letters user events on a partition their key does not map to.
    owners = list(map(partition_for, columns["user_id"], repeat(partitions)))
    if owners.count(partition) != len(owners):
        kept = [index for index, owner in enumerate(owners) if owner == partition]
        columns = {name: [column[index] for index in kept] for name, column in columns.items()}
        rows = [rows[index] for index in kept]
    source = f"{topic}:{partition}"
    kept_offsets = list(map(offsets.__getitem__, rows))
    if kind == "downloads":
        event_log.extend_downloads(columns, source, kept_offsets)
    else:
        event_log.extend_searches(columns, source, kept_offsets)
    return len(values) - len(rows)


def _save_chunk(folder: Path, batches: list[tuple[str, int, list[Any], list[Any], list[int]]], positions: dict[TopicPartition, int]) -> None:
    """Write the messages read since the last chunk, as fetched, and the positions after them, atomically.

    A chunk contains raw messages rather than validated events because they pickle several times
    faster; a resumed replay validates them again.
    """
    folder.mkdir(parents=True, exist_ok=True)
    number = len(list(folder.glob("raw-chunk-*.pickle")))
    saved = {"batches": batches, "positions": {(tp.topic, tp.partition): offset for tp, offset in positions.items()}}
    temporary = folder / f"raw-chunk-{number:06d}.tmp"
    temporary.write_bytes(pickle.dumps(saved, protocol=pickle.HIGHEST_PROTOCOL))
    temporary.replace(folder / f"raw-chunk-{number:06d}.pickle")


def reencode_images(settings: Settings, encoder: StyleEncoder, store: StyleStore, batch_size: int = 512) -> int:
    """Encode every image of the images topic with `encoder` into `store` (a versioned store); return the count."""
    ranges = offset_ranges(settings, [settings.images_topic], "earliest")
    limits = settings.limits(encoder.schema.deep_dim, encoder.schema.colors_dim)
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, **kafka_python_options(settings))
    written = 0
    batch: list[dict[str, Any]] = []
    try:
        for tp, (start, end) in ranges.items():
            kafka_tp = _kafka_tp(tp)
            consumer.assign([kafka_tp])
            consumer.seek(kafka_tp, start)
            position = start
            while position < end:
                for records in consumer.poll(timeout_ms=1000, max_records=5000).values():
                    for record in records:
                        position = record.offset + 1
                        if record.offset >= end:
                            break
                        try:
                            batch.append(VALIDATORS["images"](record.value, limits, key=record.key))
                        except InvalidEvent:
                            continue
                        if len(batch) >= batch_size:
                            written += _encode_batch(encoder, store, batch)
                            batch = []
        written += _encode_batch(encoder, store, batch)
    finally:
        consumer.close()
    log.info("Re-encoded %d images into %s with model %s", written, store.images, encoder.model_version)
    return written


def _encode_batch(encoder: StyleEncoder, store: StyleStore, images: list[dict[str, Any]]) -> int:
    if not images:
        return 0
    vectors = encoder.encode(
        [image["deep"] for image in images], [image["colors"] for image in images],
        [image["categories"] for image in images], [image["keywords"] for image in images],
    )
    payloads = [
        {key: image[key] for key in ("image_id", "timestamp", "categories", "keywords", "creator")}
        | {"metadata": image["metadata"] or {}, "model_version": encoder.model_version}
        for image in images
    ]
    store.upsert_images(payloads, vectors)
    return len(images)


def write_users(store: StyleStore, batch: BatchResult, model_version: str) -> int:
    """Upsert the served vector of every user with one, in batches; return how many were written."""
    now = time.time()
    rows, vectors = batch.served_vectors()
    vectors = vectors.astype(np.float32)
    for start in range(0, len(rows), UPSERT_BATCH):
        chunk = rows[start:start + UPSERT_BATCH].tolist()
        user_ids = [batch.users[row] for row in chunk]
        store.upsert_user_matrix(user_ids, vectors[start:start + UPSERT_BATCH], user_payloads(batch, chunk, model_version, now))
    return len(rows)


def user_payloads(batch: BatchResult, rows: list[int], model_version: str, updated_at: float) -> list[dict[str, Any]]:
    """Return the Qdrant payloads of the users in `rows`, equal to `user_payload` of their states."""
    counts, last_times = batch.event_counts[rows].tolist(), batch.last_event_times[rows].tolist()
    return [
        {
            "user_id": batch.users[row], "event_count": count, "last_event_time": last_time, "model_version": model_version,
            "updated_at": updated_at, "recent_downloads": [image_id for _, image_id in batch.recent[row]],
        }
        for row, count, last_time in zip(rows, counts, last_times)
    ]


def _ensure_compacted_topic(admin: KafkaAdminClient, name: str, partitions: int, replication: int) -> None:
    try:
        admin.create_topics([NewTopic(name, partitions, replication, topic_configs={"cleanup.policy": "compact"})])
        log.info("Created changelog topic %s with %d partitions", name, partitions)
    except TopicAlreadyExistsError:
        pass


def seed_worker(
    settings: Settings, app_id: str, states: dict[str, UserState], download_counts: dict[str, int],
    end_offsets: dict[TopicPartition, int],
) -> None:
    """Hand a replay's result to the live worker of `app_id`: table changelogs first, then group offsets.

    Raises ReplayError when the consumer group still has running members.
    """
    options = kafka_python_options(settings)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="stylestream-replay", **options)
    try:
        described = admin.describe_groups([app_id]).get(app_id, {})
        members = described.get("members") or []
        if members:
            raise ReplayError(
                f"consumer group {app_id!r} has {len(members)} running members; stop its workers before seeding, "
                "or replay without --seed to only fill the collection"
            )
        state_topic = f"{app_id}-user-state-changelog"
        counts_topic = f"{app_id}-image-download-counts-changelog"
        _ensure_compacted_topic(admin, state_topic, settings.partitions, settings.replication_factor)
        _ensure_compacted_topic(admin, counts_topic, settings.image_partitions, settings.replication_factor)

        # Step 1: the states, on the partition that owns each user, as the worker itself writes them.
        producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=20, **options)
        for user_id, state in states.items():
            producer.send(
                state_topic, key=orjson.dumps(user_id), value=orjson.dumps(state.to_dict()),
                partition=partition_for(user_id, settings.partitions),
            )
        for image_id, count in download_counts.items():
            producer.send(counts_topic, key=orjson.dumps(image_id), value=orjson.dumps(count), partition=partition_for(image_id, settings.image_partitions))
        producer.flush(timeout=120)
        producer.close()

        # Step 2: the group continues after the replay's last events. The popularity topic of the
        # group starts at its end, because the seeded counts already include every replayed download.
        offsets = {
            _kafka_tp(tp): OffsetAndMetadata(offset, "", -1) for tp, offset in end_offsets.items()
        }
        offsets.update(_end_offsets(settings, f"{app_id}-image-downloads"))
        results = admin.alter_group_offsets(app_id, offsets)
        failed = sorted(f"{tp.topic}[{tp.partition}]: {error.__name__}" for tp, error in results.items() if error is not None and error.errno != 0)
        if failed:
            raise ReplayError(
                f"could not commit the replay's end offsets of consumer group {app_id!r} ({', '.join(failed)}); "
                "stop every worker of the group and run the replay again"
            )
        log.info("Seeded %d users into %s and committed offsets of group %s", len(states), state_topic, app_id)
    finally:
        admin.close()


def _kafka_tp(tp: TopicPartition) -> Any:
    return KafkaTopicPartition(tp.topic, tp.partition)


def _end_offsets(settings: Settings, topic: str) -> dict[Any, OffsetAndMetadata]:
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, **kafka_python_options(settings))
    try:
        partitions = [KafkaTopicPartition(topic, number) for number in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in consumer.end_offsets(partitions).items()} if partitions else {}
    finally:
        consumer.close()


def run_replay(
    settings: Settings,
    encoder: StyleEncoder,
    store: StyleStore,
    start: str | float = "earliest",
    reencode: bool = True,
    seed_app_id: str | None = None,
    swap_alias: bool = False,
    collection_version: str | None = None,
) -> ReplayResult:
    """Rebuild users from the topics into the encoder's versioned collections of `store`.

    `store` may be any view of the store. The replay writes `images_<version>` (when `reencode`)
    and `users_<version>`. The version is `collection_version`, or else the encoder's model version. With `swap_alias`, the aliases point at them afterwards, so queries move to the new
    version at once.
    """
    started = time.monotonic()
    target = store.view(collection_version or encoder.model_version)
    target.ensure_collections(encoder.style_dim)
    result = ReplayResult(collections={"images": target.images, "users": target.users})

    # Step 1: the images of this model version.
    if reencode:
        result.images = reencode_images(settings, encoder, target)
    image_vectors = target.all_image_vectors()

    # Step 2: read and validate the user events up to the end offsets of now.
    events_started = time.monotonic()
    ranges = offset_ranges(settings, [settings.downloads_topic, settings.searches_topic], start)
    checkpoint = settings.data_dir / "replay" / target.users
    limits = settings.limits()
    event_log = EventLog()
    # Bulk loading allocates millions of small objects; the cyclic collector would rescan them often.
    gc.disable()
    try:
        result.invalid = asyncio.run(_consume(settings, ranges, checkpoint, limits, event_log))
        result.events = len(event_log) + result.invalid
        consumed_at = time.monotonic()
        batch = build_states(event_log, image_vectors, settings.preference, encoder.style_dim)
    finally:
        gc.enable()
    result.end_offsets = {f"{tp.topic}:{tp.partition}": end for tp, (_, end) in ranges.items()}

    # Step 3: served vectors and popularity.
    computed_at = time.monotonic()
    result.users = len(batch.users)
    result.users_with_vectors = write_users(target, batch, encoder.model_version)
    target.set_download_counts(batch.download_counts)
    result.event_seconds = time.monotonic() - events_started
    log.info(
        "Replay phases: read and validate %.2f s, compute %.2f s, write %.2f s",
        consumed_at - events_started, computed_at - consumed_at, time.monotonic() - computed_at,
    )

    # Step 4: hand over to the live worker, then switch queries.
    if seed_app_id is not None:
        seed_worker(settings, seed_app_id, batch.states, batch.download_counts, {tp: end for tp, (_, end) in ranges.items()})
    if swap_alias:
        target.swap_aliases()
    shutil.rmtree(checkpoint, ignore_errors=True)
    result.seconds = time.monotonic() - started
    log.info(
        "Replay wrote %d users (%d with vectors) from %d events (%d invalid) in %.1f s",
        result.users, result.users_with_vectors, result.events, result.invalid, result.seconds,
    )
    return result
