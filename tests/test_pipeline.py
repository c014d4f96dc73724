"""End-to-end tests: Apache Kafka, a worker process, and the embedded Qdrant engine.

The worker's vectors in Qdrant are compared with an independent numpy computation of the same
events, and malformed events must reach the dead-letter topic while later good events still count.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer

from bad_inputs import BAD_INPUTS
from reference import reference_vectors
from stylestream.models.simulation import SimulationConfig, simulate
from stylestream.streams.broker import EmbeddedKafka, free_port
from stylestream.streams.produce import produce_file
from stylestream.streams.settings import Settings
from stylestream.streams.store import StoreLockedError, StyleStore
from stylestream.streams.supervisor import WorkerProcess, all_applied
from stylestream.streams.topics import TopicError, TopicSpec, declare_topics

pytestmark = pytest.mark.integration

WORKER_ONLY_REASONS = {"unknown_image", "duplicate_event"}


def _mix_in(good: list[bytes], bad: list[bytes]) -> list[bytes]:
    """Return the good lines with the bad ones in the middle, so good events come before and after."""
    half = len(good) // 2
    return good[:half] + bad + good[half:]


def _settings(kafka: EmbeddedKafka, data_dir: Path, prefix: str) -> Settings:
    return Settings(
        broker=kafka.url, data_dir=data_dir, app_id=f"{prefix}-app", partitions=2, image_partitions=1,
        downloads_topic=f"{prefix}-downloads", searches_topic=f"{prefix}-searches", images_topic=f"{prefix}-images",
    )


def _worker_env(settings: Settings, web_port: int) -> dict[str, str]:
    return {
        "STYLESTREAM_BROKER": settings.broker,
        "STYLESTREAM_DATA_DIR": str(settings.data_dir),
        "STYLESTREAM_APP_ID": settings.app_id,
        "STYLESTREAM_PARTITIONS": str(settings.partitions),
        "STYLESTREAM_IMAGE_PARTITIONS": str(settings.image_partitions),
        "STYLESTREAM_DOWNLOADS_TOPIC": settings.downloads_topic,
        "STYLESTREAM_SEARCHES_TOPIC": settings.searches_topic,
        "STYLESTREAM_IMAGES_TOPIC": settings.images_topic,
        "STYLESTREAM_WEB_PORT": str(web_port),
        "STYLESTREAM_REBALANCE_TIMEOUT": "2",
        "STYLESTREAM_IMAGE_WAIT_SECONDS": "1",
    }


@pytest.fixture(scope="module")
def pipeline(kafka: EmbeddedKafka, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run a worker over a small marketplace with bad downloads in the middle of the good ones."""
    data_dir = tmp_path_factory.mktemp("pipeline")
    settings = _settings(kafka, data_dir, f"t{uuid.uuid4().hex[:8]}")
    declare_topics(settings)
    marketplace = simulate(SimulationConfig(images=150, users=12, styles=5, subjects=8, seed=3))
    marketplace.write(data_dir / "marketplace")

    # Bad messages of every kind sit between two halves of the good events of their topic. The
    # repeated download reuses the event id of the good download just before it.
    inputs = {}
    for kind in ("images", "searches", "downloads"):
        good = [json.dumps(event).encode() for event in getattr(marketplace, kind)]
        bad = [raw for topic_kind, raw, _ in BAD_INPUTS if topic_kind == kind]
        if kind == "downloads":
            bad.append(good[len(good) // 2 - 1])
        inputs[kind] = data_dir / f"{kind}-with-bad.jsonl"
        inputs[kind].write_bytes(b"\n".join(_mix_in(good, bad)) + b"\n")

    web_port = free_port()
    worker = WorkerProcess(_worker_env(settings, web_port), data_dir / "worker.log", web_port).start()
    try:
        worker.wait_ready()
        bootstrap = settings.bootstrap_servers
        produced = {settings.images_topic: produce_file(bootstrap, settings.images_topic, inputs["images"], "images", progress=False)}
        worker.wait_until(all_applied(produced), timeout=120, what="images")
        produced[settings.searches_topic] = produce_file(bootstrap, settings.searches_topic, inputs["searches"], "searches", progress=False)
        produced[settings.downloads_topic] = produce_file(bootstrap, settings.downloads_topic, inputs["downloads"], "downloads", progress=False)
        stats = worker.wait_until(all_applied(produced), timeout=180, what="all events")

        user_id = next(iter(marketplace.user_styles))
        cli = subprocess.run(
            [sys.executable, "-m", "stylestream.streams", "recommend", user_id, "--k", "5", "--json"],
            env={**_worker_env(settings, web_port), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60,
        )
        recommendations = {user: worker.client.recommend(user, k=20) for user in marketplace.user_styles}
        rerank = worker.client.rerank(user_id, marketplace.searches[0]["results"], alpha=1.0)
        with pytest.raises(StoreLockedError):
            StyleStore(settings)
    finally:
        exit_code = worker.stop()

    store = StyleStore(settings)
    try:
        stored_users = {user: store.get_user(user) for user in marketplace.user_styles}
        image_vectors = store.image_vectors(image["image_id"] for image in marketplace.images)
    finally:
        store.close()
    return {
        "settings": settings, "marketplace": marketplace, "stats": stats, "cli": cli, "exit_code": exit_code,
        "recommendations": recommendations, "rerank": rerank, "stored_users": stored_users, "image_vectors": image_vectors,
    }


def test_vectors_equal_numpy_reference(pipeline: dict[str, Any]) -> None:
    marketplace = pipeline["marketplace"]
    expected = reference_vectors(marketplace.downloads, marketplace.searches, pipeline["image_vectors"])
    stored = pipeline["stored_users"]

    assert set(expected) == {user for user, point in stored.items() if point is not None}
    for user, vector in expected.items():
        assert np.max(np.abs(stored[user].vector - vector)) <= 1e-5, user


def test_payload_counts_every_event(pipeline: dict[str, Any]) -> None:
    marketplace = pipeline["marketplace"]
    for user, point in pipeline["stored_users"].items():
        events = [e for e in marketplace.downloads + marketplace.searches if e["user_id"] == user]
        assert point.payload["event_count"] == len(events)
        assert point.payload["last_event_time"] == pytest.approx(max(e["timestamp"] for e in events))
        assert point.payload["model_version"].startswith("untrained-jl-v1")


def test_recommendations_exclude_downloaded_images(pipeline: dict[str, Any]) -> None:
    marketplace = pipeline["marketplace"]
    for user, answer in pipeline["recommendations"].items():
        downloaded = {e["image_id"] for e in marketplace.downloads if e["user_id"] == user}
        recommended = {item["image_id"] for item in answer["items"]}
        assert answer["source"] == "style"
        assert len(recommended) == 20
        assert not recommended & downloaded, user


def test_recommendations_match_user_styles(pipeline: dict[str, Any]) -> None:
    marketplace = pipeline["marketplace"]
    matches = [
        np.mean([marketplace.image_style[item["image_id"]] in marketplace.user_styles[user] for item in answer["items"][:10]])
        for user, answer in pipeline["recommendations"].items()
    ]

    assert np.mean(matches) >= 0.6


@pytest.mark.parametrize("kind", ["images", "searches", "downloads"])
def test_bad_input_reaches_dead_letter_topic(pipeline: dict[str, Any], kafka: EmbeddedKafka, kind: str) -> None:
    settings = pipeline["settings"]
    topic = getattr(settings, f"{kind}_topic")
    consumer = KafkaConsumer(
        settings.dlq_topic(topic), bootstrap_servers=kafka.bootstrap,
        auto_offset_reset="earliest", consumer_timeout_ms=5000, group_id=None, fetch_max_bytes=8 * 1048576,
    )
    letters = [(message.value, dict(message.headers)) for message in consumer]
    consumer.close()
    expected = [(raw, reason) for topic_kind, raw, reason in BAD_INPUTS if topic_kind == kind]
    if kind == "downloads":
        downloads = pipeline["marketplace"].downloads
        expected.append((json.dumps(downloads[len(downloads) // 2 - 1]).encode(), "duplicate_event"))

    # Keyless bad messages land on any partition, so the dead letters come in no fixed order.
    received = sorted((value, headers["reason"].decode()) for value, headers in letters)
    assert received == sorted(expected)
    assert all(headers["error"] for _, headers in letters)
    assert all(headers["source_topic"].decode() == topic for _, headers in letters)


def test_dead_letters_counted_by_reason(pipeline: dict[str, Any]) -> None:
    counted = pipeline["stats"]["dead_letters"]
    expected: dict[str, int] = {"duplicate_event": 1}
    for _, _, reason in BAD_INPUTS:
        expected[reason] = expected.get(reason, 0) + 1

    assert counted == expected
    assert len(BAD_INPUTS) + 1 >= 30


def test_cli_recommends_through_running_worker(pipeline: dict[str, Any]) -> None:
    cli = pipeline["cli"]

    assert cli.returncode == 0, cli.stderr
    assert len(json.loads(cli.stdout)["items"]) == 5


def test_rerank_orders_by_style_similarity(pipeline: dict[str, Any]) -> None:
    items = pipeline["rerank"]["items"]
    similarities = [item["style_similarity"] for item in items]

    assert similarities == sorted(similarities, reverse=True)
    assert sorted(item["image_id"] for item in items) == sorted(pipeline["marketplace"].searches[0]["results"])


def test_worker_stops_cleanly(pipeline: dict[str, Any]) -> None:
    assert pipeline["exit_code"] == 0


def test_partition_mismatch_fails_fast(kafka: EmbeddedKafka, tmp_path: Path) -> None:
    settings = _settings(kafka, tmp_path, f"m{uuid.uuid4().hex[:8]}")
    declare_topics(settings, [TopicSpec(settings.downloads_topic, 3)])

    with pytest.raises(TopicError, match=r"has 3 partitions .* configured for 2"):
        declare_topics(settings)


def test_produced_keys_follow_user_id(kafka: EmbeddedKafka, tmp_path: Path) -> None:
    settings = _settings(kafka, tmp_path, f"k{uuid.uuid4().hex[:8]}")
    declare_topics(settings)
    path = tmp_path / "downloads.csv"
    path.write_text("event_id,user_id,image_id,timestamp\ne1,user-a,img-1,1700000000\n")

    assert produce_file(settings.bootstrap_servers, settings.downloads_topic, path, "downloads", progress=False) == 1
    consumer = KafkaConsumer(settings.downloads_topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000)
    messages = list(consumer)
    consumer.close()

    assert [message.key for message in messages] == [b"user-a"]
    assert json.loads(messages[0].value)["timestamp"] == 1700000000.0
