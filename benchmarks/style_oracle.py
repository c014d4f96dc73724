"""Measure how far a perfect creator-style ranking gets on the Acc@10 of `stylestream evaluate`.

On the creatives that `stylestream datasets openclipart` simulates, a drawing's creator is its
style, and `creatives/truth.json` names each creative's preferred creators. This script rebuilds
the split of `stylestream evaluate` with its functions. The newest 10 % of user events are held
out, and a user is evaluated when they downloaded a drawing after the cutoff that they had not
downloaded before it. Each user's downloads before the cutoff are left out of their ranking, as in
`evaluate` and as the worker leaves out a user's last 200 downloads. The script scores these
rankings per user:

- popularity: drawings by download count before the cutoff, as the popularity row of `evaluate`.
- oracle style, popularity ties: every drawing by a preferred creator first, in popularity order,
  then the other drawings in popularity order.
- oracle style, random ties: the same, but the preferred drawings in a seeded random order. Its
  row also gives the exact mean over all random orders.
- oracle style and last keyword: the oracle with popularity ties, but the preferred drawings that
  carry the query of the user's last search before the cutoff come first. This ranking uses the
  current project, so it is not style-only and only shows what the subject adds.
- the vector rows of `evaluate` (trained encoder with --checkpoint, untrained encoder, deep
  features only), so their Acc@10 can be checked against `evaluate`.

The oracles know each user's creators exactly but not which of their drawings come next, so they
bound a style-only ranking only as far as the order inside the preferred drawings goes.

The script prints JSON. Each row has Acc@10, Acc@100, its Acc@10 over popularity's, and 95 %
intervals of both from a paired bootstrap over the evaluated users. The held-out part is described
by how many downloads are by a preferred creator, how many drawings each user's preferred creators
made, and the 10 most popular drawings.

Run from the repository root after `make model-openclipart` has written data/openclipart:

    OMP_NUM_THREADS=1 python benchmarks/style_oracle.py --data data/openclipart \\
        --checkpoint models/checkpoints/style-encoder-openclipart.pt --json oracle.json

For more evaluated creatives, simulate them into another folder next to a copy of images.jsonl
(`stylestream datasets openclipart --out DIR --events-only --end-time 1700000000 --creatives 600`)
and pass `--data DIR`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from stylestream.models.encoder import StyleEncoder, untrained_encoder
from stylestream.models.evaluation import (
    EventLog,
    TemporalSplit,
    accuracy_at_k,
    build_user_vectors,
    encode_images,
    first_hit_ranks,
    load_event_log,
    normalised_deep_features,
    rank_by_vectors,
    split_targets,
    temporal_split,
)
from stylestream.models.preference import PreferenceParams
from stylestream.models.training import feature_schema_of

DEPTH = 100
POPULARITY = "popularity"


@dataclass
class SplitView:
    """Split of `evaluate`, with images as catalogue positions."""

    split: TemporalSplit
    users: list[str]
    exclude: dict[str, set[int]]
    targets: dict[str, set[int]]
    download_counts: np.ndarray
    popularity: np.ndarray


def build_split_view(log: EventLog, holdout_fraction: float) -> SplitView:
    """Rebuild the split, targets, exclusions and popularity order exactly as `evaluate_log` does."""
    split = temporal_split(log.searches, log.downloads, holdout_fraction)
    index = {image.image_id: position for position, image in enumerate(log.images)}
    downloaded, targets, counts = split_targets(split, index, len(log.images))
    users = sorted(targets)
    popularity = np.lexsort((np.arange(len(counts)), -counts))
    exclude = {user_id: downloaded.get(user_id, set()) for user_id in users}
    return SplitView(split, users, exclude, targets, counts, popularity)


def top_items(order: np.ndarray, excluded: set[int]) -> list[int]:
    """Return the first DEPTH items of `order` that are not in `excluded`."""
    ranked: list[int] = []
    for item in order.tolist():
        if item not in excluded:
            ranked.append(item)
            if len(ranked) == DEPTH:
                break
    return ranked


def last_search_keywords(split: TemporalSplit) -> dict[str, str]:
    """Return the query of each user's last search before the cutoff."""
    last: dict[str, tuple[float, str, str]] = {}
    for search in split.train_searches:
        key = (search.timestamp, search.event_id, search.query)
        if search.user_id not in last or key > last[search.user_id]:
            last[search.user_id] = key
    return {user_id: key[2] for user_id, key in last.items()}


