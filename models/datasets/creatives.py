"""Simulated creatives on a real catalogue, where the creator of a drawing is its style.

Each creative prefers the drawings of 1-3 creators and works through a sequence of projects, one
keyword each. A project is a few searches for its keyword. A search shows a random sample of the
drawings that carry the keyword, as a search engine that ignores style would. The creative then
downloads 1-3 of them, mostly ones by a preferred creator. The last projects of each creative are
held out: no events are written for them, so their keywords were never searched, and they measure
whether the learned preference carries over to a new subject.

A held-out keyword has at least `min_held_out_preferred` drawings by a preferred creator that the
creative did not download (a recommender leaves downloads out). With the default of 10, a perfect
top-10 ranking of every held-out keyword is all by preferred creators, so the best possible
creator-style match at 10 is 1. This favours creatives whose creators drew many subjects.

Events have the shapes of `stylestream.models.simulation`: searches with `results`, downloads with
the `search_id` they came from.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stylestream.schemas.errors import StylestreamError


class SimulationError(StylestreamError):
    """The catalogue is too small for the requested simulation."""


@dataclass(frozen=True)
class CreativeConfig:
    """Size and behaviour of the simulated creatives.

    `user_prefix` starts every user id, so creatives simulated with another seed for training can
    share a log with the evaluated ones without merging users.
    """

    creatives: int = 150
    creators_per_creative: tuple[int, int] = (1, 3)
    min_creator_drawings: int = 30
    projects: tuple[int, int] = (5, 8)
    held_out_projects: int = 2
    searches_per_project: tuple[int, int] = (2, 4)
    results_per_search: int = 24
    downloads_per_search: tuple[int, int] = (1, 3)
    preferred_download_rate: float = 0.9
    min_keyword_drawings: int = 10
    min_preferred_drawings: int = 3
    min_held_out_preferred: int = 10
    preferred_share: tuple[float, float] = (0.05, 0.8)
    days: float = 60.0
    seed: int = 11
    user_prefix: str = "creative"


@dataclass
class CreativeMarket:
    """Events of the simulated creatives and their ground truth."""

    searches: list[dict[str, Any]]
    downloads: list[dict[str, Any]]
    user_creators: dict[str, list[str]]
    user_projects: dict[str, list[str]]
    held_out: dict[str, list[str]]
    image_creator: dict[str, str | None] = field(default_factory=dict)
    image_categories: dict[str, list[str]] = field(default_factory=dict)
    keyword_images: dict[str, list[str]] = field(default_factory=dict)

    @property
    def event_count(self) -> int:
        """Return the number of user events (searches and downloads)."""
        return len(self.searches) + len(self.downloads)

    def truth(self) -> dict[str, Any]:
        """Return the ground truth as JSON types."""
        return {
            "user_creators": self.user_creators, "user_projects": self.user_projects, "held_out": self.held_out,
            "image_creator": self.image_creator, "image_categories": self.image_categories,
            "keyword_images": self.keyword_images,
        }

    def write(self, folder: Path) -> dict[str, Path]:
        """Write searches and downloads as JSONL and the ground truth as truth.json."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for topic in ("searches", "downloads"):
            paths[topic] = folder / f"{topic}.jsonl"
            with paths[topic].open("w") as handle:
                for event in getattr(self, topic):
                    handle.write(json.dumps(event) + "\n")
        paths["truth"] = folder / "truth.json"
        paths["truth"].write_text(json.dumps(self.truth()))
        return paths


class _Index:
    """Keyword and creator look-ups over the catalogue."""

    def __init__(self, catalogue: list[dict[str, Any]]) -> None:
        self.ids = [entry["image_id"] for entry in catalogue]
        self.creator = {entry["image_id"]: entry.get("creator") for entry in catalogue}
        self.by_keyword: dict[str, list[str]] = defaultdict(list)
        self.creator_keywords: dict[str, Counter[str]] = defaultdict(Counter)
        for entry in catalogue:
            for keyword in entry.get("keywords", []):
                self.by_keyword[keyword].append(entry["image_id"])
                if entry.get("creator"):
                    self.creator_keywords[entry["creator"]][keyword] += 1
        drawings = Counter(creator for creator in self.creator.values() if creator)
        self.drawings = drawings

    def preferred_drawings(self, keyword: str, creators: list[str], excluded: set[str]) -> int:
        """Count the drawings with `keyword` by one of `creators`, leaving out `excluded` ids."""
        return sum(self.creator[image] in creators for image in self.by_keyword[keyword] if image not in excluded)

    def project_keywords(self, creators: list[str], config: CreativeConfig, minimum: int) -> list[str]:
        """Return the keywords a creative preferring `creators` can work on, sorted."""
        preferred_count: Counter[str] = Counter()
        for creator in creators:
            preferred_count.update(self.creator_keywords[creator])
        low, high = config.preferred_share
        eligible = []
        for keyword, preferred in preferred_count.items():
            total = len(self.by_keyword[keyword])
            if total >= config.min_keyword_drawings and preferred >= minimum and low <= preferred / total <= high:
                eligible.append(keyword)
        return sorted(eligible)


