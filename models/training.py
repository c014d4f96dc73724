"""Contrastive training of the style encoder on a download log.

The loss is InfoNCE with in-batch negatives, as in "Learning Users' Preferred Visual Styles in an
Image Marketplace" (Gomez Bruballa et al., ACM RecSys 2022). A positive pair is two images that one
user downloaded under different searches or with different categories. A creative changes subject
between projects but keeps a style, so such pairs share the user's style more often than a subject.

With searches and `search_batch_size` > 0, a search ranking loss is added. For a search that led to
a download, the user's profile is the normalised mean of their downloads under other searches, as
the served user vector is a weighted mean of downloads. The loss is the softmax cross-entropy of the
downloaded results among all results of that search, scored by the profile. Every result of a
search shares its subject, so this loss rewards telling styles apart within one subject, which
in-batch negatives of other subjects do not.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import orjson
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stylestream.models.encoder import EncoderConfig, StyleEncoder, untrained_encoder
from stylestream.models.features import FeatureSchema, build_batch
from stylestream.schemas.errors import StylestreamError
from stylestream.schemas.events import Download, Image, Search

log = logging.getLogger(__name__)

TRAINED_VERSION = "infonce-v1"
PARTNER_TRIES = 16
# "search_or_category": another search or another category set; "category": another category set.
PAIRINGS = ("search_or_category", "category")
# "constant" keeps the learning rate throughout, and "cosine" decays it to 0 by the last step.
LR_SCHEDULES = ("constant", "cosine")


class TrainingError(StylestreamError):
    """Training data or settings that cannot train an encoder."""


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of contrastive training. `device` None picks CUDA when available."""

    temperature: float = 0.1
    batch_size: int = 256
    epochs: int = 5
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    weight_decay: float = 1e-5
    seed: int = 0
    pairing: str = "search_or_category"
    search_batch_size: int = 0
    ranking_weight: float = 1.0
    profile_size: int = 16
    device: str | None = None

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise TrainingError(f"temperature must be a positive number, got {self.temperature!r}")
        if self.batch_size < 2:
            raise TrainingError(f"batch size must be at least 2 for in-batch negatives, got {self.batch_size}")
        if self.epochs < 1:
            raise TrainingError(f"epochs must be at least 1, got {self.epochs}")
        if self.pairing not in PAIRINGS:
            raise TrainingError(f"pairing must be one of {', '.join(PAIRINGS)}, got {self.pairing!r}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise TrainingError(f"learning rate must be a positive number, got {self.learning_rate!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrainingError(f"learning rate schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.search_batch_size < 0:
            raise TrainingError(f"search batch size must be 0 (no ranking loss) or positive, got {self.search_batch_size}")
        if not (self.ranking_weight >= 0 and math.isfinite(self.ranking_weight)):
            raise TrainingError(f"ranking weight must be zero or positive, got {self.ranking_weight!r}")
        if self.profile_size < 1:
            raise TrainingError(f"profile size must be at least 1, got {self.profile_size}")


@dataclass
class TrainingResult:
    """A trained encoder with its loss history and a sha256 fingerprint of its training data."""

    encoder: StyleEncoder
    config: TrainingConfig
    data_sha256: str
    step_losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    anchors: int = 0
    trained_until: float | None = None


def fingerprint(images: Iterable[Image], downloads: Iterable[Download]) -> str:
    """Return the sha256 of the images' features and the downloads, independent of input order."""
    digest = hashlib.sha256()
    image_rows = sorted((i.image_id, i.deep, i.colors, sorted(i.categories), sorted(i.keywords)) for i in images)
    download_rows = sorted((d.event_id, d.user_id, d.image_id, d.search_id or "", d.timestamp) for d in downloads)
    for row in [*image_rows, ("--downloads--",), *download_rows]:
        digest.update(orjson.dumps(row))
        digest.update(b"\n")
    return digest.hexdigest()


def feature_schema_of(images: list[Image]) -> FeatureSchema:
    """Return the default FeatureSchema with the deep and colour dimensions of the first image."""
    return FeatureSchema(deep_dim=len(images[0].deep), colors_dim=len(images[0].colors))


class PairSampler:
    """Draw positive partners: another download of the same user under another search or category set."""

    def __init__(self, images: list[Image], downloads: list[Download], pairing: str = "search_or_category") -> None:
        self.pairing = pairing
        index = {image.image_id: position for position, image in enumerate(images)}
        category_sets = [frozenset(image.categories) for image in images]
        by_user: dict[str, list[tuple[int, str, frozenset[str]]]] = {}
        for number, event in enumerate(sorted(downloads, key=lambda d: (d.user_id, d.timestamp, d.event_id))):
            position = index.get(event.image_id)
            if position is None:
                continue
            # A download without a search counts as its own search.
            search = event.search_id if event.search_id is not None else f"\0{number}"
            by_user.setdefault(event.user_id, []).append((position, search, category_sets[position]))
        self.groups = [group for _, group in sorted(by_user.items()) if len(group) > 1]
        self.anchors = [(group_number, anchor) for group_number, group in enumerate(self.groups) for anchor in range(len(group))]

    def _is_positive(self, first: tuple[int, str, frozenset[str]], second: tuple[int, str, frozenset[str]]) -> bool:
        if first[0] == second[0]:
            return False
        if self.pairing == "category":
            return first[2] != second[2]
        return first[1] != second[1] or first[2] != second[2]

    def epoch_pairs(self, rng: np.random.Generator) -> np.ndarray:
        """Return an (n, 2) array of (anchor, partner) image positions in random order.

        An anchor gets no pair when PARTNER_TRIES random draws from its user find no partner.
        """
        pairs = []
        for anchor_number in rng.permutation(len(self.anchors)):
            group_number, anchor = self.anchors[anchor_number]
            group = self.groups[group_number]
            for candidate in rng.integers(0, len(group), size=PARTNER_TRIES):
                if self._is_positive(group[anchor], group[candidate]):
                    pairs.append((group[anchor][0], group[candidate][0]))
                    break
        return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


@dataclass
class RankedSearch:
    """Image positions of one search: its results, the results downloaded, and the user's other downloads."""

    results: list[int]
    downloaded: list[int]
    profile: list[int]


class SearchSampler:
    """Draw searches that led to a download, each with a profile from the user's other searches."""

    def __init__(self, images: list[Image], downloads: list[Download], searches: list[Search]) -> None:
        index = {image.image_id: position for position, image in enumerate(images)}
        by_search: dict[tuple[str, str], set[int]] = {}
        by_user: dict[str, list[tuple[str, int]]] = {}
        for event in downloads:
            position = index.get(event.image_id)
            if position is None or event.search_id is None:
                continue
            by_search.setdefault((event.user_id, event.search_id), set()).add(position)
            by_user.setdefault(event.user_id, []).append((event.search_id, position))
        self.searches: list[RankedSearch] = []
        for search in sorted(searches, key=lambda s: (s.user_id, s.timestamp, s.event_id)):
            results = list(dict.fromkeys(index[image_id] for image_id in search.results if image_id in index))
            downloaded = sorted(by_search.get((search.user_id, search.search_id), set()) & set(results))
            profile = sorted({position for search_id, position in by_user.get(search.user_id, []) if search_id != search.search_id})
            # A search where every result was downloaded has nothing to rank against.
            if downloaded and profile and len(downloaded) < len(results):
                self.searches.append(RankedSearch(results, downloaded, profile))

    def sample(self, rng: np.random.Generator, count: int, profile_size: int) -> list[RankedSearch]:
        """Return `count` random searches, each profile cut to at most `profile_size` random downloads."""
        chosen = []
        for number in rng.integers(0, len(self.searches), size=count):
            search = self.searches[number]
            profile = search.profile
            if len(profile) > profile_size:
                profile = sorted(rng.choice(profile, size=profile_size, replace=False).tolist())
            chosen.append(RankedSearch(search.results, search.downloaded, profile))
        return chosen


def search_ranking_loss(vectors: torch.Tensor, batch: list[RankedSearch], temperature: float) -> torch.Tensor:
    """Compute the mean cross-entropy of each search's downloaded results among its results.

    `vectors` holds, per search in order, its profile rows and then its result rows. A result is
    scored by its dot product with the normalised mean of the profile rows, divided by `temperature`.
    """
    losses = []
    start = 0
    for search in batch:
        profile = vectors[start:start + len(search.profile)]
        results = vectors[start + len(search.profile):start + len(search.profile) + len(search.results)]
        start += len(search.profile) + len(search.results)
        scores = results @ F.normalize(profile.mean(dim=0), dim=0) / temperature
        target = torch.tensor([position in search.downloaded for position in search.results], device=scores.device)
        losses.append(torch.logsumexp(scores, dim=0) - torch.logsumexp(scores[target], dim=0))
    return torch.stack(losses).mean()


def info_nce(anchors: torch.Tensor, partners: torch.Tensor, anchor_ids: torch.Tensor, partner_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Compute symmetric InfoNCE over in-batch negatives for unit vectors.

    Off-diagonal pairs where either side repeats an image of the row's own pair are masked out, so
    an image that appears twice in a batch is never its own negative.
    """
    logits = anchors @ partners.T / temperature
    row_ids = torch.stack([anchor_ids, partner_ids], dim=1)
    same = (row_ids[:, None, :, None] == row_ids[None, :, None, :]).any(dim=(2, 3))
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(len(anchors), device=anchors.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def learning_rate_scheduler(optimiser: torch.optim.Optimizer, schedule: str, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Return the per-step scheduler of `schedule` (one of LR_SCHEDULES) for `total_steps` steps.

    An epoch has fewer steps than its estimate when some anchors find no partner, so cosine decay
    can end slightly above 0. It stays at 0 after `total_steps`.
    """
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step / max(total_steps, 1), 1.0)))
        )
    return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0)


