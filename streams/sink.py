"""The coalescing Qdrant sink: every flush interval, one batched upsert of each user changed since.

A user changed by many events between two flushes is written once. A failed flush keeps every
changed user for the next one. After a restart, table recovery queues every recovered user again.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from stylestream.models.preference import UserState, user_vector
from stylestream.streams.stats import WorkerStats
from stylestream.streams.store import AsyncStyleStore

log = logging.getLogger(__name__)


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

    def __init__(self, table: Mapping[str, Any], store: AsyncStyleStore, model_version: str, stats: WorkerStats) -> None:
        self.table = table
        self.store = store
        self.model_version = model_version
        self.stats = stats
        self._changed: set[str] = set()
        self._image_counts: dict[str, int] = {}
        self._failures = 0
        self._in_flight = 0

    def mark(self, user_id: str) -> None:
        """Record that a user's state changed."""
        self._changed.add(user_id)
        self.stats.pending_users = len(self._changed)

    def mark_image_count(self, image_id: str, count: int) -> None:
        """Record an image's new download count for the next flush."""
        self._image_counts[image_id] = count

    @property
    def pending(self) -> int:
        """Return the number of changed users not yet written, counting a flush in progress."""
        return len(self._changed) + self._in_flight

    async def flush(self) -> int:
        """Upsert every changed user once; return how many were written.

        On a store error the changed users stay pending, the error is logged and the next flush
        retries them.
        """
        if not self._changed and not self._image_counts:
            return 0
        changed, self._changed = self._changed, set()
        counts, self._image_counts = self._image_counts, {}
        self._in_flight = len(changed)
        try:
            return await self._write(changed, counts)
        finally:
            self._in_flight = 0
            self.stats.pending_users = len(self._changed)

    async def _write(self, changed: set[str], counts: dict[str, int]) -> int:
        now = time.time()
        upserts, deletes = [], []
        for user_id in changed:
            stored = self.table.get(user_id)
            if not stored:
                continue
            state = UserState.from_dict(stored)
            vector = user_vector(state)
            if vector is None:
                deletes.append(user_id)
            else:
                upserts.append((user_id, vector, user_payload(state, self.model_version, now)))
        try:
            await self.store.call("upsert_users", upserts)
            await self.store.call("delete_users", deletes)
            await self.store.call("set_download_counts", counts)
        except Exception as exc:  # any store failure: keep the work, log, and retry on the next tick
            self._changed |= changed
            for image_id, count in counts.items():
                self._image_counts.setdefault(image_id, count)
            self._failures += 1
            self.stats.flush_failures += 1
            log.warning(
                "Flush of %d users failed (attempt %d), retrying on the next flush: %r", len(changed), self._failures, exc
            )
            return 0
        if self._failures:
            log.info("Flush succeeded after %d failed attempts", self._failures)
        self._failures = 0
        self.stats.flushes += 1
        self.stats.users_upserted += len(upserts)
        self.stats.last_flush_at = time.time()
        return len(upserts)
