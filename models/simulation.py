"""A synthetic image marketplace with known ground truth.

Images have a latent style and a latent subject. Deep features mix both (the subject as strongly as
the style), colour histograms follow a per-style palette, categories follow the subject, and
keywords name the subject and sometimes the style. Each creative holds 1-3 preferred styles and
works through projects, one subject each: per project a few keyword searches, each showing results
of that subject, from which the creative mostly downloads images in a preferred style.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from stylestream.models.features import FeatureSchema

STYLE_WORDS = [
    "watercolor", "flat", "vintage", "neon", "minimal", "grunge", "pastel", "isometric", "lineart",
    "lowpoly", "retro", "noir", "pop", "sketch", "ornate", "geometric", "duotone", "collage",
]


@dataclass(frozen=True)
class SimulationConfig:
    """Size and behaviour of the simulated marketplace."""

    images: int = 2000
    users: int = 200
    styles: int = 12
    subjects: int = 40
    categories: int = 10
    projects_per_user: tuple[int, int] = (6, 10)
    searches_per_project: tuple[int, int] = (3, 6)
    results_per_search: int = 20
    downloads_per_search: tuple[int, int] = (1, 3)
    preferred_download_rate: float = 0.9
    style_strength: float = 1.0
    subject_strength: float = 1.0
    feature_noise: float = 0.6
    days: float = 90.0
    seed: int = 7
    schema: FeatureSchema = field(default_factory=FeatureSchema)


@dataclass
class Marketplace:
    """Events of a simulated marketplace and its ground truth."""

    images: list[dict[str, Any]]
    searches: list[dict[str, Any]]
    downloads: list[dict[str, Any]]
    image_style: dict[str, int]
    image_subject: dict[str, int]
    user_styles: dict[str, list[int]]

    @property
    def event_count(self) -> int:
        """Return the number of user events (searches and downloads)."""
        return len(self.searches) + len(self.downloads)

    def write(self, folder: str | Path) -> dict[str, Path]:
        """Write images, searches and downloads as JSONL and the ground truth as truth.json."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for topic in ("images", "searches", "downloads"):
            path = folder / f"{topic}.jsonl"
            with path.open("w") as handle:
                for event in getattr(self, topic):
                    handle.write(json.dumps(event) + "\n")
            paths[topic] = path
        truth = {"image_style": self.image_style, "image_subject": self.image_subject, "user_styles": self.user_styles}
        paths["truth"] = folder / "truth.json"
        paths["truth"].write_text(json.dumps(truth))
        return paths