def oracle_rankings(
    log: EventLog, view: SplitView, user_creators: Mapping[str, list[str]], image_creator: Mapping[str, str | None], seed: int
) -> dict[str, dict[str, list[int]]]:
    """Build the three oracle rankings of each evaluated user, keyed by row name and then by user id."""
    creators = [image_creator.get(image.image_id) for image in log.images]
    keywords = [set(image.keywords) for image in log.images]
    last_keyword = last_search_keywords(view.split)
    rng = np.random.default_rng(seed)
    rows: dict[str, dict[str, list[int]]] = {
        "oracle style, popularity ties": {},
        "oracle style, random ties": {},
        "oracle style and last keyword (not style-only)": {},
    }
    for user_id in view.users:
        preferred_creators = set(user_creators[user_id])
        preferred = np.array([creator in preferred_creators for creator in creators])
        in_popularity_order = preferred[view.popularity]
        preferred_first = view.popularity[np.argsort(~in_popularity_order, kind="stable")]
        rows["oracle style, popularity ties"][user_id] = top_items(preferred_first, view.exclude[user_id])

        shuffled = rng.permutation(np.flatnonzero(preferred))
        random_ties = np.concatenate([shuffled, view.popularity[~in_popularity_order]])
        rows["oracle style, random ties"][user_id] = top_items(random_ties, view.exclude[user_id])

        keyword = last_keyword.get(user_id)
        on_keyword = np.array([keyword in image_keywords for image_keywords in keywords]) & preferred
        group = np.where(on_keyword, 0, np.where(preferred, 1, 2))[view.popularity]
        keyword_first = view.popularity[np.argsort(group, kind="stable")]
        rows["oracle style and last keyword (not style-only)"][user_id] = top_items(keyword_first, view.exclude[user_id])
    return rows


def expected_random_ties_acc_at_10(
    log: EventLog, view: SplitView, user_creators: Mapping[str, list[str]], image_creator: Mapping[str, str | None]
) -> float:
    """Compute the exact mean Acc@10 of the random-ties oracle over every order of the preferred drawings.

    When a user's preferred creators made P >= 10 drawings the user can be shown, t of them held-out
    downloads, the top 10 misses them all with the hypergeometric probability C(P - t, 10) / C(P, 10).
    A user with P < 10 gets all P, then the most popular other drawings.
    """
    creators = [image_creator.get(image.image_id) for image in log.images]
    hit_chances = []
    for user_id in view.users:
        preferred_creators = set(user_creators[user_id])
        pool = {item for item, creator in enumerate(creators) if creator in preferred_creators} - view.exclude[user_id]
        found = len(pool & view.targets[user_id])
        if len(pool) >= 10:
            miss = np.prod([(len(pool) - found - i) / (len(pool) - i) for i in range(10)])
            hit_chances.append(1.0 - float(miss))
            continue
        others = top_items(view.popularity, view.exclude[user_id] | pool)[: 10 - len(pool)]
        hit_chances.append(1.0 if found or view.targets[user_id] & set(others) else 0.0)
    return float(np.mean(hit_chances))


