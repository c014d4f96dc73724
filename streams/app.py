"""The Faust topology: input topics, the user-state table, agents, the sink timer and HTTP views.

Event path: `downloads` / `searches`, in batches of up to `user_batch_size` events -> validation
(bad input to `<topic>.dlq`) -> UserProcessor (style look-ups, preference update, one `user-state`
table write per changed user and batch) -> UserSink (coalesced upserts into Qdrant every flush
interval). Before each offset commit, ChangelogWriter sends the newest state of every user changed
since the last commit. Applied downloads are counted per image and sent to the popularity topic
at the same point. `images` -> validation -> ImageIndexer (style encoder, upsert into
the images collection, image cache).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections import Counter
from typing import Any, Callable

import faust

from stylestream.models.encoder import StyleEncoder, untrained_encoder
from stylestream.schemas.validation import PARSERS, InvalidEvent, Limits
from stylestream.streams.changelog import ChangelogWriter, TopicSender
from stylestream.streams.delivery import install_buffer_drain, install_committed_seek, install_fetch_max_wait
from stylestream.streams.diagnostics import describe_tasks
from stylestream.streams.dlq import DeadLetters
from stylestream.streams.images import ImageIndexer, ImageVectorCache
from stylestream.streams.kafka_security import faust_credentials, kafka_python_options
from stylestream.streams.lag import StallDetector, consumer_lag
from stylestream.streams.ordering import OffsetGuard, RecordLookup
from stylestream.streams.popularity import DownloadTally, InvalidPopularityRecord, decode_counts
from stylestream.streams.processor import PROCESSING_ERROR, StateCache, UserMessage, UserProcessor
from stylestream.streams.settings import Settings
from stylestream.streams.sink import UserSink
from stylestream.streams.stats import WorkerStats
from stylestream.streams.store import AsyncStyleStore, StyleStore

log = logging.getLogger(__name__)

IMAGE_BATCH_SIZE = 256
# How long the broker may hold a fetch request without data; see install_fetch_max_wait.
FETCH_MAX_WAIT_SECONDS = 0.05
PRODUCER_BATCH_BYTES = 512 * 1024
PRODUCER_LINGER_SECONDS = 0.005
POPULARITY_BATCH_SIZE = 1000


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
        self.buffer_drain = install_buffer_drain(self.app)
        user_topics = {settings.downloads_topic, settings.searches_topic}
        self.record_lookup = RecordLookup(settings.bootstrap_servers, kafka_python_options(settings))
        self.offset_guard = OffsetGuard(self.app, user_topics, self.record_lookup, self.stats)
        install_committed_seek(self.app, user_topics, on_seek=self.offset_guard.set_position)
        install_fetch_max_wait(self.app, FETCH_MAX_WAIT_SECONDS)
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
            # Faust's web_host is only the advertised name; without web_bind it listens on 0.0.0.0.
            web_bind=settings.web_host,
            web_port=settings.web_port,
            web_in_thread=False,
            producer_max_request_size=max(1_048_576, settings.max_message_bytes * 2),
            # Changelog values are kilobytes each: Faust's default batch of 16 KiB with no linger sent
            # almost every record in its own produce request.
            producer_max_batch_size=PRODUCER_BATCH_BYTES,
            producer_linger=PRODUCER_LINGER_SECONDS,
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
        self.user_states = ChangelogWriter(app, self.table, self.stats)
        self.image_counts = ChangelogWriter(app, self.download_counts, self.stats)
        self.downloads_per_image = DownloadTally(TopicSender(app, settings.popularity_topic(), self.stats), settings.image_partitions)
        for writer in (self.user_states, self.downloads_per_image, self.image_counts):
            self.buffer_drain.add_flush_hook(writer.flush)
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
            self.table, self.user_states.write, self.cache, settings.preference, self.encoder.style_dim, self.limits,
            settings.partitions, self.stats, on_change=self.sink.mark, image_wait_seconds=settings.image_wait_seconds,
            states=states,
        )

        app.agent(self.downloads_topic, name="stylestream.downloads")(self._user_agent(settings.downloads_topic, "downloads"))
        app.agent(self.searches_topic, name="stylestream.searches")(self._user_agent(settings.searches_topic, "searches"))
        app.agent(self.images_topic, name="stylestream.images")(self._images_agent)
        app.agent(self.popularity_topic, name="stylestream.popularity")(self._popularity_agent)
        app.task(self._flush_loop)
        self.table.on_recover(self._flush_recovered_users)
        app.timer(settings.liveness_interval, name="stylestream.liveness")(self._check_liveness)

        from stylestream.streams.web import register_views

        register_views(self)

    def _user_agent(self, topic: str, kind: str) -> Callable[..., Any]:
        settings = self.settings

        async def agent(stream: faust.StreamT) -> None:
            # take_events acknowledges a batch's events after this body has handled them.
            async for events in stream.take_events(settings.user_batch_size, within=settings.user_batch_seconds):
                messages = []
                for event in events:
                    message = event.message
                    if await self.offset_guard.admit(message):
                        messages.append(UserMessage(message.key, event.value, message.partition, message.offset, message.timestamp))
                if not messages:
                    continue
                await self.sink.wait_for_capacity()
                self.stats.consumed[topic] += len(messages)
                await self._apply_user_batch(kind, topic, messages)
                self.stats.processed[topic] += len(messages)

        agent.__name__ = f"{topic}_agent"
        return agent

    async def _apply_user_batch(self, kind: str, topic: str, messages: list[UserMessage]) -> None:
        """Apply a batch, dead-letter its rejected messages and publish its downloads per image."""
        try:
            result = await self.processor.apply_batch(kind, topic, messages)
        except Exception as exc:  # the agent must survive any batch; its events go to the DLQ
            # Users written before the failure keep their new states; the next commit sends them.
            log.exception("Failed to apply a batch of %d %s events from offset %d", len(messages), topic, messages[0].offset)
            for message in messages:
                await self.dead_letters.send(topic, message.key, message.value, PROCESSING_ERROR, repr(exc), message.partition, message.offset)
            return

        self.stats.applied[kind] += result.applied
        self.stats.duplicates[kind] += result.duplicates
        for message, error in result.rejected:
            await self.dead_letters.send(topic, message.key, message.value, error.reason, str(error), message.partition, message.offset)
        self.downloads_per_image.add(result.downloads_per_image)

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
        """Add the download counts of the popularity topic to each image's total."""
        async for events in stream.take_events(POPULARITY_BATCH_SIZE, within=self.settings.user_batch_seconds):
            deltas: Counter[tuple[int, str]] = Counter()
            for event in events:
                message = event.message
                try:
                    counts = decode_counts(message.key, event.value)
                except InvalidPopularityRecord as exc:
                    log.error("Ignoring popularity record %s[%d]@%d: %s", message.topic, message.partition, message.offset, exc)
                    continue
                for image_id, count in counts.items():
                    deltas[(message.partition, image_id)] += count
            self.stats.downloads_counted += sum(deltas.values())
            for (partition, image_id), delta in deltas.items():
                total = self.download_counts.data.get(image_id, 0) + delta
                self.image_counts.write(image_id, partition, total)
                self.sink.mark_image_count(image_id, total)

    async def _flush_loop(self) -> None:
        """Flush the sink every flush interval, counted from the start of one flush to the next.

        A Faust timer sleeps the interval after each run, with a bounded drift correction, so under
        load its flushes came about 0.3 s apart instead of 0.2 s.
        """
        interval = self.settings.flush_interval
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.sink.flush()
            except Exception:  # one failed flush must not end the loop, and the sink retries store errors itself
                log.exception("Sink flush failed, next attempt in %.2f s", interval)
            await asyncio.sleep(max(started + interval - loop.time(), 0.0))

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
        newly_stalled = set(names) - set(self.stats.stalled_partitions)
        for name in sorted(newly_stalled):
            log.error("Partition %s made no progress for %.0f s while its lag is %d", name, self.stall_detector.stall_seconds, self.stats.partition_lag[name])
        if newly_stalled:
            log.error("Tasks while partitions stall:\n  %s", "\n  ".join(describe_tasks()))
        self.stats.stalled_partitions = names

    async def _flush_recovered_users(self) -> None:
        """Queue every user of the table for a flush after each recovery, at start-up and after every rebalance.

        A crash, or a worker that lost a partition before its next flush, can leave a user's newest
        state only in the changelog; the worker that recovers the partition writes it.
        """
        # NOTE: Faust's memory store (faust-streaming 0.15.3) drops only keys it recovered from the
        # changelog when their partition is revoked, so users written since then stay listed here.
        # The sink's event_count versioning keeps such a stale state from replacing a newer point.
        recovered = list(self.table.keys())
        for user_id in recovered:
            self.sink.mark(user_id)
        # The recovered states live as long as the partition stays here; keep them out of full collections.
        # NOTE: an object frozen here that later becomes part of an unreachable cycle is never freed.
        gc.freeze()
        log.info("Table recovery complete: %d users recovered and queued for a flush", len(recovered))
