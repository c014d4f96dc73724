"""Offline evaluation of style vectors on an event log, with a temporal split.

The protocol follows "Learning Users' Preferred Visual Styles in an Image Marketplace" (Gomez
Bruballa et al., ACM RecSys 2022): the newest events are held out, each user's vector is built from
the older ones with the same update functions as the stream (`stylestream.models.preference`), and
every row recommends images nearest to that vector. Rows are compared on Acc@10, Acc@100, catalogue
coverage, effective catalogue size (ECS@10) and visual diversity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from stylestream.models.encoder import StyleEncoder
from stylestream.models.preference import PreferenceParams, UserState, apply_download, apply_search, user_vector
from stylestream.schemas.errors import StylestreamError
from stylestream.schemas.events import Download, Image, Search
from stylestream.schemas.validation import InvalidEvent, parse_download, parse_image, parse_search

TOPICS = ("images", "searches", "downloads")
ENCODE_CHUNK = 4096


class EvaluationError(StylestreamError):
    """An event log or evaluation request that cannot be evaluated."""


@dataclass
class EventLog:
    """Validated events of one marketplace: images, searches and downloads."""

    images: list[Image]
    searches: list[Search]
    downloads: list[Download]


@dataclass
class TemporalSplit:
    """User events before `cutoff` (training part) and at or after it (held-out part)."""

    cutoff: float
    train_searches: list[Search]
    train_downloads: list[Download]
    test_downloads: list[Download]


def read_jsonl(path: Path, topic: str) -> list[Any]:
    """Read and validate one JSONL file of `topic` events; raise EvaluationError naming the line."""
    parser = {"images": parse_image, "searches": parse_search, "downloads": parse_download}[topic]
    if not path.is_file():
        raise EvaluationError(f"{topic} file {path} was not found; pass an existing JSONL file")
    records = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(parser(line))
            except InvalidEvent as exc:
                raise EvaluationError(f"{path}:{number}: invalid {topic} event ({exc.reason}): {exc}") from None
    return records


def load_event_log(folder: Path | None = None, **paths: Path | None) -> EventLog:
    """Load images.jsonl, searches.jsonl and downloads.jsonl from `folder`, or from explicit paths.

    A path given in `paths` (keyword `images`, `searches` or `downloads`) overrides the folder's file.
    """
    resolved = {}
    for topic in TOPICS:
        path = paths.get(topic) or (folder / f"{topic}.jsonl" if folder is not None else None)
        if path is None:
            raise EvaluationError(f"no {topic} file given; pass an event folder or the {topic} JSONL path")
        resolved[topic] = Path(path)
    log = EventLog(*(read_jsonl(resolved[topic], topic) for topic in TOPICS))
    if not log.images or not log.downloads:
        raise EvaluationError(f"event log has {len(log.images)} images and {len(log.downloads)} downloads; both must be non-empty")
    return log


def temporal_split(searches: list[Search], downloads: list[Download], holdout_fraction: float = 0.1) -> TemporalSplit:
    """Hold out the newest `holdout_fraction` of searches and downloads together, by event time.

    The cutoff is the timestamp of the first held-out event in (timestamp, event_id) order; every
    event at or after it is held out, so ties at the cutoff can make the held-out part slightly
    larger than the fraction. Only downloads are needed from the held-out part.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise EvaluationError(f"holdout fraction must be between 0 and 1 (exclusive), got {holdout_fraction!r}")
    events = sorted([*searches, *downloads], key=lambda event: (event.timestamp, event.event_id))
    held_out = max(1, int(round(holdout_fraction * len(events))))
    if held_out >= len(events):
        raise EvaluationError(f"{len(events)} user events are too few to hold out {holdout_fraction:.0%} of them")
    cutoff = events[len(events) - held_out].timestamp
    return TemporalSplit(
        cutoff=cutoff,
        train_searches=[event for event in searches if event.timestamp < cutoff],
        train_downloads=[event for event in downloads if event.timestamp < cutoff],
        test_downloads=[event for event in downloads if event.timestamp >= cutoff],
    )


def encode_images(encoder: StyleEncoder, images: list[Image]) -> np.ndarray:
    """Encode images with `encoder` into an (n, style_dim) array, in chunks to bound memory."""
    if len(images[0].deep) != encoder.schema.deep_dim or len(images[0].colors) != encoder.schema.colors_dim:
        raise EvaluationError(
            f"images have {len(images[0].deep)} deep and {len(images[0].colors)} colour values, but encoder "
            f"{encoder.model_version} expects {encoder.schema.deep_dim} and {encoder.schema.colors_dim}; "
            "use an encoder trained on features of this log"
        )
    chunks = []
    for start in range(0, len(images), ENCODE_CHUNK):
        part = images[start:start + ENCODE_CHUNK]
        chunks.append(encoder.encode([i.deep for i in part], [i.colors for i in part], [i.categories for i in part], [i.keywords for i in part]))
    return np.concatenate(chunks)


