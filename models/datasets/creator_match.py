"""Creator-style match: the share of recommended drawings made by a creative's preferred creators."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np


def creator_match_at_k(
    held_out_results: dict[str, dict[str, list[str]]],
    top_results: dict[str, list[str]],
    truth: dict[str, Any],
    k: int = 10,
    excluded: dict[str, set[str]] | None = None,
) -> dict[str, float]:
    """Compute the match figures of held-out projects and of unfiltered recommendations.

    `held_out_results[user][keyword]` is the user's top-k among drawings with the keyword, and
    `top_results[user]` the unfiltered top-k. `truth` is CreativeMarket.truth(). `excluded[user]`
    contains the drawings the recommender may not return to the user (their downloads), so chance and
    best are computed over the drawings it can rank. The figures are means over (user, keyword)
    pairs or users:

    - style_match_at_k: share of the held-out top-k by a preferred creator;
    - chance_style_match_at_k: share of the rankable drawings with the keyword by a preferred
      creator, the expected match of a style-blind ranking;
    - best_style_match_at_k: the highest match possible, min(k, preferred) / min(k, all) over the
      rankable drawings;
    - style_match_share_of_best_at_k: style_match_at_k / best_style_match_at_k, which reaches 1 only
      for a perfect ranking, whereas style_match_at_k is capped by keywords with few drawings by a
      preferred creator;
    - unfiltered_style_match_at_k and its chance over the whole catalogue;
    - distinct_categories_at_k: number of categories in the unfiltered top-k.
    """
    image_creator: dict[str, str | None] = truth["image_creator"]
    image_categories: dict[str, list[str]] = truth["image_categories"]
    user_creators: dict[str, list[str]] = truth["user_creators"]
    keyword_images: dict[str, list[str]] = truth["keyword_images"]
    catalogue_creators = Counter(creator for creator in image_creator.values())
    catalogue_size = max(len(image_creator), 1)

    excluded = excluded or {}
    matches, chances, best = [], [], []
    for user_id, per_keyword in held_out_results.items():
        preferred = set(user_creators[user_id])
        hidden = excluded.get(user_id, set())
        for keyword, image_ids in per_keyword.items():
            top = image_ids[:k]
            pool = [image_id for image_id in keyword_images[keyword] if image_id not in hidden]
            if not top or not pool:
                continue
            matches.append(np.mean([image_creator.get(image_id) in preferred for image_id in top]))
            preferred_in_pool = sum(image_creator.get(image_id) in preferred for image_id in pool)
            chances.append(preferred_in_pool / len(pool))
            best.append(min(k, preferred_in_pool) / min(k, len(pool)))

    unfiltered, unfiltered_chance, distinct = [], [], []
    for user_id, image_ids in top_results.items():
        top = image_ids[:k]
        if not top:
            continue
        preferred = set(user_creators[user_id])
        unfiltered.append(np.mean([image_creator.get(image_id) in preferred for image_id in top]))
        unfiltered_chance.append(sum(catalogue_creators[creator] for creator in preferred) / catalogue_size)
        distinct.append(len({category for image_id in top for category in image_categories.get(image_id, [])}))

    def mean(values: list[float]) -> float:
        return round(float(np.mean(values)), 4) if values else 0.0

    return {
        f"style_match_at_{k}": mean(matches),
        f"chance_style_match_at_{k}": mean(chances),
        f"best_style_match_at_{k}": mean(best),
        f"style_match_share_of_best_at_{k}": round(mean(matches) / mean(best), 4) if mean(best) else 0.0,
        f"unfiltered_style_match_at_{k}": mean(unfiltered),
        f"chance_unfiltered_style_match_at_{k}": mean(unfiltered_chance),
        f"distinct_categories_at_{k}": mean(distinct),
        "held_out_projects_evaluated": len(matches),
        "users_evaluated": len(unfiltered),
    }
