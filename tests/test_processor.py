"""UserProcessor batches, in-process: the same states as the reference, one write per user, rejections with reasons."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
import pytest

from reference import reference_vectors
from stylestream.models import preference
from stylestream.models.preference import PreferenceParams, UserState, user_vector
from stylestream.schemas.validation import DUPLICATE_EVENT, MALFORMED_JSON, UNKNOWN_IMAGE, WRONG_PARTITION, Limits
from stylestream.streams.processor import PROCESSING_ERROR, UserMessage, UserProcessor
from stylestream.streams.stats import WorkerStats
from stylestream.streams.topics import partition_for

PARTITIONS = 4
DIM = 8


class Images:
    """Image vectors known up front, with the interface of ImageVectorCache."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    async def get_many(self, image_ids: Any) -> dict[str, np.ndarray]:
        return {image_id: self.vectors[image_id] for image_id in image_ids if image_id in self.vectors}

    async def wait_for(self, image_ids: Any, timeout: float) -> dict[str, np.ndarray]:
        return await self.get_many(image_ids)


class Table(dict):
    """A dict table that records every write with its partition."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, int]] = []

    def write(self, user_id: str, partition: int, value: dict[str, Any]) -> None:
        self.writes.append((user_id, partition))
        self[user_id] = value


def make_processor(vectors: dict[str, np.ndarray]) -> tuple[UserProcessor, Table, list[tuple[str, float | None]]]:
    table = Table()
    changes: list[tuple[str, float | None]] = []
    processor = UserProcessor(
        table, table.write, Images(vectors), PreferenceParams(), DIM, Limits(), PARTITIONS, WorkerStats(),
        on_change=lambda user_id, produced_at: changes.append((user_id, produced_at)), image_wait_seconds=0.0,
    )
    return processor, table, changes


def message(event: dict[str, Any], offset: int, partition: int | None = None, produced_at: float | None = None) -> UserMessage:
    """Build the message a producer keyed by user_id would write."""
    user_id = event["user_id"]
    partition = partition_for(user_id, PARTITIONS) if partition is None else partition
    return UserMessage(user_id.encode(), orjson.dumps(event), partition, offset, produced_at)


def marketplace(users: int = 6, images: int = 40, seed: int = 3) -> tuple[list[dict], list[dict], dict[str, np.ndarray]]:
    """Return searches, downloads linked to them, and image vectors."""
    rng = np.random.default_rng(seed)
    vectors = {f"img-{index}": rng.normal(size=DIM) for index in range(images)}
    searches, downloads = [], []
    for user in range(users):
        for search in range(5):
            search_id = f"s-{user}-{search}"
            results = [f"img-{index}" for index in rng.choice(images, size=8, replace=False)]
            timestamp = 1_700_000_000.0 + 3600.0 * search + user
            searches.append({
                "event_id": f"e-{search_id}", "user_id": f"user-{user}", "search_id": search_id, "query": "q",
                "timestamp": timestamp, "results": results,
            })
            for pick in range(2):
                downloads.append({
                    "event_id": f"e-{search_id}-{pick}", "user_id": f"user-{user}", "image_id": results[pick],
                    "timestamp": timestamp + 60.0 + pick, "search_id": search_id,
                })
    return searches, downloads, vectors


def test_batches_match_reference() -> None:
    searches, downloads, vectors = marketplace()
    processor, table, _ = make_processor(vectors)
    # Downloads first, so half of them arrive before their search, in batches of 7.
    download_messages = [message(event, offset) for offset, event in enumerate(downloads)]
    search_messages = [message(event, offset) for offset, event in enumerate(searches)]
    for start in range(0, len(download_messages), 7):
        asyncio.run(processor.apply_batch("downloads", "downloads", download_messages[start:start + 7]))
    for start in range(0, len(search_messages), 7):
        asyncio.run(processor.apply_batch("searches", "searches", search_messages[start:start + 7]))

    expected = reference_vectors(downloads, searches, vectors)
    assert set(table) == set(expected)
    for user_id, vector in expected.items():
        served = user_vector(UserState.from_dict(table[user_id]))
        np.testing.assert_allclose(served, vector, atol=1e-9)


def test_one_write_per_user_and_batch() -> None:
    searches, _, vectors = marketplace(users=3)
    processor, table, changes = make_processor(vectors)
    messages = [message(event, offset, produced_at=100.0 + offset) for offset, event in enumerate(searches)]
    result = asyncio.run(processor.apply_batch("searches", "searches", messages))

    assert result.applied == len(searches)
    assert sorted(user_id for user_id, _ in table.writes) == ["user-0", "user-1", "user-2"]
    for user_id, partition in table.writes:
        assert partition == partition_for(user_id, PARTITIONS)
    # The sink learns each user's oldest produce time of the batch.
    first_offset = {event["user_id"]: offset for offset, event in reversed(list(enumerate(searches)))}
    assert dict(changes) == {user: 100.0 + offset for user, offset in first_offset.items()}


def test_redelivered_batch_changes_nothing() -> None:
    searches, downloads, vectors = marketplace(users=2)
    processor, table, _ = make_processor(vectors)
    messages = [message(event, offset) for offset, event in enumerate(downloads)]
    asyncio.run(processor.apply_batch("downloads", "downloads", messages))
    before = {user_id: dict(value) for user_id, value in table.items()}

    result = asyncio.run(processor.apply_batch("downloads", "downloads", messages))

    assert result.applied == 0
    assert result.duplicates == len(downloads)
    assert table == before


def test_rejections_carry_reasons_and_others_apply() -> None:
    searches, downloads, vectors = marketplace(users=2)
    processor, table, _ = make_processor(vectors)
    good = downloads[0]
    wrong_partition = (partition_for(good["user_id"], PARTITIONS) + 1) % PARTITIONS
    messages = [
        message(good, 0),
        UserMessage(b"user-0", b"{not json", partition_for("user-0", PARTITIONS), 1),
        message({**downloads[1], "image_id": "img-unknown"}, 2),
        message({**downloads[2], "event_id": good["event_id"]}, 3),
        message(downloads[3], 4, partition=wrong_partition),
        message(downloads[4], 5),
    ]
    result = asyncio.run(processor.apply_batch("downloads", "downloads", messages))

    reasons = {rejected.offset: error.reason for rejected, error in result.rejected}
    assert reasons == {1: MALFORMED_JSON, 2: UNKNOWN_IMAGE, 3: DUPLICATE_EVENT, 4: WRONG_PARTITION}
    assert result.applied == 2
    assert result.downloads_per_image == {good["image_id"]: 1, downloads[4]["image_id"]: 1}
    assert UserState.from_dict(table[good["user_id"]]).event_count == 2


def test_failed_event_leaves_others_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    searches, downloads, vectors = marketplace(users=1)
    processor, table, _ = make_processor(vectors)
    failing = downloads[2]
    original = preference.apply_download

    def apply_or_fail(state: UserState, image_id: str, timestamp: float, *args: Any, **kwargs: Any) -> None:
        original(state, image_id, timestamp, *args, **kwargs)
        if timestamp == failing["timestamp"]:
            raise RuntimeError("update failed halfway")

    monkeypatch.setattr("stylestream.streams.processor.apply_download", apply_or_fail)
    messages = [message(event, offset) for offset, event in enumerate(downloads)]
    result = asyncio.run(processor.apply_batch("downloads", "downloads", messages))

    assert [(rejected.offset, error.reason) for rejected, error in result.rejected] == [(2, PROCESSING_ERROR)]
    applied = [event for event in downloads if event is not failing]
    expected = reference_vectors(applied, [], vectors)["user-0"]
    served = user_vector(UserState.from_dict(table["user-0"]))
    np.testing.assert_allclose(served, expected, atol=1e-9)
    assert UserState.from_dict(table["user-0"]).event_count == len(applied)


def test_download_waits_for_search_vectors_added_meanwhile() -> None:
    searches, downloads, vectors = marketplace(users=1)
    processor, table, _ = make_processor(vectors)
    asyncio.run(processor.apply_batch("searches", "searches", [message(searches[0], 0)]))
    # The download's linked search is in the table, so its results' vectors are fetched before applying.
    result = asyncio.run(processor.apply_batch("downloads", "downloads", [message(downloads[0], 0)]))

    assert result.applied == 1
    expected = reference_vectors(downloads[:1], searches[:1], vectors)["user-0"]
    np.testing.assert_allclose(user_vector(UserState.from_dict(table["user-0"])), expected, atol=1e-9)


def test_unknown_kind_is_rejected() -> None:
    processor, _, _ = make_processor({})
    with pytest.raises(ValueError, match="kind must be one of"):
        asyncio.run(processor.apply_batch("images", "images", []))
