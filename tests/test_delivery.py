"""Offsets are committed only behind what is durable: the producer drain and the group's starting offsets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from crash_harness import trial_settings
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from stylestream.streams.broker import EmbeddedKafka
from stylestream.streams.delivery import BufferDrain
from stylestream.streams.group_offsets import commit_missing_offsets
from stylestream.streams.topics import declare_topics


class SlowBuffer:
    """The parts of faust's ProducerBuffer that BufferDrain uses, with a send that takes `send_seconds`."""

    def __init__(self, send_seconds: float) -> None:
        self.pending: asyncio.Queue = asyncio.Queue()
        self.message_sent = asyncio.Event()
        self.state = "running"
        self.sent: list[str] = []
        self.send_seconds = send_seconds

    @property
    def size(self) -> int:
        return self.pending.qsize()

    async def _send_pending(self, message: str) -> None:
        await asyncio.sleep(self.send_seconds)
        self.sent.append(message)

    async def run(self, drain: BufferDrain) -> None:
        # The loop of faust's ProducerBuffer._handle_pending: take one message, send it, signal.
        while True:
            message = await self.pending.get()
            await drain.send_pending(message)
            self.message_sent.set()


def test_drain_waits_for_slow_and_in_flight_sends() -> None:
    async def scenario() -> list[str]:
        # Each send takes longer than the 0.1 s after which faust's own flush gives up waiting.
        buffer = SlowBuffer(send_seconds=0.15)
        drain = BufferDrain(buffer)
        sender = asyncio.create_task(buffer.run(drain))
        for number in range(3):
            buffer.pending.put_nowait(f"record-{number}")
        await asyncio.sleep(0.01)

        await drain.flush()
        sent = list(buffer.sent)
        sender.cancel()
        return sent

    assert asyncio.run(scenario()) == ["record-0", "record-1", "record-2"]


def test_flush_hooks_run_before_buffer_wait() -> None:
    async def scenario() -> list[str]:
        buffer = SlowBuffer(send_seconds=0.01)
        drain = BufferDrain(buffer)
        sender = asyncio.create_task(buffer.run(drain))
        calls: list[str] = []

        async def hold_back_records() -> None:
            # A hook's records join the buffer, and flush returns only once they are sent too.
            calls.append(f"hook saw {len(buffer.sent)} sent")
            buffer.pending.put_nowait("changelog-record")

        drain.add_flush_hook(hold_back_records)
        buffer.pending.put_nowait("record-0")
        await drain.flush()
        sender.cancel()
        return calls + buffer.sent

    assert asyncio.run(scenario()) == ["hook saw 0 sent", "record-0", "changelog-record"]


def test_drain_raises_when_stopped_buffer_stalls() -> None:
    async def scenario() -> None:
        buffer = SlowBuffer(send_seconds=0.0)
        buffer.state = "stopping"
        buffer.pending.put_nowait("record-0")
        drain = BufferDrain(buffer)
        await drain.flush()

    from stylestream.streams import delivery

    original = delivery.PROGRESS_TIMEOUT_SECONDS
    delivery.PROGRESS_TIMEOUT_SECONDS = 0.05
    try:
        with pytest.raises(RuntimeError, match="1 buffered messages"):
            asyncio.run(scenario())
    finally:
        delivery.PROGRESS_TIMEOUT_SECONDS = original


def _alter_with_retries(admin: KafkaAdminClient, group: str, offsets: dict) -> None:
    """Commit `offsets` for an empty group, waiting while a new group's coordinator is not available yet."""
    for _ in range(20):
        try:
            admin.alter_group_offsets(group, offsets)
            return
        except KafkaError as exc:
            if not exc.retriable:
                raise
            time.sleep(0.5)
    raise TimeoutError(f"could not commit offsets of group {group}")


@pytest.mark.integration
def test_missing_offsets_committed_at_log_start(kafka: EmbeddedKafka, tmp_path: Path) -> None:
    settings = trial_settings(kafka, tmp_path)
    declare_topics(settings)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    for number in range(5):
        producer.send(settings.downloads_topic, key=b"user", value=b"{}", partition=0)
    producer.flush()
    producer.close()

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        # One partition already has a committed offset past the log start; it must stay as it is.
        downloads = TopicPartition(settings.downloads_topic, 0)
        _alter_with_retries(admin, settings.app_id, {downloads: OffsetAndMetadata(3, "", -1)})

        first = commit_missing_offsets(settings)
        second = commit_missing_offsets(settings)
        committed = admin.list_group_offsets(settings.app_id)[settings.app_id]
    finally:
        admin.close()

    inputs = {settings.downloads_topic: 2, settings.searches_topic: 2, settings.images_topic: 1}
    assert first == sum(inputs.values()) - 1
    assert second == 0
    assert committed[downloads].offset == 3
    for topic, partitions in inputs.items():
        for number in range(partitions):
            if TopicPartition(topic, number) != downloads:
                assert committed[TopicPartition(topic, number)].offset == 0, (topic, number)
