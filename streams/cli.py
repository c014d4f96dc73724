"""The `stylestream` command line.

Every setting can come from a STYLESTREAM_* environment variable; the flags below override them.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from stylestream.schemas.errors import StylestreamError

log = logging.getLogger("stylestream")

SETTING_OPTIONS = [
    click.option("--broker", help="Kafka URL (kafka://host:port) or 'embedded'. Env: STYLESTREAM_BROKER."),
    click.option("--qdrant-url", help="Qdrant server URL; unset uses the embedded store. Env: STYLESTREAM_QDRANT_URL."),
    click.option("--qdrant-api-key", help="Qdrant API key. Env: STYLESTREAM_QDRANT_API_KEY."),
    click.option("--data-dir", type=click.Path(path_type=Path), help="Folder of the embedded store. Env: STYLESTREAM_DATA_DIR."),
    click.option("--model", "model_path", type=click.Path(path_type=Path), help="Style encoder checkpoint. Env: STYLESTREAM_MODEL_PATH."),
    click.option("--partitions", type=int, help="Partitions of downloads and searches. Env: STYLESTREAM_PARTITIONS."),
    click.option("--half-life-days", type=float, help="Half-life of event weights in days. Env: STYLESTREAM_HALF_LIFE_DAYS."),
    click.option("--download-weight", type=float, help="Weight of a download. Env: STYLESTREAM_DOWNLOAD_WEIGHT."),
    click.option("--impression-weight", type=float, help="Negative weight of an ignored search result. Env: STYLESTREAM_IMPRESSION_WEIGHT."),
    click.option("--flush-interval", type=float, help="Seconds between sink flushes. Env: STYLESTREAM_FLUSH_INTERVAL."),
    click.option("--downloads-topic", help="Env: STYLESTREAM_DOWNLOADS_TOPIC."),
    click.option("--searches-topic", help="Env: STYLESTREAM_SEARCHES_TOPIC."),
    click.option("--images-topic", help="Env: STYLESTREAM_IMAGES_TOPIC."),
    click.option("--web-port", type=int, help="Port of the worker's HTTP endpoints. Env: STYLESTREAM_WEB_PORT."),
]


def setting_options(function: Any) -> Any:
    """Add the shared setting flags to a command."""
    for option in reversed(SETTING_OPTIONS):
        function = option(function)
    return function


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so a command's cleanup (finally blocks) runs as on Ctrl-C."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def build_settings(overrides: dict[str, Any]) -> Any:
    """Build Settings from the environment, overridden by the flags that were given."""
    from stylestream.streams.settings import Settings

    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"STYLESTREAM_{'_'.join(str(part) for part in error['loc']).upper()} = {error.get('input')!r}: {error['msg']}"
            for error in exc.errors()
        )
        raise click.UsageError(f"invalid settings: {problems}") from None


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr in the format of STYLESTREAM_LOG_FORMAT (text or json); Kafka clients at WARNING."""
    import os

    from stylestream.streams.logs import configure_logging as apply_logging

    log_format = "json" if os.environ.get("STYLESTREAM_LOG_FORMAT", "text").lower() == "json" else "text"
    apply_logging(level, log_format)


