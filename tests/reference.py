"""An independent batch computation of served user vectors, written from the documented semantics."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping

import numpy as np


def reference_vectors(
    downloads: Iterable[Mapping[str, Any]],
    searches: Iterable[Mapping[str, Any]],
    image_vectors: Mapping[str, np.ndarray],
    half_life_days: float = 30.0,
    download_weight: float = 1.0,
    impression_weight: float = 0.05,
) -> dict[str, np.ndarray]:
    """Return each user's normalised decayed sum: downloads positive, ignored results of searches that led to a download negative."""
    half_life = half_life_days * 86400.0
    downloads = list(downloads)
    searches = list(searches)
    newest: dict[str, float] = defaultdict(lambda: -np.inf)
    for event in downloads + searches:
        newest[event["user_id"]] = max(newest[event["user_id"]], float(event["timestamp"]))

    sums: dict[str, np.ndarray] = {}
    downloaded_from: dict[tuple[str, str], set[str]] = defaultdict(set)
    for event in downloads:
        user = event["user_id"]
        weight = download_weight * 2.0 ** (-(newest[user] - event["timestamp"]) / half_life)
        sums[user] = sums.get(user, 0.0) + weight * image_vectors[event["image_id"]]
        if event.get("search_id"):
            downloaded_from[(user, event["search_id"])].add(event["image_id"])

    for event in searches:
        user = event["user_id"]
        downloaded = downloaded_from.get((user, event["search_id"]))
        if not downloaded:
            continue
        weight = -impression_weight * 2.0 ** (-(newest[user] - event["timestamp"]) / half_life)
        for image_id in event["results"]:
            if image_id not in downloaded and image_id in image_vectors:
                sums[user] = sums[user] + weight * image_vectors[image_id]

    return {user: total / np.linalg.norm(total) for user, total in sums.items()}
