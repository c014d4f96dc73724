"""Property and unit tests of the preference update math."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import reference_vectors
from stylestream.models.preference import (
    PreferenceParams,
    UserState,
    apply_download,
    apply_search,
    decay_factor,
    user_vector,
)

DIM = 8
DAY = 86400.0


def _apply(events: list[tuple[str, dict]], vectors: dict[str, np.ndarray], params: PreferenceParams) -> dict[str, UserState]:
    states: dict[str, UserState] = {}
    for kind, event in events:
        state = states.setdefault(event["user_id"], UserState.empty(event["user_id"], DIM))
        if kind == "search":
            apply_search(state, event["search_id"], event["timestamp"], event["results"], vectors, params)
        else:
            apply_download(state, event["image_id"], event["timestamp"], vectors[event["image_id"]], event.get("search_id"), params, vectors)
    return states


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[tuple[str, dict]], dict[str, np.ndarray], int]:
    """Draw a small marketplace: image vectors, searches and downloads of a few users, and a shuffle seed."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    images = [f"i{n}" for n in range(draw(st.integers(4, 20)))]
    vectors = {image: rng.normal(size=DIM) for image in images}
    events: list[tuple[str, dict]] = []
    for search_number in range(draw(st.integers(1, 12))):
        user = f"u{int(rng.integers(0, 3))}"
        search_id = f"s{search_number}"
        results = list(rng.choice(images, size=int(rng.integers(1, len(images) + 1)), replace=False))
        t = float(rng.uniform(0, 200 * DAY))
        if rng.random() < 0.9:
            events.append(("search", {"user_id": user, "search_id": search_id, "timestamp": t, "results": results}))
        for _ in range(int(rng.integers(0, 4))):
            image = str(rng.choice(results)) if rng.random() < 0.8 else str(rng.choice(images))
            events.append(("download", {"user_id": user, "image_id": image, "timestamp": t + float(rng.uniform(0, 3 * DAY)), "search_id": search_id}))
    for _ in range(draw(st.integers(0, 5))):
        events.append(("download", {"user_id": "u0", "image_id": str(rng.choice(images)), "timestamp": float(rng.uniform(0, 200 * DAY))}))
    return events, vectors, seed


@settings(max_examples=200, deadline=None)
@given(streams())
def test_final_state_ignores_arrival_order(case: tuple[list[tuple[str, dict]], dict[str, np.ndarray], int]) -> None:
    events, vectors, seed = case
    params = PreferenceParams(impression_weight=0.1, half_life_days=10.0)
    in_order = _apply(events, vectors, params)
    shuffled_events = list(events)
    random.Random(seed).shuffle(shuffled_events)
    shuffled = _apply(shuffled_events, vectors, params)

    assert in_order.keys() == shuffled.keys()
    for user, state in in_order.items():
        expected, actual = user_vector(state), user_vector(shuffled[user])
        assert (expected is None) == (actual is None)
        if expected is not None:
            assert np.max(np.abs(expected - actual)) <= 1e-5
        assert state.event_count == shuffled[user].event_count
        assert state.recent_downloads == shuffled[user].recent_downloads


@settings(max_examples=200, deadline=None)
@given(streams())
def test_incremental_state_matches_batch_reference(case: tuple[list[tuple[str, dict]], dict[str, np.ndarray], int]) -> None:
    events, vectors, _ = case
    params = PreferenceParams(impression_weight=0.1, half_life_days=10.0)
    states = _apply(events, vectors, params)
    expected = reference_vectors(
        [event for kind, event in events if kind == "download"],
        [event for kind, event in events if kind == "search"],
        vectors, half_life_days=10.0, impression_weight=0.1,
    )
    for user, state in states.items():
        served = user_vector(state)
        if user not in expected:
            assert served is None
        else:
            assert np.max(np.abs(served - expected[user])) <= 1e-5


def test_decay_halves_weight_after_half_life() -> None:
    assert decay_factor(30 * DAY, 30 * DAY) == pytest.approx(0.5)
    assert decay_factor(60 * DAY, 30 * DAY) == pytest.approx(0.25)
    assert decay_factor(0.0, 30 * DAY) == 1.0


def test_decay_weights_downloads_by_age() -> None:
    params = PreferenceParams(half_life_days=30.0)
    state = UserState.empty("u", 2)
    apply_download(state, "old", 0.0, np.array([1.0, 0.0]), None, params)
    apply_download(state, "new", 30 * DAY, np.array([0.0, 1.0]), None, params)

    assert state.vector == pytest.approx([0.5, 1.0])
    assert state.positive_mass == pytest.approx(1.5)
    assert state.t_ref == 30 * DAY


