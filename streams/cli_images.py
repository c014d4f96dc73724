"""Commands for real pictures: `images featurize`, `datasets openclipart` and `report`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from stylestream.streams.cli import build_settings, configure_logging, setting_options


@click.group()
def images() -> None:
    """Turn image files into `images` events."""


@images.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--catalogue", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Catalogue JSONL with a `path` and metadata per image, featurized after PATHS.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Append events to this JSONL file, skipping image ids already in it.")
@click.option("--topic", help="Send events to this Kafka topic instead (needs --broker kafka://HOST:PORT).")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per forward pass of the CNN.")
@click.option("--threads", type=int, help="torch CPU threads; default: torch's choice.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@setting_options
def featurize(
    paths: tuple[Path, ...], catalogue: Path | None, output: Path | None, topic: str | None, batch_size: int,
    threads: int | None, no_progress: bool, **overrides: Any,
) -> None:
    """Read PNG, JPEG and SVG files (or folders of them) and write an `images` event per picture.

    Metadata comes from a `<file>.json` sidecar next to each file or from --catalogue. Unreadable
    files are logged with the reason and skipped.
    """
    from itertools import chain

    from stylestream.models.featurize import EfficientNetLite0, iter_catalogue, iter_items
    from stylestream.streams.featurize_output import featurize_to_jsonl, featurize_to_topic

    configure_logging("WARNING")
    if (output is None) == (topic is None):
        raise click.UsageError("pass exactly one of --output FILE.jsonl or --topic NAME")
    if not paths and catalogue is None:
        raise click.UsageError("pass image files or folders, or --catalogue FILE.jsonl")
    if batch_size < 1:
        raise click.UsageError(f"--batch-size must be at least 1, got {batch_size}")
    file_items = list(iter_items(paths))
    catalogue_items = list(iter_catalogue(catalogue)) if catalogue is not None else []
    total = len(file_items) + len(catalogue_items)
    items = chain(file_items, catalogue_items)
    backbone = EfficientNetLite0(threads=threads)
    if output is not None:
        report = featurize_to_jsonl(items, total, backbone, output, batch_size, progress=not no_progress)
        where = str(output)
    else:
        settings = build_settings(overrides)
        if settings.broker == "embedded":
            raise click.UsageError("--topic needs a running broker: pass --broker kafka://HOST:PORT or set STYLESTREAM_BROKER")
        report = featurize_to_topic(items, total, backbone, settings.bootstrap_servers, topic, batch_size, progress=not no_progress)
        where = f"topic {topic}"
    click.echo(
        f"Featurized {report.written} images to {where} in {report.seconds:.1f} s "
        f"({report.images_per_second:.1f} images/s); {report.already_done} already done, {len(report.skipped)} skipped"
    )
    for path, reason in report.skipped.items():
        click.echo(f"  skipped {path}: {reason}", err=True)


@click.group()
def datasets() -> None:
    """Build public image catalogues and run stylestream on them."""


@datasets.command()
@click.option("--source", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder where openclipart-svg (and optionally openclipart-png) is unpacked; default: fetch with apt-get.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=Path(".cache/openclipart"), show_default=True,
              help="Folder for the downloaded .deb files and their unpacked contents.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("data/openclipart"), show_default=True,
              help="Folder for catalogue.jsonl, images.jsonl (resumable), the simulated events and the worker's data.")
@click.option("--catalogue-only", is_flag=True, help="Stop after writing catalogue.jsonl.")
@click.option("--events-only", is_flag=True, help="Stop after featurizing the drawings and writing the creatives' events to OUT/creatives.")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), envvar="STYLESTREAM_MODEL_PATH",
              help="Style encoder checkpoint for the worker, trained on 1280-d EfficientNet-Lite0 features "
                   "(make model-openclipart). Env: STYLESTREAM_MODEL_PATH. Default: the untrained encoder.")
@click.option("--end-time", type=float, help="Epoch seconds of the creatives' last events; default: an hour ago. Fix it for reproducible events.")
@click.option("--creatives", type=int, default=150, show_default=True, help="Number of simulated creatives.")
@click.option("--seed", type=int, default=11, show_default=True, help="Seed of the creative simulation.")
@click.option("--training-creatives", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also simulate this many creatives with --training-seed into OUT/training-creatives, only to train on.")
@click.option("--training-seed", type=int, default=23, show_default=True, help="Seed of the training creatives; keep it apart from --seed.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per forward pass of the CNN.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the figures as JSON.")
def openclipart(
    source: Path | None, cache: Path, out_dir: Path, catalogue_only: bool, events_only: bool, model_path: Path | None,
    end_time: float | None, creatives: int, seed: int, training_creatives: int, training_seed: int, batch_size: int,
    json_path: Path | None,
) -> None:
    """Build the openclipart catalogue, featurize it, simulate creatives, stream them and evaluate."""
    from stylestream.models.datasets.openclipart import fetch_packages, write_catalogue

    configure_logging("WARNING")
    source = source if source is not None else fetch_packages(cache)
    entries = write_catalogue(source, out_dir / "catalogue.jsonl")
    creators = {entry.creator for entry in entries if entry.creator}
    categories = {entry.categories[0] for entry in entries}
    click.echo(f"Catalogue: {len(entries)} drawings by {len(creators)} creators in {len(categories)} categories -> {out_dir / 'catalogue.jsonl'}")
    if catalogue_only:
        return
    from stylestream.models.datasets.creatives import CreativeConfig
    from stylestream.streams.openclipart_run import ensure_features, run_openclipart, simulate_events, write_figures

    config = CreativeConfig(creatives=creatives, seed=seed)
    if training_creatives:
        if training_seed == seed:
            raise click.BadParameter("must differ from --seed, so no evaluated creative is trained on", param_hint="--training-seed")
        training_config = CreativeConfig(creatives=training_creatives, seed=training_seed, user_prefix="trainer")
        simulate_events(out_dir, training_config, end_time, folder="training-creatives")
    if events_only:
        ensure_features(out_dir, batch_size)
        simulate_events(out_dir, config, end_time)
        return
    figures = run_openclipart(out_dir, config, batch_size=batch_size, model_path=model_path, end_time=end_time)
    write_figures(figures, json_path)


@click.command()
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("data/openclipart"),
              show_default=True, help="Output folder of `stylestream datasets openclipart`.")
@click.option("--users", default="", help="Comma-separated user ids; default: the first --count creatives.")
@click.option("--count", type=int, default=3, show_default=True, help="Number of creatives when --users is not given.")
@click.option("--query", default="", help="Keyword to search before and after re-ranking; default: each user's first held-out project.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("data/openclipart/report.html"),
              show_default=True, help="HTML file to write.")
def report(data_dir: Path, users: str, count: int, query: str, output: Path) -> None:
    """Write a self-contained HTML report of chosen creatives: downloads, recommendations, re-ranking."""
    from stylestream.streams.report import build_report

    configure_logging("WARNING")
    user_ids = [user for user in users.split(",") if user]
    path = build_report(data_dir, output, user_ids, count, query or None)
    click.echo(f"Wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
