"""Rebalance: two workers, one killed and restarted (2 -> 1 -> 2), end with a clean run's vectors.

Each worker here has its own embedded store, because the embedded engines belong to one process;
in production both write one Qdrant server. So the check reads both stores and keeps, per user,
the point with the highest event_count, which is the rule the sink's versioned writes apply on a
shared server. That point must equal the independent numpy computation of all events.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaConsumer

from crash_harness import liveness_failed, produce_slowly, trial_settings, worker_env
from reference import reference_vectors
from stylestream.models.encoder import untrained_encoder
from stylestream.models.simulation import SimulationConfig, simulate
from stylestream.streams.broker import EmbeddedKafka, free_port
from stylestream.streams.lag import consumer_lag
from stylestream.streams.settings import Settings
from stylestream.streams.store import StyleStore
from stylestream.streams.supervisor import WorkerProcess
from stylestream.streams.topics import declare_topics

pytestmark = pytest.mark.integration


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


def _changelog_history(settings: Settings, user: str) -> str:
    """Describe a user's changelog records and input offsets, so a failed check shows where events went missing."""
    lines = [user]
    changelog = KafkaConsumer(f"{settings.app_id}-user-state-changelog", bootstrap_servers=settings.bootstrap_servers,
                              auto_offset_reset="earliest", consumer_timeout_ms=3000)
    for record in changelog:
        if record.key and json.loads(record.key) == user:
            value = json.loads(record.value)
            lines.append(f"changelog[{record.partition}]@{record.offset} event_count={value['event_count']} applied={value['applied_offsets']}")
    changelog.close()
    for topic in (settings.downloads_topic, settings.searches_topic):
        consumer = KafkaConsumer(topic, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest", consumer_timeout_ms=3000)
        offsets = [f"{record.partition}@{record.offset}" for record in consumer if record.key == user.encode()]
        consumer.close()
        lines.append(f"{topic}: {' '.join(offsets)}")
    return "\n".join(lines)


def test_two_to_one_to_two_workers_lose_nothing(kafka: EmbeddedKafka, tmp_path: Path) -> None:
    marketplace = simulate(SimulationConfig(images=120, users=16, styles=5, subjects=8, seed=31))
    base = trial_settings(kafka, tmp_path)
    declare_topics(base)
    folders = {name: tmp_path / name for name in ("a", "b")}
    ports = {name: free_port() for name in folders}
    settings = {name: base.model_copy(update={"data_dir": folder}) for name, folder in folders.items()}
    for name in folders:
        _index_images(settings[name], marketplace.images)
    env = {name: worker_env(settings[name], ports[name]) for name in folders}

    def start(name: str) -> WorkerProcess:
        return WorkerProcess(env[name], folders[name] / "worker.log", ports[name]).start()

    workers = {name: start(name) for name in folders}
    try:
        for worker in workers.values():
            worker.wait_ready(timeout=180)
        producer = threading.Thread(target=produce_slowly, args=(base.bootstrap_servers, base, marketplace, 12.0))
        producer.start()
        time.sleep(3.0)
        workers["b"].kill()
        alone = _wait_for_members(base, 1, timeout=60)
        workers["b"] = start("b")
        workers["b"].wait_ready(timeout=180)
        producer.join()

        # A worker whose liveness check fails is restarted, as an orchestrator probing /health would.
        deadline = time.monotonic() + 240
        drained = False
        restarts = 0
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

    newest: dict[str, object] = {}
    image_vectors = {}
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
    counts: dict[str, int] = {}
    for event in marketplace.downloads + marketplace.searches:
        counts[event["user_id"]] = counts.get(event["user_id"], 0) + 1

    assert alone, "the surviving worker never owned the group alone, so no rebalance happened"
    assert drained, f"lag or pending users did not reach zero after {restarts} liveness restarts: {lags}"
    assert set(newest) == set(expected)
    for user, vector in expected.items():
        assert newest[user].payload["event_count"] == counts[user], _changelog_history(base, user)
        assert np.max(np.abs(newest[user].vector - vector)) <= 1e-5, user