def test_user_without_download_has_no_vector() -> None:
    params = PreferenceParams()
    state = UserState.empty("u", 2)
    apply_search(state, "s1", 10.0, ["a", "b"], {"a": np.ones(2), "b": np.ones(2)}, params)

    assert user_vector(state) is None
    assert state.event_count == 1


def test_download_before_search_applies_negatives_once() -> None:
    params = PreferenceParams(impression_weight=0.5)
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])}
    state = UserState.empty("u", 2)
    apply_download(state, "a", 5.0, vectors["a"], "s1", params, vectors)
    apply_search(state, "s1", 5.0, ["a", "b"], vectors, params)
    apply_search(state, "s1", 5.0, ["a", "b"], vectors, params)

    assert state.vector == pytest.approx([1.0, -0.5])


def test_second_download_takes_back_its_negative() -> None:
    params = PreferenceParams(impression_weight=0.5)
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])}
    state = UserState.empty("u", 2)
    apply_search(state, "s1", 5.0, ["a", "b"], vectors, params)
    apply_download(state, "a", 5.0, vectors["a"], "s1", params, vectors)
    apply_download(state, "b", 5.0, vectors["b"], "s1", params, vectors)

    assert state.vector == pytest.approx([1.0, 1.0])


def test_state_dict_round_trip_keeps_everything() -> None:
    params = PreferenceParams()
    vectors = {"a": np.array([1.0, 2.0]), "b": np.array([0.5, 0.0])}
    state = UserState.empty("u", 2)
    apply_search(state, "s1", 1.0, ["a", "b"], vectors, params)
    apply_download(state, "a", 2.0, vectors["a"], "s1", params, vectors)
    state.applied_offsets["downloads:0"] = 7

    restored = UserState.from_dict(state.to_dict())

    assert restored.to_dict() == state.to_dict()
    assert np.array_equal(restored.vector, state.vector)


def test_state_dict_unchanged_by_later_updates() -> None:
    params = PreferenceParams()
    vectors = {"a": np.array([1.0, 2.0]), "b": np.array([0.5, 0.0])}
    state = UserState.empty("u", 2)
    apply_download(state, "a", 1.0, vectors["a"], "s1", params, vectors)
    stored = state.to_dict()
    expected = orjson.loads(orjson.dumps(stored))

    apply_search(state, "s1", 1.0, ["a", "b"], vectors, params)
    apply_download(state, "b", 2.0, vectors["b"], "s1", params, vectors)
    apply_download(state, "a", 3.0, vectors["a"], None, params)
    state.applied_offsets["downloads:0"] = 9
    state.remember_event("e9", 64)

    assert orjson.loads(orjson.dumps(stored)) == expected


def test_recent_downloads_stay_sorted() -> None:
    params = PreferenceParams(max_recent_downloads=4)
    state = UserState.empty("u", 2)
    history = [(5.0, "e"), (1.0, "a"), (3.0, "c"), (3.0, "b"), (2.0, "a"), (6.0, "c"), (0.5, "z"), (4.0, "d")]
    for t, image in history:
        apply_download(state, image, t, np.ones(2), None, params)

    assert state.recent_downloads == [(6.0, "c"), (5.0, "e"), (4.0, "d"), (3.0, "b")]


def test_update_leaves_caller_vectors_untouched() -> None:
    params = PreferenceParams()
    image = np.array([1.0, 2.0])
    state = UserState.empty("u", 2)
    apply_download(state, "a", 1.0, image, None, params)
    apply_download(state, "b", 2.0, image, None, params)

    assert image.tolist() == [1.0, 2.0]


def test_recent_downloads_list_each_image_once() -> None:
    params = PreferenceParams()
    state = UserState.empty("u", 2)
    for t, image in [(1.0, "a"), (3.0, "a"), (2.0, "b"), (0.5, "a")]:
        apply_download(state, image, t, np.ones(2), None, params)

    assert state.recent_downloads == [(3.0, "a"), (2.0, "b")]


def test_recent_downloads_are_bounded_newest_first() -> None:
    params = PreferenceParams(max_recent_downloads=2)
    state = UserState.empty("u", 2)
    for t, image in [(3.0, "c"), (1.0, "a"), (2.0, "b")]:
        apply_download(state, image, t, np.ones(2), None, params)

    assert state.recent_download_ids() == ["c", "b"]


@pytest.mark.parametrize("field,value", [("half_life_days", 0.0), ("download_weight", -1.0), ("impression_weight", float("nan"))])
def test_params_reject_invalid_values(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        PreferenceParams(**{field: value})