class CliGroup(click.Group):
    """A click group that turns stylestream errors into one-line messages and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StylestreamError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=CliGroup)
def main() -> None:
    """stylestream: real-time visual-style preference vectors from Kafka events, served from Qdrant."""


@main.command("config")
@setting_options
def show_config(**overrides: Any) -> None:
    """Print the effective settings as JSON, with secrets masked."""
    settings = build_settings(overrides)
    click.echo(json.dumps(settings.redacted(), indent=2, default=str))


@main.command()
@click.option("--port", type=int, default=9092, show_default=True, help="Broker port on 127.0.0.1 (0 picks a free port).")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path("data/kafka"), show_default=True, help="Broker data folder.")
def broker(port: int, work_dir: Path) -> None:
    """Run the embedded Apache Kafka broker in the foreground until interrupted."""
    from stylestream.streams.broker import EmbeddedKafka

    configure_logging()
    stop_on_sigterm()
    kafka = EmbeddedKafka(port=port, work_dir=work_dir)
    try:
        kafka.start()
        click.echo(f"Apache Kafka is running on {kafka.url}; press Ctrl-C to stop.")
        code = kafka.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        kafka.stop()
    if code:
        raise click.ClickException(f"Kafka exited with code {code}; see {work_dir / 'broker.log'}")


@main.command()
@setting_options
def worker(**overrides: Any) -> None:
    """Run the stream worker: agents for images, downloads and searches, and the Qdrant sink."""
    settings = build_settings(overrides)
    configure_logging(settings.log_level)
    from stylestream.streams.worker import run_worker

    sys.exit(run_worker(settings))


@main.command()
@click.argument("topic")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["downloads", "searches", "images"]), help="Event kind when the topic has another name.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@setting_options
def produce(topic: str, files: tuple[Path, ...], kind: str | None, no_progress: bool, **overrides: Any) -> None:
    """Send JSONL or CSV events from FILES into TOPIC, on a kafka:// broker or a running worker's embedded one (same --data-dir)."""
    from stylestream.streams.produce import produce_file
    from stylestream.streams.topics import declare_topics

    settings = build_settings(overrides)
    configure_logging("WARNING")
    if settings.broker == "embedded":
        from stylestream.streams.worker import read_worker_info

        # A worker that started the embedded broker records its URL next to the store.
        info = read_worker_info(settings)
        if info is None:
            raise click.UsageError(
                "produce needs a running broker: pass --broker kafka://HOST:PORT, set STYLESTREAM_BROKER, "
                "or start `stylestream worker` with the same --data-dir first"
            )
        settings = settings.model_copy(update={"broker": info["broker"]})
    declare_topics(settings)
    from stylestream.streams.kafka_security import kafka_python_options
    from stylestream.streams.topics import partition_counts

    options = kafka_python_options(settings)
    configured = {settings.downloads_topic: "downloads", settings.searches_topic: "searches", settings.images_topic: "images"}
    kind = kind or configured.get(topic)
    if kind is None:
        raise click.UsageError(
            f"topic {topic!r} is not one of the configured topics ({', '.join(configured)}); "
            "pass --kind downloads|searches|images so messages get the right key"
        )
    if topic not in partition_counts(settings.bootstrap_servers, [topic], options):
        raise click.UsageError(f"topic {topic!r} does not exist on {settings.broker}; create it with its partition count first")
    total = sum(
        produce_file(settings.bootstrap_servers, topic, path, kind, progress=not no_progress, client_options=options)
        for path in files
    )
    click.echo(f"Produced {total} messages to {topic}")


@main.command()
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@click.option("--images", type=int, default=2000, show_default=True)
@click.option("--users", type=int, default=200, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
def simulate(output: Path, images: int, users: int, seed: int) -> None:
    """Write a simulated marketplace (images, searches, downloads as JSONL, and truth.json) to OUTPUT."""
    from stylestream.models.simulation import SimulationConfig
    from stylestream.models.simulation import simulate as run_simulation

    marketplace = run_simulation(SimulationConfig(images=images, users=users, seed=seed))
    paths = marketplace.write(output)
    click.echo(f"Wrote {len(marketplace.images)} images and {marketplace.event_count} events to {output}")
    for name, path in paths.items():
        click.echo(f"  {name}: {path}")


def _run_query(settings: Any, over_http: Any, in_store: Any) -> dict[str, Any]:
    """Run a query through the worker that owns the embedded store, or else on the store itself.

    `over_http` takes a WorkerClient and `in_store` a StyleStore; each returns the result as a dict.
    """
    from stylestream.streams.client import WorkerClient
    from stylestream.streams.store import StyleStore
    from stylestream.streams.worker import read_worker_address

    if not settings.qdrant_url:
        address = read_worker_address(settings)
        if address is not None:
            return over_http(WorkerClient(address))
    store = StyleStore(settings, create=False)
    try:
        return in_store(store)
    finally:
        store.close()


@main.command()
@click.argument("user_id")
@click.option("-k", "--k", "k", type=int, default=10, show_default=True, help="Number of images.")
@click.option("--categories", default="", help="Comma-separated categories; keep images with any of them.")
@click.option("--keywords", default="", help="Comma-separated keywords; keep images with any of them.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@setting_options
def recommend(user_id: str, k: int, categories: str, keywords: str, as_json: bool, **overrides: Any) -> None:
    """Print the images nearest to USER_ID's style, without images the user downloaded."""
    from stylestream.streams.query import recommend as run_recommend

    settings = build_settings(overrides)
    configure_logging("WARNING")
    category_list = [c for c in categories.split(",") if c]
    keyword_list = [c for c in keywords.split(",") if c]
    result = _run_query(
        settings,
        lambda client: client.recommend(user_id, k, category_list, keyword_list),
        lambda store: run_recommend(store, user_id, k, category_list, keyword_list).to_dict(),
    )
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"Recommendations for {user_id} ({result['source']}):")
    for item in result["items"]:
        click.echo(f"  {item['image_id']}  {item['score']:.4f}  {','.join(item.get('categories', []))}")


@main.command()
@click.argument("user_id")
@click.argument("image_ids", nargs=-1, required=True)
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Weight of style similarity against the original rank.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@setting_options
def rerank(user_id: str, image_ids: tuple[str, ...], alpha: float, as_json: bool, **overrides: Any) -> None:
    """Re-order IMAGE_IDS (search results in rank order) by USER_ID's style."""
    from stylestream.streams.query import rerank as run_rerank

    settings = build_settings(overrides)
    configure_logging("WARNING")
    result = _run_query(
        settings,
        lambda client: client.rerank(user_id, list(image_ids), alpha),
        lambda store: run_rerank(store, user_id, list(image_ids), alpha),
    )
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"Re-ranked for {user_id} ({result['source']}, alpha {alpha}):")
    for item in result["items"]:
        click.echo(f"  {item['image_id']}  score {item['score']:.4f}  was #{item['original_rank'] + 1}  style {item['style_similarity']:.3f}")


