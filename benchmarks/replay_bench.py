"""Replay throughput against the raw aiokafka consumer and a replay through Faust agents, in one run.

Usage: python benchmarks/replay_bench.py [--events 1000000] [--faust-events 100000] [--runs 3]

The three rates are measured on the same embedded broker in one process tree, one after the
other, and reported with their ratios:
- raw: an aiokafka consumer that only reads and decodes (orjson) every user event;
- replay: `run_replay`'s event phase (read, validate, compute states, upsert users);
- faust: a stylestream worker consuming the same kind of events from the start, as a replay
  through agents would. It runs on a smaller topic pair (`--faust-events`), because a million
  events would take many minutes at the agents' rate. Its rate is events over wall time.
Results go to benchmarks/results/replay.json and are printed as Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from crash_harness import worker_env  # noqa: E402
from stylestream.models.encoder import untrained_encoder  # noqa: E402
from stylestream.streams.broker import EmbeddedKafka, free_port  # noqa: E402
from stylestream.streams.replay import run_replay  # noqa: E402
from stylestream.streams.settings import Settings  # noqa: E402
from stylestream.streams.store import StyleStore  # noqa: E402
from stylestream.streams.supervisor import WorkerProcess, all_applied  # noqa: E402
from stylestream.streams.topics import declare_topics, partition_for  # noqa: E402

IMAGES = 5000
USERS = 50_000
RESULTS_PER_SEARCH = 20


def _settings(kafka: EmbeddedKafka, data_dir: Path) -> Settings:
    prefix = f"r{uuid.uuid4().hex[:8]}"
    return Settings(
        broker=kafka.url, data_dir=data_dir, app_id=f"{prefix}-app", partitions=4, image_partitions=1,
        downloads_topic=f"{prefix}-downloads", searches_topic=f"{prefix}-searches", images_topic=f"{prefix}-images",
    )


def _images(rng: np.random.Generator) -> list[bytes]:
    now = time.time() - 86400
    return [
        orjson.dumps({
            "image_id": f"img-{number:06d}", "timestamp": now, "deep": np.round(rng.normal(size=128), 4).tolist(),
            "colors": np.round(rng.dirichlet(np.ones(12)), 4).tolist(), "categories": [f"c{number % 20}"],
            "keywords": [f"k{number % 300}"], "creator": f"creator-{number % 50}",
        })
        for number in range(IMAGES)
    ]


def _user_events(count: int, rng: np.random.Generator) -> list[tuple[str, str, bytes]]:
    """Return (kind, user_id, value) for `count` events: one search followed by downloads from it."""
    events: list[tuple[str, str, bytes]] = []
    start = time.time() - 90 * 86400
    number = 0
    while len(events) < count:
        user = f"user-{int(rng.integers(0, USERS)):06d}"
        search_id = f"s{number}"
        t = start + number * (80 * 86400 / count)
        results = [f"img-{int(image):06d}" for image in rng.choice(IMAGES, size=RESULTS_PER_SEARCH, replace=False)]
        events.append(("searches", user, orjson.dumps({
            "event_id": f"e{number}", "user_id": user, "search_id": search_id, "query": "q", "timestamp": t, "results": results,
        })))
        number += 1
        for image in rng.choice(results, size=4, replace=False):
            events.append(("downloads", user, orjson.dumps({
                "event_id": f"e{number}", "user_id": user, "image_id": str(image), "timestamp": t + 60, "search_id": search_id,
            })))
            number += 1
    return events[:count]


async def _produce(settings: Settings, images: list[bytes], events: list[tuple[str, str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=50, max_batch_size=1_048_576, acks=1)
    await producer.start()
    try:
        for value in images:
            await producer.send(settings.images_topic, value=value, key=orjson.loads(value)["image_id"].encode())
        topics = {"downloads": settings.downloads_topic, "searches": settings.searches_topic}
        pending = []
        for kind, user, value in events:
            pending.append(await producer.send(topics[kind], value=value, key=user.encode(), partition=partition_for(user, settings.partitions)))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def _raw_consume(settings: Settings, total: int) -> float:
    consumer = AIOKafkaConsumer(
        settings.downloads_topic, settings.searches_topic, bootstrap_servers=settings.bootstrap_servers,
        group_id=f"raw-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest", enable_auto_commit=False,
        fetch_max_bytes=64 * 1048576, max_partition_fetch_bytes=16 * 1048576,
    )
    await consumer.start()
    consumed = 0
    started = None
    try:
        while consumed < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=50_000)
            if started is None and batches:
                started = time.monotonic()
            for records in batches.values():
                for record in records:
                    orjson.loads(record.value)
                consumed += len(records)
    finally:
        await consumer.stop()
    return consumed / (time.monotonic() - (started or time.monotonic()))


def _faust_replay(kafka: EmbeddedKafka, data_dir: Path, events: list[tuple[str, str, bytes]], images: list[bytes]) -> float:
    """Return the events/s of a worker that applies a backlog of `events` through its Faust agents."""
    settings = _settings(kafka, data_dir / "faust")
    declare_topics(settings)
    asyncio.run(_produce(settings, images, []))
    web_port = free_port()
    worker = WorkerProcess(worker_env(settings, web_port), data_dir / "faust-worker.log", web_port).start()
    try:
        worker.wait_ready(timeout=180)
        worker.wait_until(all_applied({settings.images_topic: len(images)}), timeout=600, what="images")
        counts = {settings.downloads_topic: sum(1 for kind, _, _ in events if kind == "downloads")}
        counts[settings.searches_topic] = len(events) - counts[settings.downloads_topic]
        started = time.monotonic()
        asyncio.run(_produce(settings, [], events))
        worker.wait_until(all_applied(counts), timeout=3600, what="user events")
        return len(events) / (time.monotonic() - started)
    finally:
        worker.stop()


def main() -> None:
    """Run the comparison and write benchmarks/results/replay.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--faust-events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    rng = np.random.default_rng(0)
    images = _images(rng)
    events = _user_events(arguments.events, rng)
    data_dir = ROOT / "data" / "bench-replay"

    with EmbeddedKafka(heap="1g") as kafka:
        settings = _settings(kafka, data_dir)
        declare_topics(settings)
        produced_at = time.monotonic()
        asyncio.run(_produce(settings, images, events))
        print(f"Produced {len(events):,} events in {time.monotonic() - produced_at:.1f} s", flush=True)

        raw_rates, replay_rates = [], []
        for run in range(arguments.runs):
            raw_rates.append(asyncio.run(_raw_consume(settings, len(events))))
            store = StyleStore(settings)
            try:
                encoder = untrained_encoder()
                encoder.model_version = f"bench-{run}"
                result = run_replay(settings, encoder, store, reencode=run == 0, collection_version="bench")
            finally:
                store.close()
            replay_rates.append(result.events_per_second)
            print(f"run {run + 1}: raw {raw_rates[-1]:,.0f} events/s, replay {replay_rates[-1]:,.0f} events/s "
                  f"({result.users:,} users)", flush=True)
        faust_rate = _faust_replay(kafka, data_dir, events[: arguments.faust_events], images)

    figures: dict[str, Any] = {
        "events": len(events),
        "runs": arguments.runs,
        "raw_consume_events_per_s": statistics.median(raw_rates),
        "replay_events_per_s": statistics.median(replay_rates),
        "faust_replay_events_per_s": faust_rate,
        "faust_replay_events": arguments.faust_events,
    }
    figures["replay_to_raw"] = figures["replay_events_per_s"] / figures["raw_consume_events_per_s"]
    figures["replay_to_faust"] = figures["replay_events_per_s"] / faust_rate
    output = ROOT / "benchmarks" / "results" / "replay.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
