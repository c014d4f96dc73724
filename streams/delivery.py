"""Fixes to Faust's delivery path: two so that no event is skipped across crashes and rebalances,
and one so that new events are fetched without waiting.

Measured with faust-streaming 0.15.3 and aiokafka 0.14.0.

The producer drain. Faust commits source offsets after `producer.flush()`, which first drains its
ProducerBuffer, where table changelog records wait to be sent. Faust also flushes the producer when
partitions are revoked and when the app stops. That drain is not a barrier:
`ProducerBuffer.flush_atmost` returns as soon as 0.1 s passes without a message being sent, and it
also returns while the last message taken from the queue is still being handed to aiokafka. An
offset can therefore be committed before the changelog record of the event it covers is written.
`install_buffer_drain` replaces the drain with one that returns only when the queue is empty and no
send is in progress. It first runs the flush hooks, which send the records the worker holds back
until a commit (see `streams/changelog.py`).

The seek back to committed offsets. While a table recovers, Faust drops the records aiokafka has
already fetched and seeks every assigned partition back to its committed offset. aiokafka's
`seek_to_committed` skips partitions whose committed offset is 0 or missing, so there the fetch
position stays past the dropped records, and they are never processed. In the two-worker rebalance
test, the worker that took over a killed worker's partition started near the log end, skipping
hundreds of events. `install_committed_seek` seeks those partitions too: to the committed offset,
or to the log start when none is committed, as `consumer_auto_offset_reset="earliest"` requests.

The fetch wait. Faust creates its aiokafka consumer with `fetch_max_wait_ms=1500`. aiokafka keeps
one fetch request in flight per broker and leaves out partitions that still have fetched records
buffered, so a request can contain only partitions without new data, such as an idle images
topic. The broker then answers it only after the whole 1.5 s, while events wait on the partitions
left out. Under paced load in `benchmarks/run.py`, consumption stopped for about 1.5 s at a time
and the freshness p99 stayed near 5 s. `install_fetch_max_wait` lowers the wait.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import aiokafka
import faust

log = logging.getLogger(__name__)

# How long one wait for progress lasts before the drain logs that it is still waiting.
PROGRESS_TIMEOUT_SECONDS = 5.0


class BufferDrain:
    """Counts sends in progress in a ProducerBuffer and waits until none is left unsent."""

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer
        self.in_flight = 0
        self._send_pending: Callable[[Any], Awaitable[None]] = buffer._send_pending
        self._flush_hooks: list[Callable[[], Awaitable[None]]] = []

    def add_flush_hook(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` at the start of every flush, so what it sends is delivered before the offsets are committed."""
        self._flush_hooks.append(hook)

    async def send_pending(self, message: Any) -> None:
        """Send one buffered message, counted as in progress until aiokafka has accepted it."""
        self.in_flight += 1
        try:
            await self._send_pending(message)
        finally:
            self.in_flight -= 1

    def unsent(self) -> int:
        """Return the number of messages still queued or being handed to the producer."""
        return self.buffer.size + self.in_flight

    async def flush(self) -> None:
        """Wait until every buffered message has been handed to the producer.

        The flush hooks run first, in the order they were added. While the buffer runs this waits as
        long as it takes, because committing earlier would lose updates. Once the buffer is
        stopping, a wait without progress raises RuntimeError.
        """
        for hook in self._flush_hooks:
            await hook()
        buffer = self.buffer
        waited = 0.0
        while self.unsent():
            buffer.message_sent.clear()
            try:
                await asyncio.wait_for(buffer.message_sent.wait(), timeout=PROGRESS_TIMEOUT_SECONDS)
            except asyncio.TimeoutError:
                if buffer.state != "running":
                    raise RuntimeError(
                        f"cannot flush {self.unsent()} buffered messages: the producer buffer is {buffer.state}"
                    ) from None
                waited += PROGRESS_TIMEOUT_SECONDS
                log.warning("producer flush still waiting after %.0f s: %d messages unsent", waited, self.unsent())


def install_buffer_drain(app: faust.App) -> BufferDrain:
    """Make the app's producer flush wait for its whole buffer; call before the app starts."""
    producer = app.producer
    if app.conf.producer_threaded:
        raise ValueError("install_buffer_drain supports the default producer only; set producer_threaded=False")

    drain = BufferDrain(producer.buffer)
    # The buffer's sender task looks up `_send_pending` when it starts, so the wrapper is used from
    # the first message on. `flush` is called by the consumer before every offset commit.
    producer.buffer._send_pending = drain.send_pending
    producer.buffer.flush = drain.flush
    return drain


async def _seek_to_committed(
    consumer: aiokafka.AIOKafkaConsumer, source_topics: set[str], on_seek: Callable[[str, int, int], None]
) -> dict[Any, int | None]:
    """Seek every assigned partition with a committed offset there, 0 included.

    A partition of `source_topics` without one goes to the log start. Other partitions without one,
    such as table changelogs, keep the position Faust's table recovery gave them.
    """
    committed: dict[Any, int | None] = {}
    for tp in consumer.assignment():
        offset = await consumer.committed(tp)
        committed[tp] = offset
        if offset is not None and offset >= 0:
            position = offset
        elif tp.topic in source_topics:
            position = (await consumer.beginning_offsets([tp]))[tp]
        else:
            continue
        consumer.seek(tp, position)
        if tp.topic in source_topics:
            on_seek(tp.topic, tp.partition, position)
    return committed


def install_committed_seek(app: faust.App, source_topics: set[str], on_seek: Callable[[str, int, int], None]) -> None:
    """Make the app's consumer seek back to committed offsets on every partition; call before the app starts.

    `on_seek(topic, partition, offset)` is called from the consumer's thread for every partition of
    `source_topics` it seeks.
    """
    thread = app.consumer._thread

    async def seek_to_committed() -> dict[Any, int | None]:
        return await thread.call_thread(_seek_to_committed, thread._ensure_consumer(), source_topics, on_seek)

    thread.seek_to_committed = seek_to_committed


def install_fetch_max_wait(app: faust.App, seconds: float) -> None:
    """Make the app's aiokafka consumer wait at most `seconds` for fetch data; call before the app starts."""
    if not seconds > 0:
        raise ValueError(f"the fetch wait must be a positive number of seconds, got {seconds!r}")
    thread = app.consumer._thread
    create_worker_consumer = thread._create_worker_consumer

    def create_with_fetch_wait(*args: Any, **kwargs: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = create_worker_consumer(*args, **kwargs)
        # aiokafka passes this attribute to its Fetcher in start(), which has not run yet.
        consumer._fetch_max_wait_ms = int(seconds * 1000)
        return consumer

    thread._create_worker_consumer = create_with_fetch_wait
