"""The coalescing Qdrant sink: every flush interval, one batched upsert of each user changed since.

A user changed by many events between two flushes is written once. A failed flush keeps every
changed user, and the sink retries with exponential backoff, logging each retry. While more than
`max_pending_users` changed users wait, `wait_for_capacity` pauses the agents, so a long store
outage pauses consumption instead of growing memory without limit. After a restart, table recovery
queues every recovered user again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Mapping

from stylestream.models.preference import UserState, user_vector
from stylestream.streams.processor import StateCache
from stylestream.streams.stats import WorkerStats
from stylestream.streams.store import AsyncStyleStore

log = logging.getLogger(__name__)

MAX_RETRY_DELAY = 10.0


def user_payload(state: UserState, model_version: str, updated_at: float) -> dict[str, Any]:
    """Return the Qdrant payload of a user point."""
    return {
        "user_id": state.user_id,
        "event_count": state.event_count,
        "last_event_time": state.last_event_time,
        "model_version": model_version,
        "updated_at": updated_at,
        "recent_downloads": state.recent_download_ids(),
    }


class UserSink:
    """Collect changed user ids and upsert their served vectors in batches."""

    def __init__(
        self,
        table: Mapping[str, Any],
        store: AsyncStyleStore,
        model_version: str,
        stats: WorkerStats,
        flush_interval: float = 0.2,
        max_pending_users: int = 100_000,
        states: StateCache | None = None,
    ) -> None:
        self.table = table
        self.states = states if states is not None else StateCache(capacity=0)
        self.store = store
        self.model_version = model_version
        self.stats = stats
        self.flush_interval = flush_interval
        self.max_pending_users = max_pending_users
        self._changed: set[str] = set()
        self._produced_at: dict[str, float] = {}
        self._image_counts: dict[str, int] = {}
        self._failures = 0
        self._in_flight = 0
        self._next_attempt = 0.0
        self._capacity = asyncio.Event()
        self._capacity.set()

    def mark(self, user_id: str, produced_at: float | None = None) -> None:
        """Record that a user's state changed, by an event produced at `produced_at` (epoch seconds)."""
        self._changed.add(user_id)
        if produced_at is not None and user_id not in self._produced_at:
            self._produced_at[user_id] = produced_at
        self.stats.pending_users = len(self._changed)
        if len(self._changed) >= self.max_pending_users and self._capacity.is_set():
            log.warning(
                "%d changed users wait for Qdrant (bound %d); pausing consumption until the sink catches up",
                len(self._changed), self.max_pending_users,
            )
            self.stats.backpressure_pauses += 1
            self._capacity.clear()

    def mark_image_count(self, image_id: str, count: int) -> None:
        """Record an image's new download count for the next flush."""
        self._image_counts[image_id] = count

    @property
    def pending(self) -> int:
        """Return the number of changed users not yet written, counting a flush in progress."""
        return len(self._changed) + self._in_flight

    @property
    def paused(self) -> bool:
        """Return True while intake is paused because too many users wait for a flush."""
        return not self._capacity.is_set()

    async def wait_for_capacity(self) -> None:
        """Wait while the number of unflushed users is at or above `max_pending_users`."""
        await self._capacity.wait()

    async def flush(self, force: bool = False) -> int:
        """Upsert every changed user once; return how many were written.

        After a failure the next attempt waits for the backoff delay unless `force` is set.
        """
        if not self._changed and not self._image_counts:
            return 0
        if not force and time.monotonic() < self._next_attempt:
            return 0
        changed, self._changed = self._changed, set()
        produced_at, self._produced_at = self._produced_at, {}
        counts, self._image_counts = self._image_counts, {}
        self._in_flight = len(changed)
        try:
            return await self._write(changed, produced_at, counts)
        finally:
            self._in_flight = 0
            self.stats.pending_users = len(self._changed)
            if len(self._changed) < self.max_pending_users and not self._capacity.is_set():
                log.info("Sink caught up (%d changed users pending); resuming consumption", len(self._changed))
                self._capacity.set()

    def _build(self, changed: set[str]) -> tuple[list[tuple[str, Any, dict[str, Any]]], list[str]]:
        now = time.time()
        upserts, deletes = [], []
        for user_id in changed:
            stored = self.table.get(user_id)
            if not stored:
                continue
            state = self.states.peek(user_id, stored) or UserState.from_dict(stored)
            vector = user_vector(state)
            if vector is None:
                deletes.append(user_id)
            else:
                upserts.append((user_id, vector, user_payload(state, self.model_version, now)))
        return upserts, deletes

    async def _write(self, changed: set[str], produced_at: dict[str, float], counts: dict[str, int]) -> int:
        upserts, deletes = self._build(changed)
        started = time.monotonic()
        try:
            written = await self.store.call("upsert_users_if_newer", upserts)
            await self.store.call("delete_users", deletes)
            await self.store.call("set_download_counts", counts)
        except Exception as exc:  # any store failure: keep the work, back off, and retry
            self._changed |= changed
            for user_id, timestamp in produced_at.items():
                self._produced_at.setdefault(user_id, timestamp)
            for image_id, count in counts.items():
                self._image_counts.setdefault(image_id, count)
            self._failures += 1
            delay = min(self.flush_interval * 2 ** self._failures, MAX_RETRY_DELAY)
            self._next_attempt = time.monotonic() + delay
            self.stats.flush_failures += 1
            log.warning(
                "Flush of %d users failed (attempt %d); retrying in %.1f s: %r", len(changed), self._failures, delay, exc
            )
            return 0
        if self._failures:
            log.info("Flush succeeded after %d failed attempts; %d users written", self._failures, written)
        self._failures = 0
        self._next_attempt = 0.0
        self.stats.flushes += 1
        self.stats.users_upserted += written
        self.stats.users_skipped_stale += len(upserts) - written
        self.stats.record_flush(len(upserts), time.monotonic() - started)
        now = time.time()
        for timestamp in produced_at.values():
            self.stats.event_to_upsert_seconds.observe(max(now - timestamp, 0.0))
        return written
