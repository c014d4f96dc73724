"""Rebalance trials: two workers, one killed and restarted (2 -> 1 -> 2), compared with a clean computation.

Each worker here has its own embedded store, because the embedded engines belong to one process;
in production both write one Qdrant server. So the comparison reads both stores and keeps, per
user, the point with the highest event_count, which is the rule the sink's versioned writes apply
on a shared server. That point must equal the independent numpy computation of all events.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaAdminClient

from crash_harness import count_user_events, liveness_failed, produce_slowly, worker_env
from reference import reference_vectors
from stylestream.models.encoder import untrained_encoder
from stylestream.models.simulation import Marketplace
from stylestream.streams.broker import free_port
from stylestream.streams.lag import consumer_lag
from stylestream.streams.settings import Settings
from stylestream.streams.store import StyleStore
from stylestream.streams.supervisor import WorkerProcess
from stylestream.streams.topics import declare_topics


def _index_images(settings: Settings, images: list[dict]) -> None:
    """Write every image into this worker's store, as a shared server would already hold them."""
    encoder = untrained_encoder()
    store = StyleStore(settings, model_version=encoder.model_version)
    try:
        store.ensure_collections(encoder.style_dim)
        vectors = encoder.encode(
            [image["deep"] for image in images], [image["colors"] for image in images],
            [image["categories"] for image in images], [image["keywords"] for image in images],
        )
        payloads = [{"image_id": image["image_id"], "categories": image["categories"], "keywords": image["keywords"]} for image in images]
        store.upsert_images(payloads, vectors)
    finally:
        store.close()


def _wait_for_members(settings: Settings, members: int, timeout: float) -> bool:
    """Wait until the consumer group has exactly `members` members; return whether it happened."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            described = admin.describe_groups([settings.app_id]).get(settings.app_id, {})
            if len(described.get("members") or []) == members:
                return True
            time.sleep(0.5)
        return False
    finally:
        admin.close()


def run_rebalance_trial(base: Settings, data_dir: Path, marketplace: Marketplace, stream_seconds: float = 12.0) -> dict[str, Any]:
    """Stream `marketplace` into two workers, kill one 3 s in and restart it; return how the stores compare.

    `base` names the topics and consumer group of this trial (see crash_harness.trial_settings).
    """
    declare_topics(base)
    folders = {name: data_dir / name for name in ("a", "b")}
    ports = {name: free_port() for name in folders}
    settings = {name: base.model_copy(update={"data_dir": folder}) for name, folder in folders.items()}
    for name in folders:
        _index_images(settings[name], marketplace.images)
    env = {name: worker_env(settings[name], ports[name]) for name in folders}

    def start(name: str) -> WorkerProcess:
        return WorkerProcess(env[name], folders[name] / "worker.log", ports[name]).start()

    workers = {name: start(name) for name in folders}
    lags: list[Any] = []
    drained = False
    restarts = 0
    try:
        for worker in workers.values():
            worker.wait_ready(timeout=180)
        producer = threading.Thread(target=produce_slowly, args=(base.bootstrap_servers, base, marketplace, stream_seconds))
        producer.start()
        time.sleep(3.0)
        workers["b"].kill()
        alone = _wait_for_members(base, 1, timeout=60)
        workers["b"] = start("b")
        workers["b"].wait_ready(timeout=180)
        producer.join()

        # A worker whose liveness check fails is restarted, as an orchestrator probing /health would.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not drained:
            lags = consumer_lag(base.bootstrap_servers, base.app_id, [base.downloads_topic, base.searches_topic])
            drained = all(lag.lag == 0 for lag in lags) and all(w.client.stats()["pending_users"] == 0 for w in workers.values())
            for name, worker in workers.items():
                if not drained and liveness_failed(worker):
                    worker.kill()
                    workers[name] = start(name)
                    workers[name].wait_ready(timeout=180)
                    restarts += 1
            time.sleep(1.0)
    finally:
        for worker in workers.values():
            worker.stop()

    newest: dict[str, Any] = {}
    image_vectors: dict[str, Any] = {}
    for name in folders:
        store = StyleStore(settings[name])
        try:
            for user in marketplace.user_styles:
                point = store.get_user(user)
                if point is not None and (user not in newest or point.payload["event_count"] > newest[user].payload["event_count"]):
                    newest[user] = point
            image_vectors = image_vectors or store.image_vectors(image["image_id"] for image in marketplace.images)
        finally:
            store.close()
    expected = reference_vectors(marketplace.downloads, marketplace.searches, image_vectors)
    events_per_user = count_user_events(marketplace)

    differences = [float(np.max(np.abs(newest[user].vector - vector))) for user, vector in expected.items() if user in newest]
    return {
        "events": marketplace.event_count,
        "rebalanced": alone,
        "drained": drained,
        "lags": [f"{lag.topic}[{lag.partition}] committed {lag.committed} of {lag.end}" for lag in lags],
        "liveness_restarts": restarts,
        "max_abs_diff": max(differences) if differences else float("inf"),
        "lost_users": sorted(user for user in expected if user not in newest),
        "short_users": sorted(user for user, point in newest.items() if point.payload["event_count"] < events_per_user[user]),
        "duplicated_users": sorted(user for user, point in newest.items() if point.payload["event_count"] > events_per_user[user]),
    }