def train_encoder(
    images: list[Image],
    downloads: list[Download],
    config: TrainingConfig = TrainingConfig(),
    progress: bool = True,
    encoder_config: EncoderConfig = EncoderConfig(),
    searches: list[Search] | None = None,
) -> TrainingResult:
    """Fit a StyleEncoder with InfoNCE on positive pairs from `downloads`, starting from the untrained encoder.

    With `config.search_batch_size` > 0, `searches` (those the downloads came from) add the search
    ranking loss described above. The feature schema follows the images' deep and colour dimensions,
    and `encoder_config` sets the layer sizes and feature weights. With a fixed seed the result is
    deterministic on CPU.
    """
    if not images:
        raise TrainingError("no images to train on; pass the catalogue's images events")
    sampler = PairSampler(images, downloads, config.pairing)
    if len(sampler.anchors) < config.batch_size:
        raise TrainingError(
            f"only {len(sampler.anchors)} downloads belong to users with two or more downloads; "
            f"lower the batch size ({config.batch_size}) or provide more downloads"
        )
    search_sampler = None
    if config.search_batch_size:
        search_sampler = SearchSampler(images, downloads, searches or [])
        if not search_sampler.searches:
            raise TrainingError(
                "the search ranking loss needs searches that led to a download by a user with downloads under other "
                "searches; pass those searches or set search_batch_size to 0"
            )
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # NOTE: CUDA embedding-bag gradients use atomic adds, so only CPU training is bit-for-bit reproducible.
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    schema = feature_schema_of(images)
    encoder = untrained_encoder(schema, encoder_config, seed=config.seed).to(device)
    optimiser = torch.optim.AdamW(encoder.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    result = TrainingResult(encoder=encoder, config=config, data_sha256=fingerprint(images, downloads), anchors=len(sampler.anchors))
    result.trained_until = max(d.timestamp for d in downloads)
    log.info("Training on %d images and %d anchors, %d epochs, on %s", len(images), len(sampler.anchors), config.epochs, device)

    def features(positions: np.ndarray) -> Any:
        rows = [images[p] for p in positions]
        return build_batch(schema, [r.deep for r in rows], [r.colors for r in rows], [r.categories for r in rows], [r.keywords for r in rows]).to(device)

    steps_per_epoch = len(sampler.anchors) // config.batch_size
    scheduler = learning_rate_scheduler(optimiser, config.lr_schedule, config.epochs * steps_per_epoch)
    bar = tqdm(total=config.epochs * steps_per_epoch, desc="train", unit="step", disable=not progress)
    encoder.train()
    for epoch in range(config.epochs):
        pairs = sampler.epoch_pairs(rng)
        epoch_losses = []
        for step in range(len(pairs) // config.batch_size):
            batch = pairs[step * config.batch_size:(step + 1) * config.batch_size]
            ids = torch.from_numpy(batch).to(device)
            loss = info_nce(encoder(features(batch[:, 0])), encoder(features(batch[:, 1])), ids[:, 0], ids[:, 1], config.temperature)
            if search_sampler is not None:
                ranked = search_sampler.sample(rng, config.search_batch_size, config.profile_size)
                positions = np.asarray([p for search in ranked for p in (*search.profile, *search.results)], dtype=np.int64)
                loss = loss + config.ranking_weight * search_ranking_loss(encoder(features(positions)), ranked, config.temperature)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            epoch_losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{epoch_losses[-1]:.3f}")
        result.step_losses.extend(epoch_losses)
        result.epoch_losses.append(float(np.mean(epoch_losses)) if epoch_losses else math.nan)
        log.info("Epoch %d: mean loss %.4f", epoch + 1, result.epoch_losses[-1])
    bar.close()

    encoder.eval()
    result.encoder = encoder.cpu()
    result.encoder.model_version = f"{TRAINED_VERSION}-{result.data_sha256[:12]}-seed{config.seed}"
    return result


def save_checkpoint(result: TrainingResult, path: Path, extra: dict[str, Any] | None = None) -> None:
    """Write the encoder with its model_version, schema, data fingerprint, hyper-parameters and losses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "data_sha256": result.data_sha256,
        "training": {key: value for key, value in asdict(result.config).items() if key != "device"},
        "epoch_losses": result.epoch_losses,
        "anchors": result.anchors,
        "trained_until": result.trained_until,
        **(extra or {}),
    }
    result.encoder.save(path, extra=metadata)


def plot_loss_curve(result: TrainingResult, path: Path) -> None:
    """Draw the per-step and per-epoch InfoNCE loss into a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(7, 4))
    steps_per_epoch = max(1, len(result.step_losses) // max(1, len(result.epoch_losses)))
    axes.plot(np.arange(1, len(result.step_losses) + 1) / steps_per_epoch, result.step_losses, alpha=0.4, label="step")
    axes.plot(np.arange(1, len(result.epoch_losses) + 1), result.epoch_losses, marker="o", label="epoch mean")
    axes.set_xlabel("epoch")
    axes.set_ylabel("InfoNCE loss")
    axes.set_title(f"{result.encoder.model_version} (temperature {result.config.temperature})")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