def normalised_deep_features(images: list[Image]) -> np.ndarray:
    """Return the images' deep features scaled to unit L2 norm, one row per image."""
    deep = np.asarray([image.deep for image in images], dtype=np.float64)
    return deep / np.maximum(np.linalg.norm(deep, axis=1, keepdims=True), 1e-12)


def build_user_vectors(
    split: TemporalSplit, image_vectors: Mapping[str, np.ndarray], params: PreferenceParams
) -> dict[str, np.ndarray]:
    """Replay the training part through the stream's update functions and return each user's vector.

    Users without a download in the training part have no vector and are left out.
    """
    events = sorted([*split.train_searches, *split.train_downloads], key=lambda event: (event.timestamp, event.event_id))
    dim = len(next(iter(image_vectors.values())))
    states: dict[str, UserState] = {}
    for event in events:
        state = states.setdefault(event.user_id, UserState.empty(event.user_id, dim))
        if isinstance(event, Search):
            apply_search(state, event.search_id, event.timestamp, event.results, image_vectors, params)
        elif event.image_id in image_vectors:
            apply_download(state, event.image_id, event.timestamp, image_vectors[event.image_id], event.search_id, params, image_vectors)
    vectors = {user_id: user_vector(state) for user_id, state in states.items()}
    return {user_id: vector for user_id, vector in vectors.items() if vector is not None}


def first_hit_ranks(rankings: Mapping[str, list[int]], targets: Mapping[str, set[int]]) -> np.ndarray:
    """Return, per user, the 1-based rank of the first target in the ranking, or inf for none."""
    ranks = []
    for user_id, expected in targets.items():
        ranked = rankings[user_id]
        ranks.append(next((rank for rank, item in enumerate(ranked, start=1) if item in expected), math.inf))
    return np.asarray(ranks, dtype=np.float64)


def accuracy_at_k(hit_ranks: np.ndarray, k: int) -> float:
    """Compute Acc@k: the share of users with a held-out download in their top k."""
    return float(np.mean(hit_ranks <= k)) if len(hit_ranks) else 0.0


def catalogue_coverage(top_lists: list[list[int]], catalogue_size: int) -> float:
    """Compute coverage: distinct items in any top list, divided by the catalogue size."""
    return len({item for top in top_lists for item in top}) / catalogue_size


def effective_catalogue_size(top_lists: list[list[int]]) -> float:
    """Compute ECS = 2 * sum_i p_i * i - 1 over items sorted by their share p_i of all recommendations.

    This is the Netflix definition (Gomez-Uribe and Hunt, 2015): 1 when every list holds one item,
    and n when n items are recommended equally often.
    """
    counts = np.bincount([item for top in top_lists for item in top]).astype(np.float64)
    if counts.sum() == 0:
        return 0.0
    shares = np.sort(counts[counts > 0])[::-1] / counts.sum()
    return float(2.0 * np.sum(shares * np.arange(1, len(shares) + 1)) - 1.0)


def visual_diversity(top_lists: list[list[int]], deep: np.ndarray) -> float:
    """Compute the mean pairwise L2 distance of `deep` rows within each top list, averaged over lists.

    Lists with fewer than two items are skipped.
    """
    per_list = []
    for top in top_lists:
        if len(top) < 2:
            continue
        rows = deep[top]
        distances = np.linalg.norm(rows[:, None, :] - rows[None, :, :], axis=2)
        per_list.append(distances[np.triu_indices(len(top), k=1)].mean())
    return float(np.mean(per_list)) if per_list else 0.0


def rank_by_vectors(
    image_vectors: np.ndarray, user_vectors: Mapping[str, np.ndarray], users: list[str], exclude: Mapping[str, set[int]], fallback: list[int], depth: int
) -> dict[str, list[int]]:
    """Rank images by dot product with each user's vector; users without a vector get `fallback`."""
    rankings = {}
    for user_id in users:
        vector = user_vectors.get(user_id)
        if vector is None:
            ranked: list[int] = list(fallback)
        else:
            scores = image_vectors @ vector
            ranked = np.lexsort((np.arange(len(scores)), -scores)).tolist()
        rankings[user_id] = [item for item in ranked if item not in exclude[user_id]][:depth]
    return rankings


def score_row(row: str, rankings: Mapping[str, list[int]], targets: Mapping[str, set[int]], deep: np.ndarray) -> dict[str, Any]:
    """Compute every metric of one row from its rankings (catalogue coverage and ECS at K=10)."""
    ranks = first_hit_ranks(rankings, targets)
    top_10 = [rankings[user_id][:10] for user_id in targets]
    return {
        "row": row,
        "acc_at_10": accuracy_at_k(ranks, 10),
        "acc_at_100": accuracy_at_k(ranks, 100),
        "coverage": catalogue_coverage(top_10, len(deep)),
        "ecs_at_10": effective_catalogue_size(top_10),
        "visual_diversity": visual_diversity(top_10, deep),
        "users": len(targets),
        "acc_curve": [accuracy_at_k(ranks, k) for k in range(1, 101)],
    }


