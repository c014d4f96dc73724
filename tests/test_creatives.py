"""Simulated creatives on a hand-made catalogue: held-out projects and user ids."""

from __future__ import annotations

from typing import Any

import pytest

from stylestream.models.datasets.creatives import CreativeConfig, simulate_creatives

KEYWORDS = [f"k{number}" for number in range(6)]
CREATORS = ["ann", "bob", "cy", "dee"]


def _catalogue() -> list[dict[str, Any]]:
    # Each creator draws 12 drawings per keyword, and every drawing also carries the next keyword, so
    # a download in a trained project can carry a held-out keyword.
    entries = []
    for creator in CREATORS:
        for number, keyword in enumerate(KEYWORDS):
            following = KEYWORDS[(number + 1) % len(KEYWORDS)]
            for copy in range(12):
                entries.append({
                    "image_id": f"{creator}-{keyword}-{copy}", "creator": creator,
                    "categories": [f"category-{number % 3}"], "keywords": [keyword, following],
                })
    return entries


def _config(**changes: Any) -> CreativeConfig:
    # 24 drawings per creator and keyword; 23 leaves room for at most one preferred download.
    settings = {"creatives": 20, "projects": (3, 4), "min_creator_drawings": 30, "min_held_out_preferred": 23, "seed": 3}
    return CreativeConfig(**{**settings, **changes})


def test_held_out_keywords_keep_enough_preferred() -> None:
    config = _config()
    market = simulate_creatives(_catalogue(), config, end_time=1.7e9)

    downloaded: dict[str, set[str]] = {}
    for event in market.downloads:
        downloaded.setdefault(event["user_id"], set()).add(event["image_id"])
    assert len(market.held_out) == config.creatives
    for user_id, keywords in market.held_out.items():
        preferred = set(market.user_creators[user_id])
        for keyword in keywords:
            pool = [image for image in market.keyword_images[keyword] if image not in downloaded.get(user_id, set())]
            count = sum(market.image_creator[image] in preferred for image in pool)
            assert count >= config.min_held_out_preferred, (user_id, keyword, count)


def test_held_out_projects_write_no_events() -> None:
    market = simulate_creatives(_catalogue(), _config(), end_time=1.7e9)

    for event in market.searches:
        assert event["query"] not in market.held_out[event["user_id"]]
        assert event["query"] in market.user_projects[event["user_id"]]


def test_events_belong_to_kept_creatives() -> None:
    # Dropped creatives must leave no events behind.
    market = simulate_creatives(_catalogue(), _config(), end_time=1.7e9)

    users = {event["user_id"] for event in [*market.searches, *market.downloads]}
    assert users == set(market.user_creators)
    search_ids = {event["search_id"] for event in market.searches}
    assert {event["search_id"] for event in market.downloads} <= search_ids


def test_user_prefix_names_users() -> None:
    market = simulate_creatives(_catalogue(), _config(creatives=3, user_prefix="trainer"), end_time=1.7e9)

    assert sorted(market.user_creators) == ["trainer-0000", "trainer-0001", "trainer-0002"]


def test_unreachable_minimum_raises() -> None:
    from stylestream.models.datasets.creatives import SimulationError

    with pytest.raises(SimulationError):
        simulate_creatives(_catalogue(), _config(min_held_out_preferred=100), end_time=1.7e9)
