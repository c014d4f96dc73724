"""Tests of the style encoder: shape, determinism, distance preservation, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stylestream.models.encoder import ModelError, StyleEncoder, untrained_encoder
from stylestream.models.features import FeatureSchema


def _features(rows: int, schema: FeatureSchema, seed: int = 0) -> tuple[list, list, list, list]:
    rng = np.random.default_rng(seed)
    deep = rng.normal(size=(rows, schema.deep_dim)).tolist()
    colors = rng.dirichlet(np.ones(schema.colors_dim), size=rows).tolist()
    categories = [[f"cat{int(rng.integers(0, 5))}"] for _ in range(rows)]
    keywords = [[f"kw{int(rng.integers(0, 20))}", f"kw{int(rng.integers(0, 20))}"] for _ in range(rows)]
    return deep, colors, categories, keywords


def test_encoder_outputs_unit_vectors() -> None:
    encoder = untrained_encoder()
    vectors = encoder.encode(*_features(16, encoder.schema))

    assert vectors.shape == (16, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_untrained_encoder_is_deterministic() -> None:
    features = _features(8, FeatureSchema())

    first = untrained_encoder().encode(*features)
    second = untrained_encoder().encode(*features)

    assert np.array_equal(first, second)
    assert untrained_encoder().model_version == untrained_encoder().model_version


def test_untrained_encoder_roughly_preserves_deep_distances() -> None:
    schema = FeatureSchema()
    encoder = untrained_encoder(schema)
    rng = np.random.default_rng(3)
    base = rng.normal(size=schema.deep_dim)
    deep = [base + scale * rng.normal(size=schema.deep_dim) for scale in np.linspace(0.0, 3.0, 40)]
    colors = [[1.0] + [0.0] * (schema.colors_dim - 1)] * 40
    vectors = encoder.encode(deep, colors, [["same"]] * 40, [["same"]] * 40)

    deep_normed = np.array(deep) / np.linalg.norm(deep, axis=1, keepdims=True)
    input_similarity = deep_normed[1:] @ deep_normed[0]
    output_similarity = vectors[1:] @ vectors[0]

    assert np.corrcoef(input_similarity, output_similarity)[0, 1] > 0.8


def test_checkpoint_round_trip_keeps_outputs(tmp_path: Path) -> None:
    encoder = untrained_encoder()
    features = _features(4, encoder.schema)
    path = tmp_path / "encoder.pt"
    encoder.save(path)

    loaded = StyleEncoder.load(path)

    assert loaded.model_version == encoder.model_version
    assert np.allclose(loaded.encode(*features), encoder.encode(*features))


def test_missing_checkpoint_raises_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        StyleEncoder.load(tmp_path / "absent.pt")


def test_wrong_feature_dimension_raises() -> None:
    encoder = untrained_encoder()
    deep, colors, categories, keywords = _features(2, encoder.schema)

    with pytest.raises(ValueError, match="deep features"):
        encoder.encode([row[:-1] for row in deep], colors, categories, keywords)
