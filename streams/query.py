"""The query side: recommendations and style re-ranking from the vectors in Qdrant."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from stylestream.schemas.errors import StylestreamError
from stylestream.streams.store import StyleStore, label_filter


class QueryError(StylestreamError, ValueError):
    """A query parameter is invalid. `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


MAX_K = 1000
MAX_RERANK_IDS = 1000


@dataclass
class Recommendation:
    """Images recommended to a user. `source` is 'style' or 'popularity' (cold start)."""

    user_id: str
    source: str
    items: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the recommendation as JSON types."""
        return asdict(self)


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise QueryError("k", f"k must be between 1 and {MAX_K}, got {k}")


def recommend(
    store: StyleStore, user_id: str, k: int = 10, categories: Sequence[str] = (), keywords: Sequence[str] = ()
) -> Recommendation:
    """Return the k images nearest to the user's style vector, without images the user downloaded.

    Users without a vector get the most downloaded images instead.
    """
    _check_k(k)
    if not user_id:
        raise QueryError("user_id", "user_id must not be empty")
    conditions = label_filter(categories, keywords)
    store.require_collections()
    user = store.get_user(user_id)
    if user is None:
        items = store.popular_images(k, conditions=conditions)
        return Recommendation(user_id, "popularity", [_item(image) for image in items])
    exclude = list(user.payload.get("recent_downloads", []))
    items = store.nearest_images(user.vector, k, exclude=exclude, conditions=conditions)
    return Recommendation(user_id, "style", [_item(image) for image in items])


def _item(image: Any) -> dict[str, Any]:
    return {
        "image_id": image.image_id,
        "score": image.score,
        "categories": image.payload.get("categories", []),
        "keywords": image.payload.get("keywords", []),
        "creator": image.payload.get("creator"),
    }


def rerank(store: StyleStore, user_id: str, image_ids: Sequence[str], alpha: float = 0.5) -> dict[str, Any]:
    """Re-order search results by (1 - alpha) * rank score + alpha * style similarity.

    The rank score of the result at 0-based rank r of n is 1 - r / n. Style similarity is the cosine
    between the user's vector and the image's, mapped from [-1, 1] to [0, 1]. Unknown images and
    users without a vector get similarity 0.5 (neutral), so their order follows the original rank.
    """
    if not 0.0 <= alpha <= 1.0:
        raise QueryError("alpha", f"alpha must be between 0 and 1, got {alpha}")
    if len(image_ids) > MAX_RERANK_IDS:
        raise QueryError("image_ids", f"at most {MAX_RERANK_IDS} image ids can be re-ranked, got {len(image_ids)}")
    if len(set(image_ids)) != len(image_ids):
        raise QueryError("image_ids", "image_ids must not repeat an id")
    store.require_collections()
    user = store.get_user(user_id)
    vectors = store.image_vectors(image_ids) if user is not None else {}
    count = len(image_ids)
    scored = []
    for rank, image_id in enumerate(image_ids):
        vector = vectors.get(image_id)
        similarity = 0.5
        if user is not None and vector is not None:
            cosine = float(np.dot(user.vector, vector) / (np.linalg.norm(user.vector) * np.linalg.norm(vector) + 1e-12))
            similarity = (cosine + 1.0) / 2.0
        score = (1.0 - alpha) * (1.0 - rank / count) + alpha * similarity
        scored.append({"image_id": image_id, "score": score, "original_rank": rank, "style_similarity": similarity})
    scored.sort(key=lambda item: (-item["score"], item["original_rank"]))
    return {
        "user_id": user_id,
        "source": "style" if user is not None else "original",
        "alpha": alpha,
        "unknown_images": [image_id for image_id in image_ids if image_id not in vectors] if user is not None else [],
        "items": scored,
    }
