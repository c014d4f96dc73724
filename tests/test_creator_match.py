"""Creator-style match figures of the openclipart run, on hand-made truths."""

from __future__ import annotations

from typing import Any

import pytest

from stylestream.models.datasets.creator_match import creator_match_at_k


def _truth() -> dict[str, Any]:
    # Keyword "cat" has 4 drawings: 2 by the preferred creator "ann", 2 by "bob".
    return {
        "user_creators": {"u1": ["ann"]},
        "image_creator": {"a1": "ann", "a2": "ann", "b1": "bob", "b2": "bob"},
        "image_categories": {"a1": ["animals"], "a2": ["animals"], "b1": ["people"], "b2": ["animals"]},
        "keyword_images": {"cat": ["a1", "a2", "b1", "b2"]},
    }


def test_match_chance_and_best() -> None:
    figures = creator_match_at_k({"u1": {"cat": ["a1", "b1"]}}, {"u1": ["a1", "b1"]}, _truth(), k=2)

    assert figures["style_match_at_2"] == 0.5
    assert figures["chance_style_match_at_2"] == 0.5
    assert figures["best_style_match_at_2"] == 1.0
    assert figures["style_match_share_of_best_at_2"] == 0.5
    assert figures["distinct_categories_at_2"] == 2.0


def test_excluded_drawings_leave_pool() -> None:
    # The user downloaded a1, so the recommender can show only one drawing by ann.
    figures = creator_match_at_k({"u1": {"cat": ["a2", "b1"]}}, {"u1": ["a2"]}, _truth(), k=2, excluded={"u1": {"a1"}})

    assert figures["chance_style_match_at_2"] == pytest.approx(1 / 3, abs=1e-4)
    assert figures["best_style_match_at_2"] == 0.5
    assert figures["style_match_share_of_best_at_2"] == 1.0


def test_empty_pool_is_skipped() -> None:
    everything = {"u1": {"a1", "a2", "b1", "b2"}}

    figures = creator_match_at_k({"u1": {"cat": ["a1"]}}, {}, _truth(), k=2, excluded=everything)

    assert figures["held_out_projects_evaluated"] == 0
    assert figures["style_match_share_of_best_at_2"] == 0.0
