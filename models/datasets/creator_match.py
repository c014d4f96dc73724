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
) -> dict[str, float]:
    """Compute the match figures of held-out projects and of unfiltered recommendations.

    `held_out_results[user][keyword]` is the user's top-k among drawings with the keyword, and
    `top_results[user]` the unfiltered top-k. `truth` is CreativeMarket.truth(). The figures are means over (user, keyword) pairs or
    users:

    - style_match_at_k: share of the held-out top-k by a preferred creator;
    - chance_style_match_at_k: share of all drawings with the keyword by a preferred creator, the
      expected match of a style-blind ranking;
    - best_style_match_at_k: the highest match possible, min(k, preferred) / min(k, all);
    - unfiltered_style_match_at_k and its chance over the whole catalogue;
    - distinct_categories_at_k: number of categories in the unfiltered top-k.
    """
    image_creator: dict[str, str | None] = truth["image_creator"]
    image_categories: dict[str, list[str]] = truth["image_categories"]
    user_creators: dict[str, list[str]] = truth["user_creators"]
    keyword_images: dict[str, list[str]] = truth["keyword_images"]
    catalogue_creators = Counter(creator for creator in image_creator.values())
    catalogue_size = max(len(image_creator), 1)

    matches, chances, best = [], [], []
    for user_id, per_keyword in held_out_results.items():
        preferred = set(user_creators[user_id])
        for keyword, image_ids in per_keyword.items():
            top = image_ids[:k]
            if not top:
                continue
            matches.append(np.mean([image_creator.get(image_id) in preferred for image_id in top]))
            pool = keyword_images[keyword]
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
        f"unfiltered_style_match_at_{k}": mean(unfiltered),
        f"chance_unfiltered_style_match_at_{k}": mean(unfiltered_chance),
        f"distinct_categories_at_{k}": mean(distinct),
        "held_out_projects_evaluated": len(matches),
        "users_evaluated": len(unfiltered),
    }
