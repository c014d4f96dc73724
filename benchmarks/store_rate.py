"""Measure user upserts per second of the embedded stores, in batches the size of a worker flush.

Prints JSON: user upserts per second for each store and method, median of `--repeats` rounds of
`--batches` batches of `--batch` users. Each round writes users that already exist (as a running
worker does), after one round that creates them.

- `local_disk`, `local_disk_if_newer`: qdrant-client 1.20 local mode on disk, through
  StyleStore.upsert_users and upsert_users_if_newer (the worker's read-compare-write);
- `local_memory`: qdrant-client local mode in memory (":memory:"), plain upserts;
- `edge_disk_batch`, `edge_disk_single`: Qdrant Edge (qdrant-edge-py) on disk, one update per batch
  or one per user.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import qdrant_edge as edge
from qdrant_client import QdrantClient

from stylestream.streams.settings import Settings
from stylestream.streams.store import StyleStore, user_point_id

DIM = 64


def users(count: int, round_number: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    """Return `count` users with random unit vectors and a payload like the sink's, newer each round."""
    vectors = rng.normal(size=(count, DIM))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        (f"user-{index:06d}", vectors[index], {
            "user_id": f"user-{index:06d}", "event_count": round_number + 1, "last_event_time": 1.7e9,
            "model_version": "bench", "updated_at": time.time(), "recent_downloads": [f"img-{index:06d}"] * 5,
        })
        for index in range(count)
    ]


def rate(write: Callable[[list[Any]], None], batch: int, batches: int, repeats: int) -> float:
    """Return the median upserts per second over `repeats` rounds after one round that creates the points."""
    rng = np.random.default_rng(0)
    rates = []
    for round_number in range(repeats + 1):
        data = users(batch * batches, round_number, rng)
        started = time.perf_counter()
        for start in range(0, len(data), batch):
            write(data[start:start + batch])
        if round_number:
            rates.append(len(data) / (time.perf_counter() - started))
    return statistics.median(rates)


def local_store(path: str | None) -> StyleStore:
    settings = Settings(broker="kafka://127.0.0.1:9", data_dir=Path(path or "."))
    client = QdrantClient(path=str(settings.qdrant_path)) if path else QdrantClient(":memory:")
    store = StyleStore(settings, client=client, model_version="bench")
    store.ensure_collections(DIM)
    return store


def edge_shard(path: str) -> edge.EdgeShard:
    config = edge.EdgeConfig(vectors=edge.EdgeVectorParams(size=DIM, distance=edge.Distance.Cosine))
    return edge.EdgeShard.create(path, config)


def edge_points(batch: list[Any]) -> list[edge.Point]:
    return [edge.Point(uuid.UUID(user_point_id(user_id)), vector.astype(np.float32).tolist(), payload) for user_id, vector, payload in batch]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=200, help="users per upsert request (default 200)")
    parser.add_argument("--batches", type=int, default=5, help="requests per round (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="measured rounds (default 3)")
    args = parser.parse_args()
    measure = lambda write: rate(write, args.batch, args.batches, args.repeats)  # noqa: E731
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="stylestream-store-") as tmp:
        store = local_store(f"{tmp}/local")
        result["local_disk"] = measure(store.upsert_users)
        result["local_disk_if_newer"] = measure(store.upsert_users_if_newer)
        store.close()

        store = local_store(None)
        result["local_memory"] = measure(store.upsert_users)
        store.close()

        shard = edge_shard(f"{tmp}/edge-batch")
        result["edge_disk_batch"] = measure(lambda batch: shard.update(edge.UpdateOperation.upsert_points(edge_points(batch))))
        shard.close()

        shard = edge_shard(f"{tmp}/edge-single")

        def single(batch: list[Any]) -> None:
            for point in edge_points(batch):
                shard.update(edge.UpdateOperation.upsert_points([point]))

        result["edge_disk_single"] = measure(single)
        shard.close()
    json.dump({"batch": args.batch, "upserts_per_s": result}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