def encoder_rankings(log: EventLog, view: SplitView, checkpoint: Path | None, seed: int) -> dict[str, dict[str, list[int]]]:
    """Rank with the vector rows of `evaluate`: trained encoder (when given), untrained encoder, deep features."""
    vector_rows: dict[str, np.ndarray] = {}
    if checkpoint is not None:
        vector_rows["trained encoder"] = encode_images(StyleEncoder.load(checkpoint), log.images)
    vector_rows["untrained encoder"] = encode_images(untrained_encoder(feature_schema_of(log.images), seed=seed), log.images)
    vector_rows["deep features only"] = normalised_deep_features(log.images)

    rows = {}
    fallback = view.popularity.tolist()
    for name, vectors in vector_rows.items():
        by_id = {image.image_id: vectors[position] for position, image in enumerate(log.images)}
        user_vectors = build_user_vectors(view.split, by_id, PreferenceParams())
        rows[name] = rank_by_vectors(vectors, user_vectors, view.users, view.exclude, fallback, DEPTH)
    return rows


def bootstrap_interval(values: np.ndarray) -> list[float]:
    """Return the 2.5 % and 97.5 % quantiles of bootstrap values, where infinite values sort last."""
    return [float(v) for v in np.quantile(values, [0.025, 0.975], method="inverted_cdf")]


def score_rows(
    rankings: Mapping[str, Mapping[str, list[int]]], view: SplitView, resamples: int, seed: int
) -> tuple[list[dict[str, Any]], float]:
    """Score every row and bootstrap its Acc@10 and its ratio to popularity over the same resampled users.

    Returns the rows and the share of resamples in which popularity hit no user, where every ratio is infinite.
    """
    ranks = {name: first_hit_ranks(ranked, view.targets) for name, ranked in rankings.items()}
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(view.users), size=(resamples, len(view.users)))
    popularity_means = (ranks[POPULARITY] <= 10)[samples].mean(axis=1)
    popularity_acc = accuracy_at_k(ranks[POPULARITY], 10)

    rows = []
    for name, row_ranks in ranks.items():
        hits = row_ranks <= 10
        means = hits[samples].mean(axis=1)
        ratios = np.full(resamples, np.inf)
        np.divide(means, popularity_means, out=ratios, where=popularity_means > 0)
        acc = accuracy_at_k(row_ranks, 10)
        rows.append({
            "row": name,
            "users_hit_at_10": int(hits.sum()),
            "acc_at_10": round(acc, 4),
            "acc_at_100": round(accuracy_at_k(row_ranks, 100), 4),
            "acc_at_10_interval": [round(v, 4) for v in bootstrap_interval(means)],
            "ratio_to_popularity": round(acc / popularity_acc, 3) if popularity_acc else None,
            "ratio_interval": [round(v, 3) for v in bootstrap_interval(ratios)],
        })
    return rows, float(np.mean(popularity_means == 0))


def describe_targets(
    log: EventLog, view: SplitView, user_creators: Mapping[str, list[str]], image_creator: Mapping[str, str | None]
) -> dict[str, Any]:
    """Count held-out downloads by a preferred creator and the drawings each evaluated user's creators made.

    Also lists the 10 most downloaded drawings of the training part, with how many evaluated users prefer their creator.
    """
    ids = [image.image_id for image in log.images]
    all_held_out = [event for event in view.split.test_downloads if event.user_id in user_creators]
    preferred_events = sum(image_creator.get(event.image_id) in user_creators[event.user_id] for event in all_held_out)
    target_pairs = [(user_id, item) for user_id in view.users for item in view.targets[user_id]]
    preferred_targets = sum(image_creator.get(ids[item]) in user_creators[user_id] for user_id, item in target_pairs)
    users_with_preferred_target = sum(
        any(image_creator.get(ids[item]) in user_creators[user_id] for item in view.targets[user_id]) for user_id in view.users
    )

    drawings_per_creator: dict[str | None, int] = {}
    for image_id in ids:
        creator = image_creator.get(image_id)
        drawings_per_creator[creator] = drawings_per_creator.get(creator, 0) + 1
    preferred_drawings = np.array([sum(drawings_per_creator.get(creator, 0) for creator in user_creators[user_id]) for user_id in view.users])
    downloaded_preferred = np.array([
        sum(image_creator.get(ids[item]) in user_creators[user_id] for item in view.exclude[user_id]) for user_id in view.users
    ])
    targets_per_user = np.array([len(view.targets[user_id]) for user_id in view.users])
    popular = [
        {
            "image_id": ids[item],
            "creator": image_creator.get(ids[item]),
            "training_downloads": int(view.download_counts[item]),
            "evaluated_users_preferring_creator": sum(image_creator.get(ids[item]) in user_creators[user_id] for user_id in view.users),
        }
        for item in view.popularity[:10].tolist()
    ]
    return {
        "held_out_download_events": len(all_held_out),
        "held_out_download_events_by_preferred_creator": preferred_events,
        "targets": len(target_pairs),
        "targets_by_preferred_creator": preferred_targets,
        "users_with_a_target_by_preferred_creator": users_with_preferred_target,
        "targets_per_user": quantiles(targets_per_user),
        "preferred_drawings_per_user": quantiles(preferred_drawings),
        "preferred_drawings_not_downloaded_per_user": quantiles(preferred_drawings - downloaded_preferred),
        "popularity_top_10": popular,
    }


