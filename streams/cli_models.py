"""The `stylestream train` and `stylestream evaluate` commands, and their reports.

Both read an event log in the documented JSONL schemas (images, searches, downloads) from a folder
or from explicit files, or simulate one in place with `--simulate`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable

import click

log = logging.getLogger("stylestream")

METRICS = [("acc_at_10", "Acc@10"), ("acc_at_100", "Acc@100"), ("coverage", "coverage@10"), ("ecs_at_10", "ECS@10"), ("visual_diversity", "visual diversity")]
# A fixed end time makes simulated logs, their fingerprint and the trained checkpoint reproducible.
SIMULATION_END_TIME = 1_700_000_000.0

EVENT_OPTIONS = [
    click.option("--events", type=click.Path(file_okay=False, path_type=Path), help="Folder with images.jsonl, searches.jsonl and downloads.jsonl."),
    click.option("--images", type=click.Path(dir_okay=False, path_type=Path), help="Images JSONL file; overrides the folder's."),
    click.option("--searches", type=click.Path(dir_okay=False, path_type=Path), help="Searches JSONL file; overrides the folder's."),
    click.option("--downloads", type=click.Path(dir_okay=False, path_type=Path), help="Downloads JSONL file; overrides the folder's."),
    click.option("--simulate", is_flag=True, help="Simulate the log (written to --events when given) instead of reading it."),
    click.option("--sim-seed", type=int, default=7, show_default=True, help="Seed of the simulated marketplace."),
    click.option("--sim-images", type=int, default=2000, show_default=True, help="Images in the simulated catalogue."),
    click.option("--sim-users", type=int, default=200, show_default=True, help="Simulated users."),
    # 30 styles, not SimulationConfig's 12: with 12 styles among 200 users, popularity reaches Acc@10 0.059,
    # about 3 times the 0.02 reported for a real marketplace, and even true style labels reach only 3.4 times it.
    click.option("--sim-styles", type=int, default=30, show_default=True, help="Latent styles in the simulation."),
    click.option("--subject-strength", type=float, default=1.0, show_default=True, help="Weight of the subject in simulated deep features."),
    click.option("--feature-noise", type=float, default=0.6, show_default=True, help="Noise in simulated deep features."),
    click.option("--holdout-fraction", type=float, default=0.1, show_default=True, help="Share of the newest user events held out for evaluation."),
]


def event_options(function: Any) -> Any:
    """Add the event-log and simulation options to a command."""
    for option in reversed(EVENT_OPTIONS):
        function = option(function)
    return function


def load_events(options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Load the event log that `options` name, simulating it first with `--simulate`; return it and its description."""
    from stylestream.models.evaluation import load_event_log
    from stylestream.models.simulation import SimulationConfig, config_dict, simulate

    files = {topic: options[topic] for topic in ("images", "searches", "downloads")}
    if not options["simulate"]:
        if options["events"] is None and None in files.values():
            raise click.UsageError("pass --events DIR, all of --images/--searches/--downloads, or --simulate")
        return load_event_log(options["events"], **files), {"events": str(options["events"]), **{k: str(v) for k, v in files.items() if v}}
    config = SimulationConfig(
        images=options["sim_images"], users=options["sim_users"], styles=options["sim_styles"], seed=options["sim_seed"],
        subject_strength=options["subject_strength"], feature_noise=options["feature_noise"],
    )
    marketplace = simulate(config, end_time=SIMULATION_END_TIME)
    description = {"simulation": config_dict(config), "end_time": SIMULATION_END_TIME}
    if options["events"] is not None:
        marketplace.write(options["events"])
        return load_event_log(options["events"]), description
    with tempfile.TemporaryDirectory() as folder:
        marketplace.write(folder)
        return load_event_log(Path(folder)), description


def load_extra_events(folders: tuple[Path, ...], events: Any) -> tuple[list[Any], list[Any]]:
    """Read the searches and downloads of every `--extra-events` folder, in folder order.

    Raises click.BadParameter when a folder shares a user id with `events`, the log that the command
    splits and evaluates, or with an earlier folder (a folder passed twice would count twice).
    """
    from stylestream.models.evaluation import read_jsonl

    known_users = {event.user_id for event in [*events.searches, *events.downloads]}
    searches: list[Any] = []
    downloads: list[Any] = []
    for folder in folders:
        extra_searches = read_jsonl(folder / "searches.jsonl", "searches")
        extra_downloads = read_jsonl(folder / "downloads.jsonl", "downloads")
        folder_users = {event.user_id for event in [*extra_searches, *extra_downloads]}
        shared = known_users & folder_users
        if shared:
            raise click.BadParameter(
                f"{folder} shares {len(shared)} user id(s) with the log or an earlier --extra-events folder, "
                f"e.g. {sorted(shared)[0]!r}. Pass folders that hold only other users' events.", param_hint="--extra-events",
            )
        known_users |= folder_users
        searches.extend(extra_searches)
        downloads.extend(extra_downloads)
    return searches, downloads


