"""The style encoder: an image tower in the shape of the RecSys '22 Visual Styles model.

Per-feature encoders (dense projections for deep and colour features, embedding bags for categories
and keywords) are concatenated into x0, which feeds an MLP branch and a DCN cross network side by
side; their outputs are concatenated and projected to an L2-normalised style vector.

Until a trained checkpoint exists, `StyleEncoder.initialise_distance_preserving` gives a
deterministic start: each feature block is a random Gaussian (Johnson-Lindenstrauss) projection of
its L2-normalised input, the cross layers are the identity, and the MLP branch contributes zero. So
the untrained encoder is a random projection of the weighted feature concatenation, which keeps
cosine distances between images roughly as they are in feature space.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stylestream.models.features import FeatureBatch, FeatureSchema, build_batch
from stylestream.schemas.errors import StylestreamError

log = logging.getLogger(__name__)

UNTRAINED_VERSION = "untrained-jl-v1"


class ModelError(StylestreamError):
    """A checkpoint could not be loaded or does not match the requested schema."""


@dataclass(frozen=True)
class EncoderConfig:
    """Layer sizes of the style encoder, and the weight of each feature nature in x0."""

    style_dim: int = 64
    deep_hidden: int = 64
    colors_hidden: int = 16
    categories_hidden: int = 16
    keywords_hidden: int = 32
    mlp_hidden: int = 128
    cross_layers: int = 2
    deep_weight: float = 1.0
    colors_weight: float = 0.8
    categories_weight: float = 0.5
    keywords_weight: float = 0.5


class CrossNetwork(nn.Module):
    """DCN cross layers: x_{l+1} = x0 * (W_l x_l + b_l) + x_l."""

    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class StyleEncoder(nn.Module):
    """Map image features of several natures to L2-normalised style vectors."""

    def __init__(self, schema: FeatureSchema, config: EncoderConfig = EncoderConfig(), model_version: str = UNTRAINED_VERSION) -> None:
        super().__init__()
        self.schema = schema
        self.config = config
        self.model_version = model_version
        self.deep = nn.Linear(schema.deep_dim, config.deep_hidden)
        self.colors = nn.Linear(schema.colors_dim, config.colors_hidden)
        self.categories = nn.EmbeddingBag(schema.category_buckets, config.categories_hidden, mode="sum")
        self.keywords = nn.EmbeddingBag(schema.keyword_buckets, config.keywords_hidden, mode="sum")
        width = config.deep_hidden + config.colors_hidden + config.categories_hidden + config.keywords_hidden
        self.mlp = nn.Sequential(
            nn.Linear(width, config.mlp_hidden), nn.ReLU(), nn.Linear(config.mlp_hidden, config.mlp_hidden), nn.ReLU()
        )
        self.cross = CrossNetwork(width, config.cross_layers)
        self.head = nn.Linear(width + config.mlp_hidden, config.style_dim)
        block_weights = [
            (config.deep_hidden, config.deep_weight),
            (config.colors_hidden, config.colors_weight),
            (config.categories_hidden, config.categories_weight),
            (config.keywords_hidden, config.keywords_weight),
        ]
        self.register_buffer("block_scale", torch.cat([torch.full((size,), weight) for size, weight in block_weights]))

    @property
    def style_dim(self) -> int:
        """Return the dimension of the style vectors."""
        return self.config.style_dim

    def initialise_distance_preserving(self, seed: int = 0) -> "StyleEncoder":
        """Set the deterministic, roughly distance-preserving initialisation described above."""
        generator = torch.Generator().manual_seed(seed)

        def gaussian(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator) / np.sqrt(shape[0])

        with torch.no_grad():
            self.deep.weight.copy_(gaussian(*self.deep.weight.shape))
            self.colors.weight.copy_(gaussian(*self.colors.weight.shape))
            # Embedding rows are (bucket, hidden): scale by the output width so a row has unit norm.
            self.categories.weight.copy_(torch.randn(*self.categories.weight.shape, generator=generator) / np.sqrt(self.config.categories_hidden))
            self.keywords.weight.copy_(torch.randn(*self.keywords.weight.shape, generator=generator) / np.sqrt(self.config.keywords_hidden))
            self.deep.bias.zero_()
            self.colors.bias.zero_()
            for layer in self.cross.layers:
                layer.weight.zero_()
                layer.bias.zero_()
            for module in self.mlp:
                if isinstance(module, nn.Linear):
                    module.weight.copy_(gaussian(*module.weight.shape))
                    module.bias.zero_()
            width = self.head.in_features - self.config.mlp_hidden
            self.head.weight.zero_()
            self.head.weight[:, :width].copy_(gaussian(self.config.style_dim, width))
            self.head.bias.zero_()
        return self

    def forward(self, batch: FeatureBatch) -> torch.Tensor:
        deep = self.deep(F.normalize(batch.deep, dim=1))
        colors = self.colors(F.normalize(batch.colors, dim=1))
        categories = self.categories(batch.category_ids, batch.category_offsets, per_sample_weights=batch.category_weights)
        keywords = self.keywords(batch.keyword_ids, batch.keyword_offsets, per_sample_weights=batch.keyword_weights)
        x0 = torch.cat([deep, colors, categories, keywords], dim=1) * self.block_scale
        combined = torch.cat([self.cross(x0), self.mlp(x0)], dim=1)
        return F.normalize(self.head(combined), dim=1)

    @torch.no_grad()
    def encode(
        self,
        deep: Sequence[Sequence[float]],
        colors: Sequence[Sequence[float]],
        categories: Sequence[Sequence[str]],
        keywords: Sequence[Sequence[str]],
    ) -> np.ndarray:
        """Encode a batch of images into an (n, style_dim) float32 array of unit vectors."""
        if len(deep) == 0:
            return np.zeros((0, self.style_dim), dtype=np.float32)
        self.eval()
        batch = build_batch(self.schema, deep, colors, categories, keywords)
        return self(batch).numpy().astype(np.float32)

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write a checkpoint with the weights, schema, config and model_version."""
        torch.save(
            {
                "model_version": self.model_version,
                "schema": self.schema.to_dict(),
                "config": asdict(self.config),
                "state_dict": self.state_dict(),
                "extra": extra or {},
            },
            Path(path),
        )

    @classmethod
    def load(cls, path: str | Path) -> "StyleEncoder":
        """Load a checkpoint written by `save`; raise ModelError when it is missing or invalid."""
        path = Path(path)
        if not path.exists():
            raise ModelError(f"model checkpoint {path} was not found; pass --model PATH or leave it unset for the untrained encoder")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            encoder = cls(FeatureSchema(**checkpoint["schema"]), EncoderConfig(**checkpoint["config"]), checkpoint["model_version"])
            encoder.load_state_dict(checkpoint["state_dict"])
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise ModelError(f"model checkpoint {path} is not a stylestream checkpoint: {exc}") from exc
        log.info("Loaded style encoder %s from %s", encoder.model_version, path)
        return encoder


def untrained_encoder(schema: FeatureSchema = FeatureSchema(), config: EncoderConfig = EncoderConfig(), seed: int = 0) -> StyleEncoder:
    """Build the deterministic untrained encoder; its model_version names the schema and seed."""
    fingerprint = hashlib.sha1(repr((schema, config, seed)).encode()).hexdigest()[:8]
    encoder = StyleEncoder(schema, config, model_version=f"{UNTRAINED_VERSION}-{fingerprint}")
    return encoder.initialise_distance_preserving(seed)
