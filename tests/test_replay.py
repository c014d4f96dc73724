"""Replay: equal to the live worker, continuous with it, and swapped in blue-green without query errors."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer

from crash_harness import trial_settings, worker_env
from reference import reference_vectors
from stylestream.models.encoder import untrained_encoder
from stylestream.models.simulation import SimulationConfig, simulate
from stylestream.streams.broker import EmbeddedKafka, free_port
from stylestream.streams.lag import consumer_lag
from stylestream.streams.produce import produce_file
from stylestream.streams.query import recommend
from stylestream.streams.replay import run_replay
from stylestream.streams.store import StyleStore
from stylestream.streams.supervisor import WorkerProcess, all_applied
from stylestream.streams.topics import declare_topics

pytestmark = pytest.mark.integration


def _encoder(version: str, seed: int = 0) -> Any:
    encoder = untrained_encoder(seed=seed)
    encoder.model_version = version
    return encoder


def _produce(bootstrap: str, topic: str, events: list[dict]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for event in events:
        producer.send(topic, key=event["user_id"].encode(), value=json.dumps(event).encode())
    producer.flush()
    producer.close()


@pytest.fixture(scope="module")
def live(kafka: EmbeddedKafka, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run a worker over the first half of a marketplace's user events, then stop it."""
    data_dir = tmp_path_factory.mktemp("replay")
    settings = trial_settings(kafka, data_dir)
    declare_topics(settings)
    marketplace = simulate(SimulationConfig(images=150, users=15, styles=5, subjects=8, seed=21))
    paths = marketplace.write(data_dir / "marketplace")
    first = {"searches": marketplace.searches[: len(marketplace.searches) // 2], "downloads": marketplace.downloads[: len(marketplace.downloads) // 2]}
    second = {"searches": marketplace.searches[len(marketplace.searches) // 2:], "downloads": marketplace.downloads[len(marketplace.downloads) // 2:]}

    web_port = free_port()
    worker = WorkerProcess(worker_env(settings, web_port), data_dir / "worker.log", web_port).start()
    try:
        worker.wait_ready()
        produced = {settings.images_topic: produce_file(settings.bootstrap_servers, settings.images_topic, paths["images"], "images", progress=False)}
        worker.wait_until(all_applied(produced), timeout=120, what="images")
        _produce(settings.bootstrap_servers, settings.searches_topic, first["searches"])
        _produce(settings.bootstrap_servers, settings.downloads_topic, first["downloads"])
        produced.update({settings.searches_topic: len(first["searches"]), settings.downloads_topic: len(first["downloads"])})
        worker.wait_until(all_applied(produced), timeout=180, what="first half")
    finally:
        worker.stop()
    live_version = untrained_encoder().model_version
    return {"settings": settings, "marketplace": marketplace, "first": first, "second": second, "live_version": live_version}


def test_replay_equals_live_worker(live: dict[str, Any]) -> None:
    settings = live["settings"]
    store = StyleStore(settings)
    try:
        result = run_replay(settings, _encoder("replay-equal"), store)
        users = list(live["marketplace"].user_styles)
        live_users = {user: store.view(live["live_version"]).get_user(user) for user in users}
        replayed = {user: store.view("replay-equal").get_user(user) for user in users}
    finally:
        store.close()

    assert result.events == len(live["first"]["searches"]) + len(live["first"]["downloads"])
    assert {u for u, p in live_users.items() if p} == {u for u, p in replayed.items() if p}
    for user, point in live_users.items():
        if point is not None:
            assert np.max(np.abs(point.vector - replayed[user].vector)) <= 1e-5, user
            assert replayed[user].payload["event_count"] == point.payload["event_count"]


def test_blue_green_swap_never_fails_queries(live: dict[str, Any]) -> None:
    settings = live["settings"]
    store = StyleStore(settings)
    served = store.view(None)
    users = [user for user in live["marketplace"].user_styles if store.view(live["live_version"]).get_user(user)]
    answers: list[tuple[str, int, str]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def query_forever() -> None:
        while not stop.is_set():
            for user in users:
                try:
                    answer = recommend(served, user, k=5)
                    answers.append((answer.source, len(answer.items), answer.items[0]["image_id"] if answer.items else ""))
                except BaseException as exc:  # every failure is a test failure, recorded for the assert
                    errors.append(exc)

    thread = threading.Thread(target=query_forever)
    thread.start()
    try:
        run_replay(settings, _encoder("blue-green", seed=3), store, swap_alias=True)
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
        aliases = {alias.alias_name: alias.collection_name for alias in store.client.get_aliases().aliases}
        store.close()

    assert errors == []
    assert len(answers) > len(users)
    assert all(source == "style" and count == 5 for source, count, _ in answers)
    assert aliases[settings.users_collection].endswith("blue_green")
    assert aliases[settings.images_collection].endswith("blue_green")


def test_replay_hands_over_to_live_worker(live: dict[str, Any], tmp_path: Path) -> None:
    settings = live["settings"]
    marketplace = live["marketplace"]
    encoder = _encoder("handover")
    checkpoint = tmp_path / "handover.pt"
    encoder.save(checkpoint)
    app_id = f"{settings.app_id}-handover"

    # Events of the second half arrive while the replay runs; the worker must apply them once.
    producer = threading.Thread(target=lambda: (
        _produce(settings.bootstrap_servers, settings.searches_topic, live["second"]["searches"]),
        _produce(settings.bootstrap_servers, settings.downloads_topic, live["second"]["downloads"]),
    ))
    store = StyleStore(settings)
    try:
        producer.start()
        run_replay(settings, encoder, store, seed_app_id=app_id)
        producer.join()
    finally:
        store.close()

    web_port = free_port()
    env = worker_env(settings.model_copy(update={"app_id": app_id}), web_port) | {"STYLESTREAM_MODEL_PATH": str(checkpoint)}
    worker = WorkerProcess(env, settings.data_dir / "handover-worker.log", web_port).start()
    try:
        worker.wait_ready()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            lags = consumer_lag(settings.bootstrap_servers, app_id, [settings.downloads_topic, settings.searches_topic])
            if all(lag.lag == 0 for lag in lags) and worker.client.stats()["pending_users"] == 0:
                break
            time.sleep(1)
    finally:
        worker.stop()

    store = StyleStore(settings, model_version="handover")
    try:
        stored = {user: store.get_user(user) for user in marketplace.user_styles}
        image_vectors = store.all_image_vectors()
    finally:
        store.close()
    expected = reference_vectors(marketplace.downloads, marketplace.searches, image_vectors)
    counts: dict[str, int] = {}
    for event in marketplace.downloads + marketplace.searches:
        counts[event["user_id"]] = counts.get(event["user_id"], 0) + 1

    for user, vector in expected.items():
        assert stored[user] is not None, user
        assert np.max(np.abs(stored[user].vector - vector)) <= 1e-5, user
        assert stored[user].payload["event_count"] == counts[user], user


def test_interrupted_replay_resumes(live: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import stylestream.streams.replay as replay_module

    settings = live["settings"]
    original_save = replay_module._save_chunk

    def save_then_interrupt(*args: Any) -> None:
        original_save(*args)
        raise KeyboardInterrupt("simulated interruption after the first checkpoint")

    store = StyleStore(settings)
    try:
        run_replay(settings, _encoder("uninterrupted"), store)
        monkeypatch.setattr(replay_module, "CHECKPOINT_EVERY", 100)
        monkeypatch.setattr(replay_module, "_save_chunk", save_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_replay(settings, _encoder("resumed"), store)
        monkeypatch.setattr(replay_module, "_save_chunk", original_save)
        caplog.set_level("INFO", logger="stylestream.streams.replay")
        run_replay(settings, _encoder("resumed"), store, reencode=False)
        users = list(live["marketplace"].user_styles)
        resumed = {user: store.view("resumed").get_user(user) for user in users}
        uninterrupted = {user: store.view("uninterrupted").get_user(user) for user in users}
    finally:
        store.close()

    assert any("Resuming replay" in record.getMessage() for record in caplog.records)
    assert {u for u, p in resumed.items() if p} == {u for u, p in uninterrupted.items() if p}
    for user, point in uninterrupted.items():
        if point is not None:
            assert np.max(np.abs(point.vector - resumed[user].vector)) <= 1e-6, user
            assert resumed[user].payload["event_count"] == point.payload["event_count"]