@click.command()
@event_options
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Where to write the trained encoder.")
@click.option("--temperature", type=float, default=0.1, show_default=True, help="InfoNCE temperature.")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Positive pairs per batch; the other pairs are the negatives.")
@click.option("--epochs", type=int, default=5, show_default=True, help="Passes over the downloads.")
@click.option("--learning-rate", type=float, default=1e-3, show_default=True, help="AdamW learning rate.")
@click.option("--lr-schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True,
              help="Learning rate over training: constant, or cosine decay from --learning-rate to 0 by the last step.")
@click.option("--pairing", type=click.Choice(["search_or_category", "category"]), default="search_or_category", show_default=True,
              help="Positives: downloads of one user under another search or category set, or under another category set only.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation and pair sampling.")
@click.option("--style-dim", type=click.IntRange(min=1), default=64, show_default=True, help="Dimension of the style vectors.")
@click.option("--categories-weight", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Weight of the category block in the encoder input; 0 leaves categories out.")
@click.option("--keywords-weight", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Weight of the keyword block in the encoder input; 0 leaves keywords out.")
@click.option("--search-batch-size", type=click.IntRange(min=0), default=0, show_default=True,
              help="Searches per step for the search ranking loss; 0 trains with InfoNCE alone.")
@click.option("--ranking-weight", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Weight of the search ranking loss next to InfoNCE.")
@click.option("--extra-events", type=click.Path(exists=True, file_okay=False, path_type=Path), multiple=True,
              help="Folder with searches.jsonl and downloads.jsonl of other users to train on as well; repeatable. Their user "
                   "ids must differ from the log's. Only events before the held-out part's cutoff are used.")
@click.option("--device", help="Torch device; default CUDA when available, else CPU.")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path), help="Folder for loss.png.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def train(checkpoint: Path, temperature: float, batch_size: int, epochs: int, learning_rate: float, lr_schedule: str,
          pairing: str, seed: int, style_dim: int, categories_weight: float, keywords_weight: float, search_batch_size: int,
          ranking_weight: float, extra_events: tuple[Path, ...], device: str | None, plots: Path | None, no_progress: bool, **options: Any) -> None:
    """Train the style encoder with InfoNCE on the downloads before the held-out part of the log."""
    from stylestream.models.encoder import EncoderConfig
    from stylestream.models.evaluation import temporal_split
    from stylestream.models.training import TrainingConfig, plot_loss_curve, save_checkpoint, train_encoder
    from stylestream.streams.cli import configure_logging

    configure_logging("WARNING" if not no_progress else "INFO")
    events, source = load_events(options)
    searches, downloads = events.searches, events.downloads
    fraction = options["holdout_fraction"]
    cutoff = float("inf")
    if fraction > 0:
        split = temporal_split(events.searches, events.downloads, fraction)
        searches, downloads, cutoff = split.train_searches, split.train_downloads, split.cutoff
    extra_searches, extra_downloads = load_extra_events(extra_events, events)
    searches = searches + [event for event in extra_searches if event.timestamp < cutoff]
    downloads = downloads + [event for event in extra_downloads if event.timestamp < cutoff]
    if extra_events:
        source["extra_events"] = [str(folder) for folder in extra_events]
    config = TrainingConfig(temperature=temperature, batch_size=batch_size, epochs=epochs, learning_rate=learning_rate,
                            lr_schedule=lr_schedule, seed=seed, pairing=pairing, search_batch_size=search_batch_size,
                            ranking_weight=ranking_weight, device=device)
    encoder_config = EncoderConfig(style_dim=style_dim, categories_weight=categories_weight, keywords_weight=keywords_weight)
    result = train_encoder(events.images, downloads, config, progress=not no_progress, encoder_config=encoder_config,
                           searches=searches)
    save_checkpoint(result, checkpoint, extra={"holdout_fraction": fraction, "source": source})
    click.echo(f"Wrote {result.encoder.model_version} to {checkpoint} ({checkpoint.stat().st_size / 1e6:.1f} MB); "
               f"loss {result.epoch_losses[0]:.3f} -> {result.epoch_losses[-1]:.3f}")
    if plots is not None:
        plot_loss_curve(result, plots / "loss.png")
        click.echo(f"Wrote {plots / 'loss.png'}")


def checkpoint_metadata(path: Path) -> dict[str, Any]:
    """Read the `extra` metadata of a checkpoint written by `train`."""
    import torch

    return dict(torch.load(path, map_location="cpu", weights_only=True).get("extra", {}))


@click.command()
@event_options
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), help="Trained encoder; without it the trained row is left out.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the rows as JSON.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), help="Write the table as Markdown.")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path), help="Folder for metrics.png and acc_at_k.png.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random row and the untrained encoder.")
@click.option("--half-life-days", type=float, default=30.0, show_default=True, help="Half-life of event weights in days.")
@click.option("--download-weight", type=float, default=1.0, show_default=True, help="Weight of a download.")
@click.option("--impression-weight", type=float, default=0.05, show_default=True, help="Negative weight of an ignored search result.")
@click.option("--extra-events", type=click.Path(exists=True, file_okay=False, path_type=Path), multiple=True,
              help="Folder with searches.jsonl and downloads.jsonl of other users whose downloads before the cutoff count "
                   "toward popularity; repeatable. Their user ids must differ from the log's, and they are not evaluated.")
