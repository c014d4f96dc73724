"""Tests of recommend and rerank against qdrant-client's local engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from stylestream.streams.query import QueryError, recommend, rerank
from stylestream.streams.settings import Settings
from stylestream.streams.edge_client import EdgeClient, EdgeStoreLocked
from stylestream.streams.store import StoreError, StyleStore

VECTORS = {
    "a": np.array([1.0, 0.0, 0.0]),
    "b": np.array([0.9, 0.1, 0.0]),
    "c": np.array([0.0, 1.0, 0.0]),
    "d": np.array([0.0, 0.0, 1.0]),
}


@pytest.fixture(params=["local", "edge"])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> StyleStore:
    """A store with four images, download counts, and one user who likes the first axis and downloaded 'a'.

    Every test runs against both embedded engines: qdrant-client's local mode and Qdrant Edge.
    """
    client = QdrantClient(location=":memory:") if request.param == "local" else EdgeClient(tmp_path / "edge")
    store = StyleStore(Settings(data_dir=tmp_path), client=client)
    store.ensure_collections(3)
    payloads = [{"image_id": image_id, "categories": ["x" if image_id != "d" else "y"], "keywords": []} for image_id in VECTORS]
    store.upsert_images(payloads, np.array(list(VECTORS.values())))
    store.set_download_counts({"c": 5, "d": 9, "a": 1})
    store.upsert_users([("fan", np.array([1.0, 0.05, 0.0]), {"user_id": "fan", "recent_downloads": ["a"]})])
    yield store
    store.close()


def test_recommend_excludes_downloaded_images(store: StyleStore) -> None:
    result = recommend(store, "fan", k=2)

    assert result.source == "style"
    assert [item["image_id"] for item in result.items] == ["b", "c"]


def test_recommend_applies_category_filter(store: StyleStore) -> None:
    result = recommend(store, "fan", k=3, categories=["y"])

    assert [item["image_id"] for item in result.items] == ["d"]


def test_cold_start_falls_back_to_popularity(store: StyleStore) -> None:
    result = recommend(store, "newcomer", k=3)

    assert result.source == "popularity"
    assert [item["image_id"] for item in result.items] == ["d", "c", "a"]


def test_rerank_alpha_zero_keeps_order(store: StyleStore) -> None:
    result = rerank(store, "fan", ["d", "c", "b"], alpha=0.0)

    assert [item["image_id"] for item in result["items"]] == ["d", "c", "b"]


def test_rerank_alpha_one_orders_by_style(store: StyleStore) -> None:
    result = rerank(store, "fan", ["d", "c", "b", "unknown"], alpha=1.0)

    assert [item["image_id"] for item in result["items"]][0] == "b"
    assert result["unknown_images"] == ["unknown"]


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_rerank_rejects_alpha_out_of_range(store: StyleStore, alpha: float) -> None:
    with pytest.raises(QueryError) as caught:
        rerank(store, "fan", ["a"], alpha=alpha)

    assert caught.value.parameter == "alpha"


def test_recommend_rejects_invalid_k(store: StyleStore) -> None:
    with pytest.raises(QueryError, match="k must be between"):
        recommend(store, "fan", k=0)


def test_missing_collections_raise_store_error(tmp_path: Path) -> None:
    empty = StyleStore(Settings(data_dir=tmp_path), client=QdrantClient(location=":memory:"))

    with pytest.raises(StoreError, match="Run a worker first"):
        recommend(empty, "fan")


def test_edge_store_locks_its_folder(tmp_path: Path) -> None:
    first = EdgeClient(tmp_path)
    try:
        with pytest.raises(EdgeStoreLocked):
            EdgeClient(tmp_path)
    finally:
        first.close()

    EdgeClient(tmp_path).close()


def test_edge_aliases_survive_reopen(tmp_path: Path) -> None:
    store = StyleStore(Settings(data_dir=tmp_path), client=EdgeClient(tmp_path / "edge"), model_version="v1")
    store.ensure_collections(3)
    store.upsert_users([("fan", np.array([1.0, 0.0, 0.0]), {"user_id": "fan", "recent_downloads": []})])
    store.close()

    reopened = StyleStore(Settings(data_dir=tmp_path), client=EdgeClient(tmp_path / "edge"))
    try:
        point = reopened.get_user("fan")
    finally:
        reopened.close()

    assert point is not None
    assert point.vector.tolist() == pytest.approx([1.0, 0.0, 0.0])


def test_user_payload_lists_round_trip(store: StyleStore) -> None:
    downloads = [f"img-{number}" for number in range(200)]
    store.upsert_user_matrix(["heavy"], np.array([[0.0, 1.0, 0.0]], dtype=np.float32), [{"user_id": "heavy", "recent_downloads": downloads}])

    point = store.get_user("heavy")
    fan = store.get_user("fan")

    assert point is not None
    assert point.payload["recent_downloads"] == downloads
    assert fan is not None
    assert fan.payload["recent_downloads"] == ["a"]
    assert store.upsert_users_if_newer([("fan", np.array([1.0, 0.0, 0.0]), {"user_id": "fan", "event_count": 1, "model_version": "m", "recent_downloads": ["a", "b"]})]) == 1
    assert store.get_user("fan").payload["recent_downloads"] == ["a", "b"]