def quantiles(values: np.ndarray) -> dict[str, float]:
    """Return the minimum, quartiles, maximum and mean of `values`."""
    low, q1, median, q3, high = np.quantile(values, [0, 0.25, 0.5, 0.75, 1])
    return {"min": float(low), "q1": float(q1), "median": float(median), "q3": float(q3), "max": float(high), "mean": round(float(values.mean()), 2)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/openclipart"),
                        help="Output folder of `stylestream datasets openclipart`; images.jsonl is read from it (default: %(default)s).")
    parser.add_argument("--events", type=Path,
                        help="Folder with the creatives' searches.jsonl, downloads.jsonl and truth.json (default: DATA/creatives).")
    parser.add_argument("--checkpoint", type=Path, help="Trained encoder checkpoint, to score the trained row too.")
    parser.add_argument("--holdout-fraction", type=float, default=0.1,
                        help="Share of the newest user events held out, as in `stylestream evaluate` (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=0,
                        help="Seed of the untrained encoder (as `evaluate --seed`), the random ties and the bootstrap (default: %(default)s).")
    parser.add_argument("--resamples", type=int, default=10000, help="Bootstrap resamples of the evaluated users (default: %(default)s).")
    parser.add_argument("--json", dest="json_path", type=Path, help="Also write the figures to this JSON file.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    events = args.events if args.events is not None else args.data / "creatives"
    log = load_event_log(images=args.data / "images.jsonl", searches=events / "searches.jsonl", downloads=events / "downloads.jsonl")
    truth = json.loads((events / "truth.json").read_text())
    user_creators: dict[str, list[str]] = truth["user_creators"]
    image_creator: dict[str, str | None] = truth["image_creator"]

    view = build_split_view(log, args.holdout_fraction)
    rankings: dict[str, dict[str, list[int]]] = encoder_rankings(log, view, args.checkpoint, args.seed)
    rankings[POPULARITY] = {user_id: top_items(view.popularity, view.exclude[user_id]) for user_id in view.users}
    rankings.update(oracle_rankings(log, view, user_creators, image_creator, args.seed))
    rows, popularity_zero_share = score_rows(rankings, view, args.resamples, args.seed)
    random_ties = next(row for row in rows if row["row"] == "oracle style, random ties")
    random_ties["expected_acc_at_10_over_tie_orders"] = round(expected_random_ties_acc_at_10(log, view, user_creators, image_creator), 4)

    report = {
        "events": str(events),
        "cutoff": view.split.cutoff,
        "creatives": len(user_creators),
        "users": len(view.users),
        "resamples": args.resamples,
        "resamples_where_popularity_hit_no_user": popularity_zero_share,
        "rows": rows,
        "held_out": describe_targets(log, view, user_creators, image_creator),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_path is not None:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
