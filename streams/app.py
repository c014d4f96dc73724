"""The Faust topology: input topics, the user-state table, agents, the sink timer and HTTP views.

Event path: `downloads` / `searches` -> validation (bad input to `<topic>.dlq`) -> UserProcessor
(style look-ups, preference update, `user-state` table and its changelog) -> UserSink (coalesced
upserts into Qdrant every flush interval). `images` -> validation -> ImageIndexer (style encoder,
upsert into the images collection, image cache).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import faust

from stylestream.models.encoder import StyleEncoder, untrained_encoder
from stylestream.schemas.validation import PARSERS, WRONG_PARTITION, InvalidEvent, Limits
from stylestream.streams.delivery import install_buffer_drain, install_committed_seek
from stylestream.streams.dlq import DeadLetters
from stylestream.streams.images import ImageIndexer, ImageVectorCache
from stylestream.streams.kafka_security import faust_credentials, kafka_python_options
from stylestream.streams.lag import StallDetector, consumer_lag
from stylestream.streams.ordering import OffsetGuard, RecordLookup
from stylestream.streams.processor import StateCache, UserProcessor
from stylestream.streams.settings import Settings
from stylestream.streams.sink import UserSink
from stylestream.streams.stats import WorkerStats
from stylestream.streams.topics import partition_for
from stylestream.streams.store import AsyncStyleStore, StyleStore

log = logging.getLogger(__name__)

PROCESSING_ERROR = "processing_error"
IMAGE_BATCH_SIZE = 256


def load_encoder(settings: Settings) -> StyleEncoder:
    """Load the encoder from `model_path`, or build the deterministic untrained one."""
    return StyleEncoder.load(settings.model_path) if settings.model_path else untrained_encoder()


class StyleStreamApp:
    """A Faust app wired to a style encoder and a Qdrant store; `app` is the faust.App to run."""

    def __init__(self, settings: Settings, store: StyleStore, encoder: StyleEncoder | None = None) -> None:
        self.settings = settings
        self.encoder = encoder or load_encoder(settings)
        self.stats = WorkerStats()
        # The worker writes its model version's collections; queries read through the aliases.
        versioned = store.view(settings.collection_version or self.encoder.model_version)
        versioned.ensure_collections(self.encoder.style_dim)
        self.store = AsyncStyleStore(versioned)
        self.limits: Limits = settings.limits(self.encoder.schema.deep_dim, self.encoder.schema.colors_dim)
        self.app = self._build_app()
        # Offsets are committed only after the changelog records of the events they cover are sent,
        # a recovering worker resumes every partition at its committed offset, and each partition
        # is applied in offset order.
        install_buffer_drain(self.app)
        user_topics = {settings.downloads_topic, settings.searches_topic}
        self.record_lookup = RecordLookup(settings.bootstrap_servers, kafka_python_options(settings))
        self.offset_guard = OffsetGuard(self.app, user_topics, self.record_lookup, self.stats)
        install_committed_seek(self.app, user_topics, on_seek=self.offset_guard.set_position)
        self._declare_topology()

    def _build_app(self) -> faust.App:
        settings = self.settings
        return faust.App(
            settings.app_id,
            broker=settings.broker,
            broker_credentials=faust_credentials(settings),
            store="memory://",
            datadir=str(settings.data_dir / "faust"),
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            topic_allow_declare=True,
            broker_rebalance_timeout=settings.rebalance_timeout,
            broker_session_timeout=settings.session_timeout,
            broker_heartbeat_interval=settings.session_timeout / 4,
            consumer_auto_offset_reset="earliest",
            table_standby_replicas=0,
            web_enabled=True,
            web_host=settings.web_host,
            web_port=settings.web_port,
            web_in_thread=False,
            producer_max_request_size=max(1_048_576, settings.max_message_bytes * 2),
            consumer_max_fetch_size=max(4 * 1_048_576, settings.max_message_bytes * 4),
        )

    def _topic(self, name: str, partitions: int, internal: bool = False) -> faust.TopicT:
        return self.app.topic(
            name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
            partitions=partitions, internal=internal,
        )

    def _declare_topology(self) -> None:
        settings = self.settings
        app = self.app
        self.downloads_topic = self._topic(settings.downloads_topic, settings.partitions)
        self.searches_topic = self._topic(settings.searches_topic, settings.partitions)
        self.images_topic = self._topic(settings.images_topic, settings.image_partitions)
        self.popularity_topic = self._topic(settings.popularity_topic(), settings.image_partitions, internal=True)
        self.dead_letters = DeadLetters(
            {
                name: self._topic(settings.dlq_topic(name), 1)
                for name in (settings.downloads_topic, settings.searches_topic, settings.images_topic)
            },
            self.stats,
        )

        json_schema = faust.Schema(key_type=str, key_serializer="json", value_serializer="json")
        self.table = app.Table("user-state", default=None, partitions=settings.partitions, schema=json_schema)
        self.download_counts = app.Table(
            "image-download-counts", default=int, partitions=settings.image_partitions, schema=json_schema
        )
        self.cache = ImageVectorCache(self.store, settings.image_cache_size)
        self.indexer = ImageIndexer(self.encoder, self.store, self.cache)
        # The processor and the sink share deserialised states, so neither rebuilds one per event.
        states = StateCache()
        self.sink = UserSink(
            self.table, self.store, self.encoder.model_version, self.stats,
            flush_interval=settings.flush_interval, max_pending_users=settings.max_pending_users, states=states,
        )
        self.stall_detector = StallDetector(settings.stall_seconds)
        self.processor = UserProcessor(
            self.table, self.cache, settings.preference, self.encoder.style_dim, self.stats,
            on_change=self.sink.mark, image_wait_seconds=settings.image_wait_seconds, states=states,
        )

        app.agent(self.downloads_topic, name="stylestream.downloads")(self._user_agent(settings.downloads_topic, self._on_download))
        app.agent(self.searches_topic, name="stylestream.searches")(self._user_agent(settings.searches_topic, self._on_search))
        app.agent(self.images_topic, name="stylestream.images")(self._images_agent)
        app.agent(self.popularity_topic, name="stylestream.popularity")(self._popularity_agent)
        app.timer(settings.flush_interval, name="stylestream.flush")(self._flush)
        self.table.on_recover(self._flush_recovered_users)
        app.timer(settings.liveness_interval, name="stylestream.liveness")(self._check_liveness)

        from stylestream.streams.web import register_views

        register_views(self)

    def _check_partition(self, user_id: str, source: str) -> None:
        """Reject a user event on another partition than its user's: the table keeps a user's state on one partition."""
        partition = int(source.rpartition(":")[2])
        expected = partition_for(user_id, self.settings.partitions)
        if partition != expected:
            raise InvalidEvent(
                WRONG_PARTITION,
                f"event of user {user_id!r} arrived on partition {partition}, but its key belongs to partition "
                f"{expected}; produce user events with the message key set to user_id",
                "user_id",
            )

    async def _on_download(self, value: bytes, key: bytes | None, source: str, offset: int, produced_at: float | None) -> None:
        record = PARSERS["downloads"](value, self.limits, key=key)
        self._check_partition(record.user_id, source)
        if await self.processor.download(record, source, offset, produced_at):
            await self.popularity_topic.send(key=record.image_id.encode(), value=b"")

    async def _on_search(self, value: bytes, key: bytes | None, source: str, offset: int, produced_at: float | None) -> None:
        record = PARSERS["searches"](value, self.limits, key=key)
        self._check_partition(record.user_id, source)
        await self.processor.search(record, source, offset, produced_at)

    def _user_agent(self, topic: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        async def agent(stream: faust.StreamT) -> None:
            async for event in stream.events():
                message = event.message
                if not await self.offset_guard.admit(message):
                    continue
                await self.sink.wait_for_capacity()
                self.stats.consumed[topic] += 1
                source = f"{message.topic}:{message.partition}"
                try:
                    await handler(event.value, message.key, source, message.offset, message.timestamp)
                except InvalidEvent as exc:
                    await self.dead_letters.send(topic, message.key, event.value, exc.reason, str(exc), message.partition, message.offset)
                except Exception as exc:  # the agent must survive any single bad event
                    log.exception("Failed to process %s[%d]@%d", message.topic, message.partition, message.offset)
                    await self.dead_letters.send(topic, message.key, event.value, PROCESSING_ERROR, repr(exc), message.partition, message.offset)
                self.stats.processed[topic] += 1

        agent.__name__ = f"{topic}_agent"
        return agent

    async def _images_agent(self, stream: faust.StreamT) -> None:
        topic = self.settings.images_topic
        async for events in stream.take_events(IMAGE_BATCH_SIZE, within=0.05):
            valid = []
            for event in events:
                message = event.message
                self.stats.consumed[topic] += 1
                try:
                    valid.append(PARSERS["images"](event.value, self.limits, key=message.key))
                except InvalidEvent as exc:
                    await self.dead_letters.send(topic, message.key, event.value, exc.reason, str(exc), message.partition, message.offset)
            try:
                self.stats.images_upserted += await self.indexer.index(valid)
                self.stats.applied[topic] += len(valid)
            except Exception as exc:  # a failed batch goes to the DLQ rather than stopping the agent
                log.exception("Failed to index a batch of %d images", len(valid))
                for event in events:
                    message = event.message
                    await self.dead_letters.send(topic, message.key, event.value, PROCESSING_ERROR, repr(exc), message.partition, message.offset)
            self.stats.processed[topic] += len(events)

    async def _popularity_agent(self, stream: faust.StreamT) -> None:
        async for event in stream.events():
            image_id = event.message.key.decode()
            self.download_counts[image_id] += 1
            self.sink.mark_image_count(image_id, self.download_counts[image_id])

    async def _flush(self) -> None:
        await self.sink.flush()

    async def _check_liveness(self) -> None:
        """Sample consumer lag per partition and log partitions that stopped making progress."""
        topics = [self.settings.downloads_topic, self.settings.searches_topic, self.settings.images_topic]
        try:
            lags = await asyncio.to_thread(
                consumer_lag, self.settings.bootstrap_servers, self.settings.app_id, topics, kafka_python_options(self.settings)
            )
        except Exception as exc:  # lag is diagnostics only; never let it stop the worker
            log.warning("Could not read consumer lag: %r", exc)
            return
        stalled = self.stall_detector.update(lags)
        self.stats.partition_lag = {f"{lag.topic}:{lag.partition}": lag.lag for lag in lags}
        names = sorted(f"{lag.topic}:{lag.partition}" for lag in stalled)
        for name in set(names) - set(self.stats.stalled_partitions):
            log.error("Partition %s made no progress for %.0f s while its lag is %d", name, self.stall_detector.stall_seconds, self.stats.partition_lag[name])
        self.stats.stalled_partitions = names

    async def _flush_recovered_users(self) -> None:
        """Queue every user of the table for a flush after each recovery, at start-up and after every rebalance.

        A crash, or a worker that lost a partition before its next flush, can leave a user's newest
        state only in the changelog; the worker that recovers the partition writes it.
        """
        recovered = list(self.table.keys())
        for user_id in recovered:
            self.sink.mark(user_id)
        log.info("Table recovery complete: %d users recovered and queued for a flush", len(recovered))