def _pick_projects(
    index: _Index, creators: list[str], config: CreativeConfig, rng: np.random.Generator
) -> tuple[list[str], list[str]] | None:
    """Pick the trained and held-out project keywords of a creative, or None when too few fit."""
    held_out_pool = index.project_keywords(creators, config, config.min_held_out_preferred)
    pool = index.project_keywords(creators, config, config.min_preferred_drawings)
    if len(held_out_pool) < config.held_out_projects:
        return None
    held_out = [str(keyword) for keyword in rng.choice(held_out_pool, size=config.held_out_projects, replace=False)]
    remaining = [keyword for keyword in pool if keyword not in held_out]
    wanted = int(rng.integers(config.projects[0], config.projects[1] + 1)) - config.held_out_projects
    if len(remaining) < max(wanted, 1):
        return None
    return [str(keyword) for keyword in rng.choice(remaining, size=wanted, replace=False)], held_out


def _simulate_search(
    market: CreativeMarket, index: _Index, user_id: str, keyword: str, creators: list[str], clock: float,
    config: CreativeConfig, rng: np.random.Generator,
) -> None:
    """Append one search for `keyword` and the downloads that follow it."""
    matching = index.by_keyword[keyword]
    shown = [str(image) for image in rng.choice(matching, size=min(config.results_per_search, len(matching)), replace=False)]
    search_id = f"search-{market.event_count:07d}"
    market.searches.append({
        "event_id": f"event-{market.event_count:07d}", "user_id": user_id, "search_id": search_id,
        "query": keyword, "timestamp": round(clock, 3), "results": shown,
    })

    liked = [image for image in shown if index.creator[image] in creators]
    downloaded: set[str] = set()
    for _ in range(int(rng.integers(config.downloads_per_search[0], config.downloads_per_search[1] + 1))):
        options = liked if liked and rng.random() < config.preferred_download_rate else shown
        chosen = str(rng.choice(options))
        if chosen in downloaded:
            continue
        downloaded.add(chosen)
        market.downloads.append({
            "event_id": f"event-{market.event_count:07d}", "user_id": user_id, "image_id": chosen,
            "timestamp": round(clock + rng.uniform(5, 600), 3), "search_id": search_id,
        })


def simulate_creatives(catalogue: list[dict[str, Any]], config: CreativeConfig = CreativeConfig(), end_time: float | None = None) -> CreativeMarket:
    """Simulate creatives on a catalogue of entries with image_id, creator, categories and keywords."""
    rng = np.random.default_rng(config.seed)
    index = _Index(catalogue)
    candidates = sorted(creator for creator, count in index.drawings.items() if count >= config.min_creator_drawings)
    if len(candidates) < config.creators_per_creative[1]:
        raise SimulationError(
            f"only {len(candidates)} creators have at least {config.min_creator_drawings} drawings; "
            "lower min_creator_drawings or use a larger catalogue"
        )
    end_time = end_time if end_time is not None else time.time() - 3600.0
    start = end_time - config.days * 86400.0
    market = CreativeMarket([], [], {}, {}, {})
    market.image_creator = dict(index.creator)
    market.image_categories = {entry["image_id"]: entry.get("categories", []) for entry in catalogue}

    attempts = 0
    while len(market.user_creators) < config.creatives:
        attempts += 1
        if attempts > config.creatives * 50:
            raise SimulationError(f"found projects for only {len(market.user_creators)} of {config.creatives} creatives")
        size = int(rng.integers(config.creators_per_creative[0], config.creators_per_creative[1] + 1))
        creators = sorted(str(creator) for creator in rng.choice(candidates, size=size, replace=False))
        picked = _pick_projects(index, creators, config, rng)
        if picked is None:
            continue

        projects, held_out = picked
        user_id = f"{config.user_prefix}-{len(market.user_creators):04d}"
        searches_before, downloads_before = len(market.searches), len(market.downloads)
        clock = start + rng.uniform(0, 0.2) * (end_time - start)
        span = (end_time - clock) / (len(projects) + 1)
        for keyword in projects:
            for _ in range(int(rng.integers(config.searches_per_project[0], config.searches_per_project[1] + 1))):
                clock += rng.uniform(0.02, 0.15) * span / 4
                _simulate_search(market, index, user_id, keyword, creators, clock, config, rng)
            clock += span * rng.uniform(0.3, 0.8)

        # Downloads in the trained projects can carry a held-out keyword too. Drop the creative when
        # they leave a held-out keyword with too few preferred drawings to recommend.
        downloaded = {event["image_id"] for event in market.downloads[downloads_before:]}
        if any(index.preferred_drawings(keyword, creators, downloaded) < config.min_held_out_preferred for keyword in held_out):
            del market.searches[searches_before:]
            del market.downloads[downloads_before:]
            continue
        market.user_creators[user_id] = creators
        market.user_projects[user_id] = projects
        market.held_out[user_id] = held_out
        for keyword in held_out:
            market.keyword_images[keyword] = list(index.by_keyword[keyword])
    return market