def evaluate(checkpoint: Path | None, json_path: Path | None, markdown: Path | None, plots: Path | None, seed: int,
             half_life_days: float, download_weight: float, impression_weight: float, extra_events: tuple[Path, ...],
             **options: Any) -> None:
    """Evaluate encoders against raw deep features, popularity and random on a temporal split.

    With --extra-events, popularity also counts other users' downloads before the cutoff, as the
    stream counts every user's downloads.
    """
    from stylestream.models.encoder import StyleEncoder, untrained_encoder
    from stylestream.models.evaluation import evaluate_log
    from stylestream.models.preference import PreferenceParams
    from stylestream.models.training import feature_schema_of
    from stylestream.streams.cli import configure_logging

    configure_logging("WARNING")
    events, source = load_events(options)
    _, extra_downloads = load_extra_events(extra_events, events)
    if extra_events:
        source["extra_events"] = [str(folder) for folder in extra_events]
    encoders = {}
    if checkpoint is not None:
        encoders["trained encoder"] = StyleEncoder.load(checkpoint)
    encoders["untrained encoder"] = untrained_encoder(feature_schema_of(events.images), seed=seed)
    params = PreferenceParams(download_weight=download_weight, impression_weight=impression_weight, half_life_days=half_life_days)
    report = evaluate_log(events, encoders, options["holdout_fraction"], params, seed, extra_downloads)
    if checkpoint is not None:
        trained_until = checkpoint_metadata(checkpoint).get("trained_until")
        report["checkpoint"] = {"path": str(checkpoint), "model_version": encoders["trained encoder"].model_version, "trained_until": trained_until}
        if trained_until is None or trained_until >= report["cutoff"]:
            log.warning("Checkpoint %s was trained on downloads up to %s, not before the evaluation cutoff %s; "
                        "its figures are optimistic. Train with the same log and --holdout-fraction.", checkpoint, trained_until, report["cutoff"])
    report["source"] = source
    table = markdown_table(report["rows"])
    click.echo(table)
    if extra_events:
        click.echo(f"Popularity counts {report['extra_downloads_counted']} downloads of --extra-events users before the cutoff {report['cutoff']}.")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(table + "\n")
    if plots is not None:
        write_plots(report["rows"], plots)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Format the evaluation rows as a Markdown table."""
    formats: dict[str, Callable[[float], str]] = {"ecs_at_10": lambda v: f"{v:.1f}"}
    lines = ["| row | " + " | ".join(label for _, label in METRICS) + " | users |", "|---" * (len(METRICS) + 2) + "|"]
    for row in rows:
        cells = [formats.get(key, lambda v: f"{v:.3f}")(row[key]) for key, _ in METRICS]
        lines.append(f"| {row['row']} | " + " | ".join(cells) + f" | {row['users']} |")
    return "\n".join(lines)


def write_plots(rows: list[dict[str, Any]], folder: Path) -> None:
    """Draw metrics.png (one bar chart per metric) and acc_at_k.png (Acc@K for K = 1..100) into `folder`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    names = [row["row"] for row in rows]
    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 4))
    for axis, (key, label) in zip(axes, METRICS):
        axis.bar(range(len(rows)), [row[key] for row in rows], color=[f"C{i}" for i in range(len(rows))])
        axis.set_xticks(range(len(rows)), names, rotation=45, ha="right")
        axis.set_title(label)
    figure.tight_layout()
    figure.savefig(folder / "metrics.png", dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(7, 4))
    for row in rows:
        axis.plot(range(1, len(row["acc_curve"]) + 1), row["acc_curve"], label=row["row"])
    axis.set_xlabel("K")
    axis.set_ylabel("Acc@K")
    axis.legend()
    figure.tight_layout()
    figure.savefig(folder / "acc_at_k.png", dpi=100)
    plt.close(figure)
