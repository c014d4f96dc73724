"""The end-to-end demo: embedded Kafka, a worker, a simulated marketplace, and its figures."""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from stylestream.models.simulation import SimulationConfig, simulate, style_match_at_k
from stylestream.streams.broker import EmbeddedKafka, free_port
from stylestream.streams.produce import produce_file
from stylestream.streams.settings import Settings
from stylestream.streams.supervisor import WorkerProcess, all_applied
from stylestream.streams.topics import declare_topics

log = logging.getLogger(__name__)


def run_demo(
    data_dir: Path, config: SimulationConfig = SimulationConfig(), show_users: int = 3, broker: str | None = None
) -> dict[str, Any]:
    """Stream a simulated marketplace through Kafka and a worker; return the demo's figures.

    `data_dir` is emptied first. `broker` is a kafka:// URL; None starts the embedded broker.
    """
    started = time.monotonic()
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)

    with ExitStack() as cleanup:
        # Step 1: the broker and the topics.
        if broker is None:
            kafka = EmbeddedKafka(work_dir=data_dir / "kafka")
            kafka.start()
            cleanup.callback(kafka.stop)
            broker = kafka.url
        settings = Settings(broker=broker, data_dir=data_dir)
        declare_topics(settings)

        # Step 2: the marketplace, written as JSONL with its ground truth.
        print(f"Simulating a marketplace: {config.images} images, {config.users} creatives ...", flush=True)
        marketplace = simulate(config)
        paths = marketplace.write(data_dir / "marketplace")

        # Step 3: a worker in a child process.
        web_port = free_port()
        worker = WorkerProcess(
            {"STYLESTREAM_BROKER": broker, "STYLESTREAM_DATA_DIR": str(data_dir), "STYLESTREAM_WEB_PORT": str(web_port),
             "STYLESTREAM_REBALANCE_TIMEOUT": "3"},
            data_dir / "worker.log", web_port,
        )
        worker.start()
        cleanup.callback(worker.stop)
        worker.wait_ready()
        print(f"Worker ready on http://127.0.0.1:{web_port} (log: {worker.log_path})", flush=True)

        # Step 4: images first, then user events, all through Kafka.
        bootstrap = settings.bootstrap_servers
        produced = {"images": produce_file(bootstrap, settings.images_topic, paths["images"], "images")}
        worker.wait_until(all_applied(produced), timeout=300, what="images to be indexed")
        produced["searches"] = produce_file(bootstrap, settings.searches_topic, paths["searches"], "searches")
        produced["downloads"] = produce_file(bootstrap, settings.downloads_topic, paths["downloads"], "downloads")
        streamed_at = time.monotonic()
        stats = worker.wait_until(all_applied(produced), timeout=600, what="every event to be applied and flushed")
        stream_seconds = time.monotonic() - streamed_at

        # Step 5: recommendations for every creative, over the worker's HTTP endpoint.
        recommended: dict[str, list[str]] = {}
        for user_id in marketplace.user_styles:
            answer = worker.client.recommend(user_id, k=10)
            if answer["source"] == "style":
                recommended[user_id] = [item["image_id"] for item in answer["items"]]
        truth = {"image_style": marketplace.image_style, "user_styles": marketplace.user_styles}
        figures: dict[str, Any] = style_match_at_k(recommended, truth, k=10)
        for user_id in list(marketplace.user_styles)[:show_users]:
            _print_user(user_id, worker.client.recommend(user_id, k=5), marketplace)

    figures.update({
        "events": marketplace.event_count,
        "images": len(marketplace.images),
        "users": len(marketplace.user_styles),
        "users_with_vectors": len(recommended),
        "dead_letters": sum(stats.get("dead_letters", {}).values()),
        "stream_seconds": round(stream_seconds, 2),
        "events_per_second": round(marketplace.event_count / max(stream_seconds, 1e-9), 1),
        "seconds": round(time.monotonic() - started, 2),
    })
    return figures


def _print_user(user_id: str, answer: dict[str, Any], marketplace: Any) -> None:
    preferred = marketplace.user_styles[user_id]
    print(f"\n{user_id} prefers styles {preferred}; top recommendations ({answer['source']}):")
    for item in answer["items"]:
        style = marketplace.image_style[item["image_id"]]
        mark = "match" if style in preferred else "     "
        subject = marketplace.image_subject[item["image_id"]]
        print(f"  {item['image_id']}  score {item['score']:.3f}  style {style:2d} {mark}  subject {subject:2d}")


def write_figures(figures: dict[str, Any], path: Path | None, title: str = "Demo figures") -> None:
    """Print figures under `title`, floats to 3 decimals, and write them as JSON when `path` is given."""
    print(f"\n{title}:")
    for key, value in figures.items():
        print(f"  {key}: {round(value, 3) if isinstance(value, float) else value}")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2))
        print(f"Wrote {path}")