def split_targets(
    split: TemporalSplit, index: Mapping[str, int], catalogue_size: int
) -> tuple[dict[str, set[int]], dict[str, set[int]], np.ndarray]:
    """Return per user the catalogue positions downloaded before the cutoff, the held-out targets, and download counts.

    A target is an image a user downloaded after the cutoff and not before. Counts are downloads
    before the cutoff per catalogue position. Images missing from `index` are left out.
    """
    downloaded: dict[str, set[int]] = {}
    counts = np.zeros(catalogue_size)
    for event in split.train_downloads:
        position = index.get(event.image_id)
        if position is not None:
            downloaded.setdefault(event.user_id, set()).add(position)
            counts[position] += 1
    targets: dict[str, set[int]] = {}
    for event in split.test_downloads:
        position = index.get(event.image_id)
        if position is not None and position not in downloaded.get(event.user_id, set()):
            targets.setdefault(event.user_id, set()).add(position)
    return downloaded, targets, counts


def evaluate_log(
    log: EventLog,
    encoders: Mapping[str, StyleEncoder],
    holdout_fraction: float = 0.1,
    params: PreferenceParams = PreferenceParams(),
    seed: int = 0,
    extra_downloads: Sequence[Download] = (),
) -> dict[str, Any]:
    """Evaluate each encoder in `encoders`, raw deep features, popularity and random on `log`.

    A user is evaluated when they have a held-out download of an image they did not download in the
    training part; such images are excluded from their recommendations. Users without a vector get
    the popularity ranking, as the stream serves them. Popularity counts the downloads before the
    cutoff of the log and of `extra_downloads`, because the stream counts every user's downloads.
    Extra users are neither evaluated nor given vectors, and EvaluationError is raised when one of
    them has events in `log`. Returns the split figures and one dict per row.
    """
    split = temporal_split(log.searches, log.downloads, holdout_fraction)
    log_users = {event.user_id for event in [*log.searches, *log.downloads]}
    shared = log_users & {event.user_id for event in extra_downloads}
    if shared:
        raise EvaluationError(f"extra downloads include {len(shared)} users of the evaluated log, e.g. {sorted(shared)[0]!r}. "
                              "Pass downloads of other users only.")
    # NOTE: the catalogue is every image in the log, including images published after the cutoff.
    index = {image.image_id: position for position, image in enumerate(log.images)}
    downloaded, targets, counts = split_targets(split, index, len(log.images))
    if not targets:
        raise EvaluationError(f"no held-out download after cutoff {split.cutoff} names a known image; raise the holdout fraction")
    users = sorted(targets)
    exclude = {user_id: downloaded.get(user_id, set()) for user_id in users}
    deep = normalised_deep_features(log.images)
    depth = 100

    extra_counted = 0
    for event in extra_downloads:
        if event.timestamp < split.cutoff and event.image_id in index:
            counts[index[event.image_id]] += 1
            extra_counted += 1
    popularity = np.lexsort((np.arange(len(counts)), -counts)).tolist()

    vector_rows: dict[str, Callable[[], np.ndarray]] = {name: (lambda e=encoder: encode_images(e, log.images)) for name, encoder in encoders.items()}
    vector_rows["deep features only"] = lambda: deep
    rows = []
    for name, make_vectors in vector_rows.items():
        vectors = make_vectors()
        by_id = {image.image_id: vectors[position] for position, image in enumerate(log.images)}
        user_vectors = build_user_vectors(split, by_id, params)
        rankings = rank_by_vectors(vectors, user_vectors, users, exclude, popularity, depth)
        rows.append(score_row(name, rankings, targets, deep))

    fallback_depth = depth + max(len(items) for items in exclude.values())
    popular = {user_id: [item for item in popularity[:fallback_depth] if item not in exclude[user_id]][:depth] for user_id in users}
    rows.append(score_row("popularity", popular, targets, deep))
    rng = np.random.default_rng(seed)
    random_rankings = {}
    for user_id in users:
        order = rng.permutation(len(log.images))
        random_rankings[user_id] = [int(item) for item in order[:fallback_depth] if item not in exclude[user_id]][:depth]
    rows.append(score_row("random", random_rankings, targets, deep))

    return {
        "cutoff": split.cutoff,
        "holdout_fraction": holdout_fraction,
        "images": len(log.images),
        "train_events": len(split.train_searches) + len(split.train_downloads),
        "test_downloads": len(split.test_downloads),
        "extra_downloads_counted": extra_counted,
        "rows": rows,
    }