@main.command()
@click.option("--from", "start", default="earliest", show_default=True, help="'earliest', or a UTC time (epoch seconds or ISO-8601) to start at.")
@click.option("--to-collection", help="Users collection to build, such as users_v2 (images go to images_v2). Default: users_<model version>.")
@click.option("--swap-alias", is_flag=True, help="Point the images and users aliases at the new collections when done.")
@click.option("--seed", "seed_app_id", help="App id (consumer group) of the worker that continues after the replay; stop its workers first.")
@click.option("--no-reencode", is_flag=True, help="Reuse the images already in the target images collection.")
@setting_options
def replay(start: str, to_collection: str | None, swap_alias: bool, seed_app_id: str | None, no_reencode: bool, **overrides: Any) -> None:
    """Rebuild every user's vector from the downloads and searches topics into versioned collections."""
    from stylestream.schemas.validation import parse_timestamp
    from stylestream.streams.app import load_encoder
    from stylestream.streams.replay import run_replay
    from stylestream.streams.store import StyleStore

    settings = build_settings(overrides)
    configure_logging(settings.log_level)
    if settings.broker == "embedded":
        raise click.UsageError("replay reads a running broker: pass --broker kafka://HOST:PORT or set STYLESTREAM_BROKER")
    start_at: str | float = start
    if start != "earliest":
        try:
            start_at = parse_timestamp(float(start), "--from")
        except ValueError:
            start_at = parse_timestamp(start, "--from")
    version = None
    if to_collection:
        prefix = f"{settings.users_collection}_"
        version = to_collection[len(prefix):] if to_collection.startswith(prefix) else to_collection
    encoder = load_encoder(settings)
    store = StyleStore(settings)
    try:
        result = run_replay(settings, encoder, store, start_at, reencode=not no_reencode, seed_app_id=seed_app_id,
                            swap_alias=swap_alias, collection_version=version)
    finally:
        store.close()
    click.echo(
        f"Replayed {result.events} events ({result.invalid} invalid) into {result.collections['users']}: "
        f"{result.users_with_vectors} users with vectors, {result.events_per_second:,.0f} events/s"
    )
    if seed_app_id:
        hint = f" STYLESTREAM_COLLECTION_VERSION={version}" if version else ""
        click.echo(f"Start the continuing worker with STYLESTREAM_APP_ID={seed_app_id}{hint} and the same model.")


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data/demo"), show_default=True, help="Emptied and reused.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the figures as JSON.")
@click.option("--images", type=int, default=2000, show_default=True)
@click.option("--users", type=int, default=200, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--broker", help="Use this kafka:// broker instead of starting the embedded one.")
def demo(data_dir: Path, json_path: Path | None, images: int, users: int, seed: int, broker: str | None) -> None:
    """Run everything: embedded Kafka, a worker, a simulated marketplace, recommendations and figures."""
    from stylestream.models.simulation import SimulationConfig
    from stylestream.streams.demo import run_demo, write_figures

    configure_logging("WARNING")
    stop_on_sigterm()
    figures = run_demo(data_dir, SimulationConfig(images=images, users=users, seed=seed), broker=broker)
    write_figures(figures, json_path)


from stylestream.streams.cli_images import datasets, images, report  # noqa: E402

main.add_command(images)
main.add_command(datasets)
main.add_command(report)


from stylestream.streams.cli_models import evaluate, train  # noqa: E402

main.add_command(train)
main.add_command(evaluate)

if __name__ == "__main__":
    main()
