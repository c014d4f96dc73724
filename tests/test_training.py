"""Tests of contrastive training: the loss, positive pairs, a short run and its checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stylestream.models.encoder import EncoderConfig, StyleEncoder
from stylestream.models.simulation import SimulationConfig, simulate
from stylestream.models.training import (
    PairSampler,
    RankedSearch,
    SearchSampler,
    TrainingConfig,
    TrainingError,
    fingerprint,
    info_nce,
    learning_rate_scheduler,
    plot_loss_curve,
    save_checkpoint,
    search_ranking_loss,
    train_encoder,
)
from stylestream.schemas.events import Download, Image, Search


def _image(image_id: str, category: str) -> Image:
    return Image(image_id=image_id, timestamp=0.0, deep=[1.0, 0.0], colors=[1.0], categories=[category], keywords=[])


def _download(number: int, image_id: str, search_id: str | None, user: str = "u") -> Download:
    return Download(event_id=f"d{number}", user_id=user, image_id=image_id, timestamp=float(number), search_id=search_id)


def _search(search_id: str, results: list[str], user: str = "u") -> Search:
    return Search(event_id=f"e-{search_id}", user_id=user, search_id=search_id, query="q", timestamp=0.0, results=results)


@pytest.fixture(scope="module")
def small_log() -> tuple[list[Image], list[Download]]:
    marketplace = simulate(SimulationConfig(images=200, users=30, seed=3), end_time=1.7e9)
    images = [Image(**{k: v for k, v in image.items()}) for image in marketplace.images]
    downloads = [Download(**download) for download in marketplace.downloads]
    return images, downloads


@pytest.fixture(scope="module")
def small_searches() -> list[Search]:
    marketplace = simulate(SimulationConfig(images=200, users=30, seed=3), end_time=1.7e9)
    return [Search(**search) for search in marketplace.searches]


def test_info_nce_identical_vectors_is_log_batch() -> None:
    vectors = torch.nn.functional.normalize(torch.ones(4, 3), dim=1)
    ids = torch.arange(4)

    loss = info_nce(vectors, vectors, ids, ids + 10, temperature=0.1)

    assert loss.item() == pytest.approx(math.log(4), rel=1e-5)


def test_info_nce_separated_pairs_near_zero() -> None:
    vectors = torch.eye(4)

    loss = info_nce(vectors, vectors, torch.arange(4), torch.arange(4) + 10, temperature=0.05)

    assert loss.item() < 1e-6


def test_info_nce_masks_repeated_images() -> None:
    vectors = torch.nn.functional.normalize(torch.ones(3, 3), dim=1)

    # Rows 0 and 1 share anchor image 0, so each hides the other: log 2, log 2 and log 3.
    loss = info_nce(vectors, vectors, torch.tensor([0, 0, 5]), torch.tensor([1, 2, 6]), temperature=0.1)

    assert loss.item() == pytest.approx((2 * math.log(2) + math.log(3)) / 3, rel=1e-5)


def test_pairs_follow_pairing_rule() -> None:
    images = [_image("a", "c1"), _image("b", "c1"), _image("c", "c2")]
    downloads = [_download(0, "a", "s1"), _download(1, "b", "s1"), _download(2, "c", "s1")]
    rng = np.random.default_rng(0)

    # a and b share search and category, so they never pair; c differs in category.
    either = {tuple(pair) for _ in range(20) for pair in PairSampler(images, downloads).epoch_pairs(rng).tolist()}
    assert either == {(0, 2), (1, 2), (2, 0), (2, 1)}

    downloads[1] = _download(1, "b", "s2")
    by_search = {tuple(pair) for _ in range(20) for pair in PairSampler(images, downloads).epoch_pairs(rng).tolist()}
    by_category = {tuple(pair) for _ in range(20) for pair in PairSampler(images, downloads, "category").epoch_pairs(rng).tolist()}
    assert (0, 1) in by_search
    assert (0, 1) not in by_category
    assert (0, 2) in by_category


def test_pairs_stay_within_user() -> None:
    images = [_image("a", "c1"), _image("b", "c2")]
    downloads = [_download(0, "a", "s1", user="u1"), _download(1, "b", "s2", user="u2")]

    assert PairSampler(images, downloads).epoch_pairs(np.random.default_rng(0)).shape == (0, 2)


def test_search_sampler_profiles_other_searches() -> None:
    images = [_image(name, "c1") for name in "abcde"]
    downloads = [_download(0, "a", "s1"), _download(1, "c", "s2"), _download(2, "e", "s3", user="v")]
    searches = [_search("s1", ["a", "b"]), _search("s2", ["c", "d", "a"]), _search("s3", ["e", "d"], user="v")]

    sampler = SearchSampler(images, downloads, searches)

    # User v has no download under another search, so s3 has no profile and is left out.
    assert sampler.searches == [RankedSearch([0, 1], [0], [2]), RankedSearch([2, 3, 0], [2], [0])]


def test_search_sampler_cuts_profiles() -> None:
    images = [_image(name, "c1") for name in "abcdef"]
    downloads = [_download(number, name, f"s{number}") for number, name in enumerate("abcde")]
    searches = [_search("s0", ["a", "f"])]

    sampled = SearchSampler(images, downloads, searches).sample(np.random.default_rng(0), 3, profile_size=2)

    assert len(sampled) == 3
    for search in sampled:
        assert len(search.profile) == 2
        assert set(search.profile) <= {1, 2, 3, 4}


def test_search_ranking_loss_hand_case() -> None:
    # Profile (1, 0); results score 1 (downloaded) and 0 at temperature 1: loss log(1 + e^-1).
    vectors = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])

    loss = search_ranking_loss(vectors, [RankedSearch([5, 6], [5], [9])], temperature=1.0)

    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-5)


def test_search_ranking_loss_counts_every_download() -> None:
    # Two downloaded results of three: -log((e^1 + e^0) / (e^1 + e^0 + e^0)).
    vectors = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])

    loss = search_ranking_loss(vectors, [RankedSearch([5, 6, 7], [5, 6], [9])], temperature=1.0)

    expected = -math.log((math.e + 1) / (math.e + 2))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_fingerprint_ignores_order() -> None:
    images = [_image("a", "c1"), _image("b", "c2")]
    downloads = [_download(0, "a", "s1"), _download(1, "b", "s2")]

    assert fingerprint(images, downloads) == fingerprint(images[::-1], downloads[::-1])
    assert fingerprint(images, downloads) != fingerprint(images, downloads[:1])


def test_config_rejects_bad_values() -> None:
    with pytest.raises(TrainingError, match="-1"):
        TrainingConfig(temperature=-1)
    with pytest.raises(TrainingError, match="subject"):
        TrainingConfig(pairing="subject")
    with pytest.raises(TrainingError, match="search batch size"):
        TrainingConfig(search_batch_size=-1)
    with pytest.raises(TrainingError, match="ranking weight"):
        TrainingConfig(ranking_weight=float("nan"))
    with pytest.raises(TrainingError, match="linear"):
        TrainingConfig(lr_schedule="linear")


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [("constant", [1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3]), ("cosine", [1e-3, 0.85355e-3, 0.5e-3, 0.14645e-3, 0.0, 0.0])],
)
def test_learning_rate_schedule_per_step(schedule: str, expected: list[float]) -> None:
    optimiser = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = learning_rate_scheduler(optimiser, schedule, total_steps=4)

    rates = []
    for _ in range(6):
        rates.append(optimiser.param_groups[0]["lr"])
        optimiser.step()
        scheduler.step()

    # Cosine decay stays at 0 after total_steps.
    assert rates == pytest.approx(expected, abs=1e-8)


def test_training_lowers_loss(small_log: tuple[list[Image], list[Download]], tmp_path: Path) -> None:
    images, downloads = small_log
    config = TrainingConfig(batch_size=64, epochs=3, seed=1, device="cpu")

    result = train_encoder(images, downloads, config, progress=False)
    again = train_encoder(images, downloads, config, progress=False)

    assert result.epoch_losses[-1] < result.epoch_losses[0] - 0.05
    for name, tensor in result.encoder.state_dict().items():
        assert torch.equal(tensor, again.encoder.state_dict()[name]), name

    path = tmp_path / "encoder.pt"
    save_checkpoint(result, path)
    loaded = StyleEncoder.load(path)
    extra = torch.load(path, weights_only=True)["extra"]
    assert loaded.model_version == result.encoder.model_version
    assert extra["data_sha256"] == fingerprint(images, downloads)
    assert extra["trained_until"] == max(d.timestamp for d in downloads)
    plot_loss_curve(result, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_ranking_loss_training_lowers_loss(small_log: tuple[list[Image], list[Download]], small_searches: list[Search]) -> None:
    images, downloads = small_log
    config = TrainingConfig(batch_size=64, epochs=3, seed=1, search_batch_size=16, device="cpu")

    result = train_encoder(images, downloads, config, progress=False, searches=small_searches)
    plain = train_encoder(images, downloads, TrainingConfig(batch_size=64, epochs=3, seed=1, device="cpu"), progress=False)

    assert result.epoch_losses[-1] < result.epoch_losses[0] - 0.05
    # The ranking term adds to InfoNCE, so the combined loss is above InfoNCE alone.
    assert result.epoch_losses[0] > plain.epoch_losses[0]


def test_ranking_loss_needs_searches(small_log: tuple[list[Image], list[Download]]) -> None:
    images, downloads = small_log

    with pytest.raises(TrainingError, match="searches"):
        train_encoder(images, downloads, TrainingConfig(batch_size=64, search_batch_size=16), progress=False)


def test_training_rejects_tiny_logs() -> None:
    images = [_image("a", "c1"), _image("b", "c2")]
    downloads = [_download(0, "a", "s1"), _download(1, "b", "s2")]

    with pytest.raises(TrainingError, match="batch size"):
        train_encoder(images, downloads, TrainingConfig(batch_size=8), progress=False)


def test_training_keeps_encoder_config(small_log: tuple[list[Image], list[Download]], tmp_path: Path) -> None:
    images, downloads = small_log
    encoder_config = EncoderConfig(style_dim=16, categories_weight=0.0, keywords_weight=0.0)

    result = train_encoder(images, downloads, TrainingConfig(batch_size=64, epochs=1, device="cpu"), progress=False, encoder_config=encoder_config)
    path = tmp_path / "encoder.pt"
    save_checkpoint(result, path)
    loaded = StyleEncoder.load(path)

    assert loaded.config == encoder_config
    assert loaded.style_dim == 16
    vectors = loaded.encode([images[0].deep], [images[0].colors], [images[0].categories], [images[0].keywords])
    assert vectors.shape == (1, 16)
    # A zero weight removes the block from x0, so the label embeddings cannot change a vector.
    relabelled = loaded.encode([images[0].deep], [images[0].colors], [["another-category"]], [["another-keyword"]])
    np.testing.assert_allclose(vectors, relabelled, atol=1e-6)
