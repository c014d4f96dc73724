"""A crash trial: SIGKILL a worker at random moments while events stream in, restart it, compare with a clean run.

The clean run's result is the independent numpy computation of the same events (see reference.py),
which the pipeline tests show a worker reproduces. Used by the short test and the long trials.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaProducer

from reference import reference_vectors
from stylestream.models.simulation import Marketplace
from stylestream.streams.broker import EmbeddedKafka, free_port
from stylestream.streams.client import WorkerRequestError
from stylestream.streams.lag import consumer_lag
from stylestream.streams.produce import produce_file
from stylestream.streams.settings import Settings
from stylestream.streams.store import StyleStore
from stylestream.streams.supervisor import WorkerProcess, all_applied
from stylestream.streams.topics import declare_topics


def trial_settings(kafka: EmbeddedKafka, data_dir: Path) -> Settings:
    """Return settings with fresh topic names and consumer group for one trial."""
    prefix = f"c{uuid.uuid4().hex[:8]}"
    return Settings(
        broker=kafka.url, data_dir=data_dir, app_id=f"{prefix}-app", partitions=2, image_partitions=1,
        downloads_topic=f"{prefix}-downloads", searches_topic=f"{prefix}-searches", images_topic=f"{prefix}-images",
    )


def worker_env(settings: Settings, web_port: int, **extra: str) -> dict[str, str]:
    """Return the STYLESTREAM_* variables of a test worker child for `settings`, with short timeouts."""
    return {
        **settings.to_environment(),
        "STYLESTREAM_WEB_PORT": str(web_port),
        "STYLESTREAM_REBALANCE_TIMEOUT": "2",
        "STYLESTREAM_SESSION_TIMEOUT": "6",
        "STYLESTREAM_IMAGE_WAIT_SECONDS": "1",
        "STYLESTREAM_LIVENESS_INTERVAL": "2",
        "STYLESTREAM_STALL_SECONDS": "20",
        **extra,
    }


def produce_slowly(bootstrap: str, settings: Settings, marketplace: Marketplace, seconds: float) -> None:
    """Produce the marketplace's user events in random order, in 40 steps spread over `seconds`."""
    events = [(settings.searches_topic, event) for event in marketplace.searches]
    events += [(settings.downloads_topic, event) for event in marketplace.downloads]
    random.Random(1).shuffle(events)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    chunk = max(len(events) // 40, 1)
    for start in range(0, len(events), chunk):
        for topic, event in events[start:start + chunk]:
            producer.send(topic, key=event["user_id"].encode(), value=json.dumps(event).encode())
        producer.flush()
        time.sleep(seconds / 40)
    producer.close()


def count_user_events(marketplace: Marketplace) -> dict[str, int]:
    """Return each user's number of downloads and searches in `marketplace`."""
    counts: dict[str, int] = {}
    for event in marketplace.downloads + marketplace.searches:
        counts[event["user_id"]] = counts.get(event["user_id"], 0) + 1
    return counts


def liveness_failed(worker: WorkerProcess) -> bool:
    """Return True when the worker's liveness check fails because a partition stopped progressing."""
    try:
        worker.client.request("GET", "/health")
    except WorkerRequestError as exc:
        return exc.status == 503
    return False


def _drain(settings: Settings, worker: WorkerProcess, env: dict[str, str], log_path: Path, timeout: float) -> tuple[WorkerProcess, int]:
    """Wait until the group's lag and the sink are empty; restart the worker when its liveness check fails.

    Returns the worker that finished and how many liveness restarts it took, as an orchestrator
    with a liveness probe on /health would do them.
    """
    topics = [settings.downloads_topic, settings.searches_topic]
    deadline = time.monotonic() + timeout
    restarts = 0
    lags: list[Any] = []
    while time.monotonic() < deadline:
        lags = consumer_lag(settings.bootstrap_servers, settings.app_id, topics)
        if lags and all(lag.lag == 0 for lag in lags) and worker.client.stats().get("pending_users", 1) == 0:
            return worker, restarts
        if liveness_failed(worker):
            worker.kill()
            worker = WorkerProcess(env, log_path, int(env["STYLESTREAM_WEB_PORT"])).start()
            worker.wait_ready(timeout=180)
            restarts += 1
        time.sleep(1.0)
    worker.stop()
    raise TimeoutError(f"consumer lag did not reach zero within {timeout:.0f} s: {lags}")


def run_crash_trial(kafka: EmbeddedKafka, data_dir: Path, marketplace: Marketplace, kills: int, seed: int) -> dict[str, Any]:
    """Stream `marketplace` while killing the worker `kills` times; return how the final store compares."""
    rng = random.Random(seed)
    settings = trial_settings(kafka, data_dir)
    declare_topics(settings)
    paths = marketplace.write(data_dir / "marketplace")
    web_port = free_port()
    env = worker_env(settings, web_port)
    worker = WorkerProcess(env, data_dir / "worker.log", web_port).start()
    try:
        worker.wait_ready()
        produced = {settings.images_topic: produce_file(settings.bootstrap_servers, settings.images_topic, paths["images"], "images", progress=False)}
        worker.wait_until(all_applied(produced), timeout=120, what="images")

        producer = threading.Thread(target=produce_slowly, args=(settings.bootstrap_servers, settings, marketplace, 3.0 * kills + 3.0))
        producer.start()
        for _ in range(kills):
            time.sleep(rng.uniform(0.5, 3.0))
            worker.kill()
            worker = WorkerProcess(env, data_dir / "worker.log", web_port).start()
            worker.wait_ready(timeout=180)
        producer.join()
        worker, restarts = _drain(settings, worker, env, data_dir / "worker.log", timeout=300)
    finally:
        worker.stop()

    store = StyleStore(settings)
    try:
        stored = {user: store.get_user(user) for user in marketplace.user_styles}
        image_vectors = store.image_vectors(image["image_id"] for image in marketplace.images)
    finally:
        store.close()
    expected = reference_vectors(marketplace.downloads, marketplace.searches, image_vectors)
    events_per_user = count_user_events(marketplace)

    lost = sorted(user for user in expected if stored.get(user) is None)
    differences = [float(np.max(np.abs(stored[user].vector - vector))) for user, vector in expected.items() if stored.get(user) is not None]
    miscounted = sorted(
        user for user, point in stored.items() if point is not None and point.payload["event_count"] != events_per_user[user]
    )
    return {
        "events": marketplace.event_count,
        "kills": kills,
        "liveness_restarts": restarts,
        "max_abs_diff": max(differences) if differences else float("inf"),
        "lost_users": lost,
        "miscounted_users": miscounted,
    }
