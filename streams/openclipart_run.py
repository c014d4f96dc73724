"""The openclipart run: featurize the catalogue, simulate creatives, stream them, evaluate.

Output folder layout (`out_dir`):

- `catalogue.jsonl`: the catalogue (written by `stylestream datasets openclipart`);
- `images.jsonl`: `images` events, appended to and resumed across runs;
- `encoder.pt`: the untrained style encoder for 1280-d deep and COLORS_DIM colour features, used
  when no checkpoint is given;
- `creatives/`: searches.jsonl, downloads.jsonl and truth.json;
- `training-creatives/`: the same files for creatives simulated with another seed, only to train
  the encoder on (written with `--training-creatives`);
- `run/`: Kafka, worker and embedded Qdrant store of the last run (emptied at each run);
- `recommendations.json`: each creative's top 10, unfiltered and per held-out project;
- `figures.json`: the evaluation figures, read by `stylestream report`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from stylestream.models.datasets.creatives import CreativeConfig, CreativeMarket, simulate_creatives
from stylestream.models.datasets.creator_match import creator_match_at_k
from stylestream.models.datasets.openclipart import read_catalogue
from stylestream.models.encoder import ModelError, StyleEncoder, untrained_encoder
from stylestream.models.featurize import COLORS_DIM, EfficientNetLite0, iter_catalogue
from stylestream.models.features import FeatureSchema
from stylestream.streams import demo
from stylestream.streams.broker import EmbeddedKafka, free_port
from stylestream.streams.client import WorkerClient
from stylestream.streams.featurize_output import featurize_to_jsonl
from stylestream.streams.produce import produce_file
from stylestream.streams.settings import Settings
from stylestream.streams.supervisor import WorkerProcess, all_applied
from stylestream.streams.topics import declare_topics

log = logging.getLogger(__name__)

TOP_K = 10


def ensure_features(out_dir: Path, batch_size: int = 32) -> Path:
    """Featurize the catalogue's drawings not yet in images.jsonl; return its path."""
    images_path = out_dir / "images.jsonl"
    items = list(iter_catalogue(out_dir / "catalogue.jsonl"))
    report = featurize_to_jsonl(items, len(items), EfficientNetLite0(), images_path, batch_size)
    if report.written:
        print(f"Featurized {report.written} drawings at {report.images_per_second:.1f} images/s", flush=True)
    return images_path


def save_encoder(out_dir: Path) -> Path:
    """Save the untrained encoder for EfficientNet-Lite0 and colour features; return its path."""
    path = out_dir / "encoder.pt"
    untrained_encoder(FeatureSchema(deep_dim=EfficientNetLite0.dim, colors_dim=COLORS_DIM)).save(path)
    return path


def check_encoder(path: Path) -> str:
    """Load the checkpoint at `path`, check it takes this catalogue's features and return its model_version."""
    encoder = StyleEncoder.load(path)
    expected = (EfficientNetLite0.dim, COLORS_DIM)
    if (encoder.schema.deep_dim, encoder.schema.colors_dim) != expected:
        raise ModelError(
            f"checkpoint {path} takes {encoder.schema.deep_dim} deep and {encoder.schema.colors_dim} colour values, but the "
            f"openclipart images have {expected[0]} and {expected[1]}; pass a checkpoint trained on the openclipart events "
            "(make model-openclipart writes one)"
        )
    return encoder.model_version


def simulate_events(
    out_dir: Path, config: CreativeConfig = CreativeConfig(), end_time: float | None = None, folder: str = "creatives"
) -> tuple[CreativeMarket, dict[str, Path]]:
    """Simulate the creatives on the catalogue in `out_dir` and write their events to `out_dir/folder`."""
    market = simulate_creatives(read_catalogue(out_dir / "catalogue.jsonl"), config, end_time)
    paths = market.write(out_dir / folder)
    print(f"Simulated {len(market.user_creators)} creatives: {market.event_count} events -> {out_dir / folder}", flush=True)
    return market, paths


