"""End-to-end tests: Apache Kafka, a worker process, and the embedded Qdrant engine.

The worker's vectors in Qdrant are compared with an independent numpy computation of the same
events, and malformed events must reach the dead-letter topic while later good events still count.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer

from bad_inputs import BAD_INPUTS
from crash_harness import worker_env
from reference import reference_vectors
from stylestream.models.simulation import SimulationConfig, simulate
from stylestream.streams.broker import EmbeddedKafka, free_port
from stylestream.streams.client import WorkerRequestError
from stylestream.streams.produce import produce_file
from stylestream.streams.settings import Settings
from stylestream.streams.store import StoreLockedError, StyleStore
from stylestream.streams.supervisor import WorkerProcess, all_applied
from stylestream.streams.topics import TopicError, TopicSpec, declare_topics, partition_for

pytestmark = pytest.mark.integration

WORKER_ONLY_REASONS = {"unknown_image", "duplicate_event", "wrong_partition"}
WRONG_PARTITION_EVENT = json.dumps(
    {"event_id": "wrong-partition", "user_id": "user-00002", "image_id": "img-000003", "timestamp": 1_700_000_000}
).encode()


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
    return worker_env(settings, web_port, STYLESTREAM_LOG_FORMAT="json", STYLESTREAM_LIVENESS_INTERVAL="1")


BAD_REQUESTS = {
    "k_not_integer": ("GET", "/users/user-00000/recommendations", {"k": "abc"}, None, 400, "k"),
    "k_zero": ("GET", "/users/user-00000/recommendations", {"k": "0"}, None, 400, "k"),
    "k_too_large": ("GET", "/users/user-00000/recommendations", {"k": "100000"}, None, 400, "k"),
    "rerank_without_ids": ("POST", "/users/user-00000/rerank", None, {"alpha": 0.5}, 400, "image_ids"),
    "rerank_alpha_text": ("POST", "/users/user-00000/rerank", None, {"image_ids": ["img-000001"], "alpha": "high"}, 400, "alpha"),
    "rerank_alpha_range": ("POST", "/users/user-00000/rerank", None, {"image_ids": ["img-000001"], "alpha": 2}, 400, "alpha"),
    "rerank_empty_id": ("POST", "/users/user-00000/rerank", None, {"image_ids": [""]}, 400, "image_ids"),
    "unknown_user": ("GET", "/users/nobody-at-all", None, None, 404, "user_id"),
    "user_id_too_long": ("GET", "/users/" + "u" * 300 + "/recommendations", None, None, 400, "user_id"),
    "rerank_unknown_field": ("POST", "/users/user-00000/rerank", None, {"image_ids": ["img-000001"], "boost": 2}, 400, "boost"),
    "rerank_empty_list": ("POST", "/users/user-00000/rerank", None, {"image_ids": []}, 400, "image_ids"),
}


def _http_answers(client: Any, user_id: str) -> dict[str, Any]:
    """Call every endpoint once, and each bad request, recording bodies or (status, parameter)."""
    import urllib.request

    answers: dict[str, Any] = {
        "health": client.request("GET", "/health"),
        "ready": client.request("GET", "/ready"),
        "user": client.request("GET", f"/users/{user_id}"),
    }
    with urllib.request.urlopen(client.base_url + "/metrics", timeout=10) as response:
        answers["metrics"] = response.read().decode()
    with urllib.request.urlopen(client.base_url + "/openapi.yaml", timeout=10) as response:
        answers["openapi"] = response.read().decode()
    request = urllib.request.Request(
        client.base_url + f"/users/{user_id}/rerank", data=b"{not json", method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        urllib.request.urlopen(request, timeout=10)
        answers["invalid_json_body"] = (200, None)
    except urllib.error.HTTPError as exc:
        answers["invalid_json_body"] = (exc.code, json.loads(exc.read())["parameter"])
    for name, (method, path, query, body, _, _) in BAD_REQUESTS.items():
        try:
            client.request(method, path, query, body)
            answers[name] = (200, None)
        except WorkerRequestError as exc:
            answers[name] = (exc.status, str(exc))
    return answers


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
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        producer.send(settings.downloads_topic, key=b"user-00002", value=WRONG_PARTITION_EVENT, partition=1 - partition_for("user-00002", 2))
        producer.flush()
        producer.close()
        produced[settings.downloads_topic] += 1
        stats = worker.wait_until(all_applied(produced), timeout=180, what="all events")
        applied_downloads = stats["applied"]["downloads"]
        worker.wait_until(lambda now: now["downloads_counted"] >= applied_downloads, timeout=60, what="download counts")

        user_id = next(iter(marketplace.user_styles))
        cli = subprocess.run(
            [sys.executable, "-m", "stylestream.streams", "recommend", user_id, "--k", "5", "--json"],
            env={**_worker_env(settings, web_port), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60,
        )
        recommendations = {user: worker.client.recommend(user, k=20) for user in marketplace.user_styles}
        rerank = worker.client.rerank(user_id, marketplace.searches[0]["results"], alpha=1.0)
        http = _http_answers(worker.client, user_id)
        listening = _listen_addresses(web_port)
        with pytest.raises(StoreLockedError):
            StyleStore(settings)
    finally:
        exit_code = worker.stop()

    store = StyleStore(settings)
    try:
        stored_users = {user: store.get_user(user) for user in marketplace.user_styles}
        image_vectors = store.image_vectors(image["image_id"] for image in marketplace.images)
        popular = store.popular_images(k=len(marketplace.images))
    finally:
        store.close()
    return {
        "settings": settings, "marketplace": marketplace, "stats": stats, "cli": cli, "exit_code": exit_code,
        "recommendations": recommendations, "rerank": rerank, "http": http, "log_path": data_dir / "worker.log", "stored_users": stored_users, "image_vectors": image_vectors,
        "popular": popular, "listening": listening,
    }


def _listen_addresses(port: int) -> set[str]:
    """Return the local addresses, as /proc/net/tcp writes them, of listening TCP sockets on `port`."""
    found = set()
    for name in ("tcp", "tcp6"):
        table = Path("/proc/net") / name
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A is TCP_LISTEN
                found.add(address)
    return found


def test_web_listens_on_loopback_only(pipeline: dict[str, Any]) -> None:
    assert pipeline["listening"] == {"0100007F"}  # 127.0.0.1, as /proc/net/tcp writes it


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


def test_stats_report_table_size(pipeline: dict[str, Any]) -> None:
    # These stats were read before any /metrics request.
    assert pipeline["stats"]["table_size"] == len(pipeline["marketplace"].user_styles)


def test_image_download_counts_match_downloads(pipeline: dict[str, Any]) -> None:
    expected = Counter(event["image_id"] for event in pipeline["marketplace"].downloads)
    counted = {image.image_id: int(image.score) for image in pipeline["popular"] if image.score > 0}

    assert counted == dict(expected)


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
        expected.append((WRONG_PARTITION_EVENT, "wrong_partition"))

    # Keyless bad messages land on any partition, so the dead letters come in no fixed order.
    received = sorted((value, headers["reason"].decode()) for value, headers in letters)
    assert received == sorted(expected)
    assert all(headers["error"] for _, headers in letters)
    assert all(headers["source_topic"].decode() == topic for _, headers in letters)


def test_dead_letters_counted_by_reason(pipeline: dict[str, Any]) -> None:
    counted = pipeline["stats"]["dead_letters"]
    expected: dict[str, int] = {"duplicate_event": 1, "wrong_partition": 1}
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


def test_health_ready_and_user_endpoints(pipeline: dict[str, Any]) -> None:
    http = pipeline["http"]

    assert http["health"] == {"status": "ok"}
    assert http["ready"] == {"ready": True}
    assert http["user"]["event_count"] > 0
    assert http["user"]["vector_dim"] == 64
    assert 0 <= http["user"]["freshness_seconds"] < 600


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_request_names_parameter(pipeline: dict[str, Any], name: str) -> None:
    status, message = pipeline["http"][name]
    expected_status, parameter = BAD_REQUESTS[name][4], BAD_REQUESTS[name][5]

    assert status == expected_status
    assert parameter in message


def test_invalid_json_body_rejected(pipeline: dict[str, Any]) -> None:
    assert pipeline["http"]["invalid_json_body"] == (400, "body")


def test_metrics_expose_required_series(pipeline: dict[str, Any]) -> None:
    metrics = pipeline["http"]["metrics"]
    settings = pipeline["settings"]

    for series in (
        f'stylestream_events_consumed_total{{topic="{settings.downloads_topic}"}}',
        'stylestream_dlq_messages_total{reason="unknown_image"} 1',
        "stylestream_event_to_upsert_seconds_bucket",
        "stylestream_flush_size_users_count",
        "stylestream_flush_duration_seconds_sum",
        "stylestream_store_retries_total 0",
        f'stylestream_consumer_lag{{topic="{settings.downloads_topic}",partition="0"}}',
        "stylestream_table_size_users",
        "stylestream_state_writes_total",
    ):
        assert series in metrics, series
    assert "stylestream_send_failures_total{" not in metrics


def test_openapi_documents_every_endpoint(pipeline: dict[str, Any]) -> None:
    import yaml

    spec = yaml.safe_load(pipeline["http"]["openapi"])

    assert set(spec["paths"]) >= {
        "/health", "/ready", "/stats", "/metrics", "/users/{user_id}", "/users/{user_id}/recommendations", "/users/{user_id}/rerank",
    }


def test_worker_logs_json_lines(pipeline: dict[str, Any]) -> None:
    records = []
    for line in pipeline["log_path"].read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))

    assert any(record["level"] == "WARNING" and "Dead-lettering" in record["message"] for record in records)
    assert all({"time", "level", "logger", "message"} <= set(record) for record in records)
