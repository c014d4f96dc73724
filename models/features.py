"""The feature schema of the style encoder, and batching of image features into tensors.

Categories and keywords are hashed into fixed bucket counts with a stable hash (BLAKE2b), so the
encoder needs no vocabulary file and gives the same buckets in every process.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class FeatureSchema:
    """Sizes of the encoder's inputs: feature dimensions and hash buckets for string labels."""

    deep_dim: int = 128
    colors_dim: int = 12
    category_buckets: int = 1024
    keyword_buckets: int = 8192

    def to_dict(self) -> dict[str, Any]:
        """Convert to a plain dict, as stored in a checkpoint."""
        return asdict(self)


def label_bucket(label: str, buckets: int) -> int:
    """Map a category or keyword to its hash bucket, case-insensitively."""
    digest = hashlib.blake2b(label.strip().lower().encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets


@dataclass
class FeatureBatch:
    """Tensors for a batch of images: dense features and flattened embedding-bag inputs."""

    deep: torch.Tensor
    colors: torch.Tensor
    category_ids: torch.Tensor
    category_offsets: torch.Tensor
    category_weights: torch.Tensor
    keyword_ids: torch.Tensor
    keyword_offsets: torch.Tensor
    keyword_weights: torch.Tensor

    def to(self, device: torch.device | str) -> "FeatureBatch":
        """Move every tensor to `device`."""
        return FeatureBatch(**{name: tensor.to(device) for name, tensor in vars(self).items()})


def _bag(labels_per_image: Sequence[Sequence[str]], buckets: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten label lists for nn.EmbeddingBag, each weighted 1/sqrt(n) so a bag has unit scale."""
    ids: list[int] = []
    offsets: list[int] = []
    weights: list[float] = []
    for labels in labels_per_image:
        offsets.append(len(ids))
        unique = sorted({label_bucket(label, buckets) for label in labels})
        ids.extend(unique)
        if unique:
            weights.extend([1.0 / np.sqrt(len(unique))] * len(unique))
    return (
        torch.tensor(ids, dtype=torch.long),
        torch.tensor(offsets, dtype=torch.long),
        torch.tensor(weights, dtype=torch.float32),
    )


def build_batch(
    schema: FeatureSchema,
    deep: Sequence[Sequence[float]],
    colors: Sequence[Sequence[float]],
    categories: Sequence[Sequence[str]],
    keywords: Sequence[Sequence[str]],
) -> FeatureBatch:
    """Build a FeatureBatch, raising ValueError when a dense feature has the wrong dimension."""
    deep_array = np.asarray(deep, dtype=np.float32)
    colors_array = np.asarray(colors, dtype=np.float32)
    if deep_array.ndim != 2 or deep_array.shape[1] != schema.deep_dim:
        raise ValueError(f"deep features have shape {deep_array.shape}; the schema expects (n, {schema.deep_dim})")
    if colors_array.ndim != 2 or colors_array.shape[1] != schema.colors_dim:
        raise ValueError(f"colour features have shape {colors_array.shape}; the schema expects (n, {schema.colors_dim})")
    category_ids, category_offsets, category_weights = _bag(categories, schema.category_buckets)
    keyword_ids, keyword_offsets, keyword_weights = _bag(keywords, schema.keyword_buckets)
    return FeatureBatch(
        deep=torch.from_numpy(deep_array),
        colors=torch.from_numpy(colors_array),
        category_ids=category_ids,
        category_offsets=category_offsets,
        category_weights=category_weights,
        keyword_ids=keyword_ids,
        keyword_offsets=keyword_offsets,
        keyword_weights=keyword_weights,
    )
