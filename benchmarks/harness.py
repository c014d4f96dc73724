"""Shared pieces of the benchmark suite: workloads, topics, producers, child processes and rates.

Every scenario gets fresh topics and a fresh consumer group on the one embedded broker, so
scenarios never share offsets. Throughput is the slope of the consumed count between 10 % and
90 % of a pre-produced backlog, which leaves out start-up and the tail of the last flush.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from kafka import KafkaProducer

from stylestream.models.encoder import untrained_encoder
from stylestream.models.simulation import SimulationConfig, simulate
from stylestream.streams.broker import EmbeddedKafka
from stylestream.streams.settings import Settings
from stylestream.streams.store import StyleStore
from stylestream.streams.topics import declare_topics

BENCH_DIR = Path(__file__).resolve().parent
POLL_SECONDS = 0.1


@dataclass
class Workload:
    """Image events and user events (searches and downloads in event-time order) of a simulation."""

    images: list[dict[str, Any]]
    events: list[tuple[str, dict[str, Any]]]

    def renamed(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        """Return the user events with every user id prefixed, so they update new users."""
        return [(kind, {**event, "user_id": prefix + event["user_id"]}) for kind, event in self.events]


def make_workload(users: int, images: int = 2000, seed: int = 7) -> Workload:
    """Simulate a marketplace and order its searches and downloads by event time."""
    marketplace = simulate(SimulationConfig(images=images, users=users, seed=seed))
    events = [("searches", event) for event in marketplace.searches] + [("downloads", event) for event in marketplace.downloads]
    events.sort(key=lambda item: item[1]["timestamp"])
    return Workload(marketplace.images, events)


def scenario_settings(kafka: EmbeddedKafka, data_dir: Path, name: str) -> Settings:
    """Return settings with fresh topics and consumer group, and create the topics."""
    prefix = f"{name}-{uuid.uuid4().hex[:6]}"
    settings = Settings(
        broker=kafka.url, data_dir=data_dir, app_id=f"{prefix}-app",
        downloads_topic=f"{prefix}-downloads", searches_topic=f"{prefix}-searches", images_topic=f"{prefix}-images",
    )
    declare_topics(settings)
    return settings


def worker_env(settings: Settings, web_port: int, **extra: str) -> dict[str, str]:
    """Return the STYLESTREAM_* variables that configure a worker child for `settings`."""
    env = {
        **settings.to_environment(),
        "STYLESTREAM_WEB_PORT": str(web_port),
        "STYLESTREAM_REBALANCE_TIMEOUT": "3",
        "STYLESTREAM_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH", "")])),
    }
    env.update(extra)
    return env


def index_images(settings: Settings, images: list[dict[str, Any]], batch: int = 256) -> None:
    """Encode images and write them into the embedded store of `settings`, as the images agent would."""
    encoder = untrained_encoder()
    store = StyleStore(settings, model_version=encoder.model_version)
    try:
        store.ensure_collections(encoder.style_dim)
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            vectors = encoder.encode(
                [image["deep"] for image in chunk], [image["colors"] for image in chunk],
                [image["categories"] for image in chunk], [image["keywords"] for image in chunk],
            )
            payloads = [
                {key: image[key] for key in ("image_id", "timestamp", "categories", "keywords", "creator")}
                | {"metadata": image.get("metadata") or {}, "model_version": encoder.model_version}
                for image in chunk
            ]
            store.upsert_images(payloads, vectors)
    finally:
        store.close()


def copy_store(template: Path, settings: Settings) -> None:
    """Copy a prepared embedded store (images already indexed) to the store folder of `settings`."""
    if settings.data_dir.exists():
        shutil.rmtree(settings.data_dir)
    shutil.copytree(template, settings.qdrant_path)


def _producer(bootstrap: str, linger_ms: int) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=linger_ms, batch_size=256 * 1024)


def produce_backlog(settings: Settings, events: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, int]:
    """Send every event to its topic, keyed by user id; return the count per topic."""
    topics = {"searches": settings.searches_topic, "downloads": settings.downloads_topic}
    counts = {topic: 0 for topic in topics.values()}
    producer = _producer(settings.bootstrap_servers, linger_ms=20)
    try:
        for kind, event in events:
            producer.send(topics[kind], key=event["user_id"].encode(), value=json.dumps(event).encode())
            counts[topics[kind]] += 1
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=10)
    return counts


def produce_paced(settings: Settings, events: list[tuple[str, dict[str, Any]]], rate: float) -> dict[str, Any]:
    """Send events at `rate` per second in 10 ms ticks; return the counts and the rate reached.

    The Kafka message timestamp is set when each event is sent, so the worker's event-to-upsert
    histogram measures from that moment.
    """
    topics = {"searches": settings.searches_topic, "downloads": settings.downloads_topic}
    counts = {topic: 0 for topic in topics.values()}
    # Events are encoded up front and sent with a 5 ms linger, so the load generator takes little
    # of the CPU the worker is measured on. The linger counts towards the measured freshness.
    messages = [(topics[kind], event["user_id"].encode(), json.dumps(event).encode()) for kind, event in events]
    producer = _producer(settings.bootstrap_servers, linger_ms=5)
    started = time.monotonic()
    sent = 0
    try:
        while sent < len(messages):
            due = min(len(messages), int((time.monotonic() - started) * rate) + 1)
            for topic, key, value in messages[sent:due]:
                producer.send(topic, key=key, value=value)
                counts[topic] += 1
            sent = due
            time.sleep(0.01)
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)
    seconds = time.monotonic() - started
    return {"counts": counts, "seconds": seconds, "rate": sent / seconds}


def run_child(script: str, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start `python benchmarks/<script>` with `env` added; its output goes to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, str(BENCH_DIR / script)], env={**os.environ, **env},
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )


def stop_child(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a child with SIGTERM, then SIGKILL after `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def rss_bytes(pid: int) -> int:
    """Return the resident set size of a process, from /proc (Linux only)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"VmRSS is missing from /proc/{pid}/status")