def query_recommendations(client: WorkerClient, truth: dict[str, Any], k: int = TOP_K) -> dict[str, Any]:
    """Ask the worker for each creative's unfiltered top k and top k per held-out project keyword."""
    top: dict[str, list[str]] = {}
    held_out: dict[str, dict[str, list[str]]] = {}
    for user_id, keywords in truth["held_out"].items():
        answer = client.recommend(user_id, k=k)
        if answer["source"] != "style":
            continue
        top[user_id] = [item["image_id"] for item in answer["items"]]
        held_out[user_id] = {
            keyword: [item["image_id"] for item in client.recommend(user_id, k=k, keywords=[keyword])["items"]]
            for keyword in keywords
        }
    return {"top": top, "held_out": held_out}


def run_openclipart(
    out_dir: Path,
    config: CreativeConfig = CreativeConfig(),
    batch_size: int = 32,
    model_path: Path | None = None,
    end_time: float | None = None,
) -> dict[str, Any]:
    """Run the whole evaluation on a built catalogue in `out_dir`; return the figures.

    `model_path` is the style encoder checkpoint the worker loads; None uses the untrained encoder.
    `end_time` is the epoch time of the simulated creatives' last events; None is an hour ago.
    """
    started = time.monotonic()
    images_path = ensure_features(out_dir, batch_size)
    if model_path is None:
        model_path = save_encoder(out_dir)
        model_description = "EfficientNet-Lite0 ImageNet features, untrained style encoder"
    else:
        model_description = f"EfficientNet-Lite0 ImageNet features, style encoder {check_encoder(model_path)} from {model_path}"
    market, paths = simulate_events(out_dir, config, end_time)

    run_dir = out_dir / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    with ExitStack() as cleanup:
        kafka = EmbeddedKafka(work_dir=run_dir / "kafka")
        kafka.start()
        cleanup.callback(kafka.stop)
        settings = Settings(broker=kafka.url, data_dir=run_dir, model_path=model_path)
        declare_topics(settings)
        web_port = free_port()
        worker = WorkerProcess(
            {"STYLESTREAM_BROKER": kafka.url, "STYLESTREAM_DATA_DIR": str(run_dir), "STYLESTREAM_WEB_PORT": str(web_port),
             "STYLESTREAM_MODEL_PATH": str(model_path), "STYLESTREAM_REBALANCE_TIMEOUT": "3"},
            run_dir / "worker.log", web_port,
        )
        worker.start()
        cleanup.callback(worker.stop)
        worker.wait_ready()

        bootstrap = settings.bootstrap_servers
        produced = {"images": produce_file(bootstrap, settings.images_topic, images_path, "images")}
        worker.wait_until(all_applied(produced), timeout=600, what="images to be indexed")
        produced["searches"] = produce_file(bootstrap, settings.searches_topic, paths["searches"], "searches")
        produced["downloads"] = produce_file(bootstrap, settings.downloads_topic, paths["downloads"], "downloads")
        streamed_at = time.monotonic()
        stats = worker.wait_until(all_applied(produced), timeout=600, what="every event to be applied and flushed")
        stream_seconds = time.monotonic() - streamed_at
        results = query_recommendations(worker.client, market.truth())

    (out_dir / "recommendations.json").write_text(json.dumps(results))
    # The worker leaves a user's last 200 downloads (more than any creative makes here) out of its
    # recommendations, so chance and best leave every download out too.
    downloaded: dict[str, set[str]] = {}
    for event in market.downloads:
        downloaded.setdefault(event["user_id"], set()).add(event["image_id"])
    figures: dict[str, Any] = creator_match_at_k(results["held_out"], results["top"], market.truth(), k=TOP_K, excluded=downloaded)
    figures.update({
        "model_version": model_description,
        "images": produced["images"],
        "creatives": len(market.user_creators),
        "events": market.event_count,
        "dead_letters": sum(stats.get("dead_letters", {}).values()),
        "stream_seconds": round(stream_seconds, 2),
        "seconds": round(time.monotonic() - started, 2),
    })
    (out_dir / "figures.json").write_text(json.dumps(figures, indent=2))
    return figures


def write_figures(figures: dict[str, Any], path: Path | None) -> None:
    """Print the openclipart figures and write them as JSON when `path` is given."""
    demo.write_figures(figures, path, title="openclipart figures")