def _unit(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    vectors = rng.normal(size=(rows, dim))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _simulate_images(config: SimulationConfig, rng: np.random.Generator, start: float) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    schema = config.schema
    style_centres = _unit(rng, config.styles, schema.deep_dim)
    subject_centres = _unit(rng, config.subjects, schema.deep_dim)
    palettes = rng.dirichlet(np.full(schema.colors_dim, 0.3), size=config.styles)
    subject_category = rng.integers(0, config.categories, size=config.subjects)
    subject_words = [[f"subject{subject}-{word}" for word in range(3)] for subject in range(config.subjects)]

    styles = rng.integers(0, config.styles, size=config.images)
    subjects = rng.integers(0, config.subjects, size=config.images)
    images = []
    for index in range(config.images):
        style, subject = int(styles[index]), int(subjects[index])
        deep = (
            config.style_strength * style_centres[style]
            + config.subject_strength * subject_centres[subject]
            + config.feature_noise * rng.normal(size=schema.deep_dim) / np.sqrt(schema.deep_dim)
        )
        colors = rng.dirichlet(palettes[style] * 40 + 0.05)
        keywords = list(rng.choice(subject_words[subject], size=2, replace=False))
        if rng.random() < 0.5:
            keywords.append(STYLE_WORDS[style % len(STYLE_WORDS)])
        images.append({
            "image_id": f"img-{index:06d}",
            "timestamp": round(start - rng.uniform(0, 30 * 86400.0), 3),
            "deep": np.round(deep, 6).tolist(),
            "colors": np.round(colors, 6).tolist(),
            "categories": [f"category-{int(subject_category[subject])}"],
            "keywords": keywords,
            "creator": f"creator-{style}-{int(rng.integers(0, 5))}",
            "metadata": {"title": f"{STYLE_WORDS[style % len(STYLE_WORDS)]} subject {subject}"},
        })
    return images, styles, subjects


def simulate(config: SimulationConfig = SimulationConfig(), end_time: float | None = None) -> Marketplace:
    """Generate a marketplace. Event times span `config.days` days and end at `end_time` (default: now - 1 h)."""
    rng = np.random.default_rng(config.seed)
    end_time = end_time if end_time is not None else time.time() - 3600.0
    start = end_time - config.days * 86400.0
    images, styles, subjects = _simulate_images(config, rng, start)
    by_subject: dict[int, list[int]] = {}
    for index, subject in enumerate(subjects):
        by_subject.setdefault(int(subject), []).append(index)

    searches: list[dict[str, Any]] = []
    downloads: list[dict[str, Any]] = []
    user_styles: dict[str, list[int]] = {}
    event_number = 0
    for user in range(config.users):
        user_id = f"user-{user:05d}"
        preferred = sorted(int(style) for style in rng.choice(config.styles, size=int(rng.integers(1, 4)), replace=False))
        user_styles[user_id] = preferred
        projects = int(rng.integers(config.projects_per_user[0], config.projects_per_user[1] + 1))
        clock = start + rng.uniform(0, 0.2) * (end_time - start)
        project_span = (end_time - clock) / projects
        for _ in range(projects):
            subject = int(rng.integers(0, config.subjects))
            pool = by_subject.get(subject, [])
            if len(pool) < 2:
                continue
            for _ in range(int(rng.integers(config.searches_per_project[0], config.searches_per_project[1] + 1))):
                clock += rng.uniform(0.02, 0.15) * project_span / 4
                shown = rng.choice(pool, size=min(config.results_per_search, len(pool)), replace=False)
                search_id = f"search-{event_number:07d}"
                searches.append({
                    "event_id": f"event-{event_number:07d}",
                    "user_id": user_id,
                    "search_id": search_id,
                    "query": f"subject{subject}-{int(rng.integers(0, 3))}",
                    "timestamp": round(clock, 3),
                    "results": [images[index]["image_id"] for index in shown],
                })
                event_number += 1
                liked = [index for index in shown if int(styles[index]) in preferred]
                for _ in range(int(rng.integers(config.downloads_per_search[0], config.downloads_per_search[1] + 1))):
                    if liked and rng.random() < config.preferred_download_rate:
                        chosen = int(rng.choice(liked))
                    else:
                        chosen = int(rng.choice(shown))
                    downloads.append({
                        "event_id": f"event-{event_number:07d}",
                        "user_id": user_id,
                        "image_id": images[chosen]["image_id"],
                        "timestamp": round(clock + rng.uniform(5, 600), 3),
                        "search_id": search_id,
                    })
                    event_number += 1
            clock = max(clock, start) + project_span * rng.uniform(0.3, 0.8)
    return Marketplace(
        images=images,
        searches=searches,
        downloads=downloads,
        image_style={image["image_id"]: int(styles[index]) for index, image in enumerate(images)},
        image_subject={image["image_id"]: int(subjects[index]) for index, image in enumerate(images)},
        user_styles=user_styles,
    )


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a JSONL file, skipping blank lines."""
    with Path(path).open() as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def style_match_at_k(recommended: dict[str, list[str]], marketplace_truth: dict[str, Any], k: int = 10) -> dict[str, float]:
    """Return the mean share of each user's top-k in a preferred style, and the same share by chance.

    Chance is the share of the catalogue in the user's preferred styles, averaged over the same users.
    """
    image_style = marketplace_truth["image_style"]
    user_styles = marketplace_truth["user_styles"]
    catalogue = np.bincount(list(image_style.values()))
    catalogue = catalogue / catalogue.sum()
    matches, chances = [], []
    for user_id, image_ids in recommended.items():
        top = image_ids[:k]
        if not top:
            continue
        preferred = set(user_styles[user_id])
        matches.append(np.mean([image_style[image_id] in preferred for image_id in top]))
        chances.append(sum(catalogue[style] for style in preferred if style < len(catalogue)))
    return {
        f"style_match_at_{k}": float(np.mean(matches)) if matches else 0.0,
        f"chance_style_match_at_{k}": float(np.mean(chances)) if chances else 0.0,
        "users_evaluated": len(matches),
    }


def config_dict(config: SimulationConfig) -> dict[str, Any]:
    """Convert a SimulationConfig to plain JSON types."""
    return asdict(config)