@dataclass
class Rate:
    """A measured consumption rate: events per second between 10 % and 90 % of a backlog."""

    events_per_s: float
    events: int
    seconds: float
    reached: int


def measure_rate(count: Callable[[], int | None], total: int, timeout: float, is_alive: Callable[[], bool] = lambda: True) -> Rate:
    """Poll `count()` until it reaches `total` or `timeout` passes; return the 10-90 % slope.

    `count` returns None while the process cannot answer yet. When the backlog is not drained in
    time, the slope runs from 10 % to the last sample.
    """
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive():
            raise RuntimeError(f"the measured process exited after {samples[-1][1] if samples else 0} of {total} events")
        value = count()
        if value is not None:
            samples.append((time.monotonic(), value))
            if value >= total:
                break
        time.sleep(POLL_SECONDS)
    if not samples:
        raise TimeoutError(f"no progress reported within {timeout:.0f} s")
    return rate_between(samples, 0.1 * total, 0.9 * total)


def rate_between(samples: list[tuple[float, int]], low: float, high: float) -> Rate:
    """Return the slope between the times `low` and `high` were crossed, interpolating between samples."""
    times = np.array([t for t, _ in samples])
    values = np.array([v for _, v in samples], dtype=np.float64)
    high = min(high, float(values[-1]))
    if high <= low:
        raise RuntimeError(f"only {int(values[-1])} events were consumed; too few to measure a rate above {low:.0f}")
    t_low = float(np.interp(low, values, times))
    t_high = float(np.interp(high, values, times))
    seconds = max(t_high - t_low, 1e-9)
    return Rate((high - low) / seconds, int(high - low), seconds, int(values[-1]))


def histogram_delta(before: dict[str, Any], after: dict[str, Any]) -> tuple[list[float], list[int], int]:
    """Return bucket bounds, cumulative counts and the total observed between two histogram snapshots."""
    bounds = [float(bound) for bound in after["buckets"]]
    counts = [after["buckets"][key] - before["buckets"].get(key, 0) for key in after["buckets"]]
    return bounds, counts, after["count"] - before["count"]


def histogram_quantile(bounds: list[float], cumulative: list[int], total: int, q: float) -> float:
    """Estimate a quantile from cumulative bucket counts by linear interpolation inside the bucket.

    Returns infinity when the quantile lies above the largest bound, as Prometheus does.
    """
    if total == 0:
        return float("nan")
    target = q * total
    lower_bound, lower_count = 0.0, 0
    for bound, count in zip(bounds, cumulative):
        if count >= target:
            inside = count - lower_count
            share = (target - lower_count) / inside if inside else 1.0
            return lower_bound + share * (bound - lower_bound)
        lower_bound, lower_count = bound, count
    return float("inf")
