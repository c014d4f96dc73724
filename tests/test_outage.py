"""Qdrant outage: the sink keeps every changed user, backs off, pauses intake, and catches up.

The fault is injected at the store boundary by a subclass of the real store over qdrant-client's
local engine. STYLESTREAM_OUTAGE_SECONDS sets the outage length (default 2 s; the long run uses 30).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from stylestream.models.preference import PreferenceParams, UserState, apply_download, user_vector
from stylestream.streams.settings import Settings
from stylestream.streams.sink import UserSink
from stylestream.streams.stats import WorkerStats
from stylestream.streams.store import AsyncStyleStore, StyleStore

OUTAGE_SECONDS = float(os.environ.get("STYLESTREAM_OUTAGE_SECONDS", "2"))


class FailingStore(StyleStore):
    """The real store, failing every user write until `recovers_at` (a time.monotonic value)."""

    recovers_at = 0.0
    failed_writes = 0

    def upsert_users_if_newer(self, users: Any) -> int:
        if time.monotonic() < self.recovers_at:
            self.failed_writes += 1
            raise ConnectionError("injected Qdrant outage")
        return super().upsert_users_if_newer(users)


def _table(users: int) -> dict[str, dict]:
    rng = np.random.default_rng(0)
    table = {}
    for number in range(users):
        state = UserState.empty(f"u{number}", 4)
        apply_download(state, f"i{number}", 100.0, rng.normal(size=4), None, PreferenceParams())
        table[state.user_id] = state.to_dict()
    return table


def test_sink_survives_outage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="stylestream.streams.sink")
    store = FailingStore(Settings(data_dir=tmp_path), client=QdrantClient(location=":memory:"))
    store.ensure_collections(4)
    table = _table(12)
    stats = WorkerStats()

    async def scenario() -> tuple[bool, bool, int]:
        sink = UserSink(table, AsyncStyleStore(store), "test-model", stats, flush_interval=0.05, max_pending_users=10)
        store.recovers_at = time.monotonic() + OUTAGE_SECONDS
        for user_id in table:
            sink.mark(user_id)
        paused = sink.paused

        flusher_done = asyncio.Event()

        async def flusher() -> None:
            while sink.pending:
                await sink.flush()
                await asyncio.sleep(0.05)
            flusher_done.set()

        task = asyncio.create_task(flusher())
        blocked_during_outage = False
        try:
            await asyncio.wait_for(sink.wait_for_capacity(), timeout=OUTAGE_SECONDS / 2)
        except asyncio.TimeoutError:
            blocked_during_outage = True
        await asyncio.wait_for(sink.wait_for_capacity(), timeout=OUTAGE_SECONDS + 30)
        await asyncio.wait_for(flusher_done.wait(), timeout=OUTAGE_SECONDS + 30)
        await task
        return paused, blocked_during_outage, sink.pending

    paused, blocked, pending = asyncio.run(scenario())

    assert paused
    assert blocked
    assert pending == 0
    assert store.failed_writes >= 2
    retries = [record for record in caplog.records if "retrying in" in record.getMessage()]
    assert len(retries) == store.failed_writes
    for user_id, stored in table.items():
        point = store.get_user(user_id)
        assert point is not None, user_id
        assert np.max(np.abs(point.vector - user_vector(UserState.from_dict(stored)))) <= 1e-6


def test_stale_state_never_overwrites_newer(tmp_path: Path) -> None:
    store = StyleStore(Settings(data_dir=tmp_path), client=QdrantClient(location=":memory:"))
    store.ensure_collections(2)
    newer = ("u", np.array([1.0, 0.0]), {"user_id": "u", "event_count": 5, "model_version": "m"})
    stale = ("u", np.array([0.0, 1.0]), {"user_id": "u", "event_count": 3, "model_version": "m"})

    assert store.upsert_users_if_newer([newer]) == 1
    assert store.upsert_users_if_newer([stale]) == 0
    assert store.upsert_users_if_newer([newer]) == 0
    assert store.get_user("u").vector.tolist() == pytest.approx([1.0, 0.0])
