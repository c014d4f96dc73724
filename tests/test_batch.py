"""The batch state builder agrees with the stream's per-event updates."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings

from stylestream.models.batch import EventLog, build_states
from stylestream.models.preference import PreferenceParams, user_vector
from stylestream.streams.replay import user_payloads
from stylestream.streams.sink import user_payload
from test_preference import DIM, _apply, streams


def _log(events: list[tuple[str, dict]]) -> EventLog:
    log = EventLog()
    for offset, (kind, event) in enumerate(events):
        fields = {"event_id": f"e{offset}", **event}
        if kind == "search":
            log.add_search(fields, "searches:0", offset)
        else:
            log.add_download(fields, "downloads:0", offset)
    return log


@settings(max_examples=150, deadline=None)
@given(streams())
def test_batch_matches_incremental_updates(case: tuple[list[tuple[str, dict]], dict[str, np.ndarray], int]) -> None:
    events, vectors, _ = case
    params = PreferenceParams(impression_weight=0.1, half_life_days=10.0)
    incremental = _apply(events, vectors, params)

    result = build_states(_log(events), vectors, params, DIM)
    batch = result.states

    assert batch.keys() == incremental.keys()
    served_rows, served = result.served_vectors()
    for row, vector in zip(served_rows.tolist(), served):
        assert np.max(np.abs(vector - user_vector(batch[result.users[row]]))) <= 1e-12
    assert len(served_rows) == sum(user_vector(state) is not None for state in batch.values())
    for user, state in incremental.items():
        expected, actual = user_vector(state), user_vector(batch[user])
        assert (expected is None) == (actual is None), user
        if expected is not None:
            assert np.max(np.abs(expected - actual)) <= 1e-5
        assert batch[user].event_count == state.event_count
        assert batch[user].last_event_time == state.last_event_time
        assert batch[user].recent_downloads == state.recent_downloads
        if state.t_ref is not None and batch[user].t_ref is not None:
            # The two may keep their sums at different reference times; bring the batch one to the stream's.
            shift = np.exp2(-(state.t_ref - batch[user].t_ref) / params.half_life_seconds)
            assert abs(batch[user].positive_mass * shift - state.positive_mass) <= 1e-9 * max(1.0, state.positive_mass)
            assert np.max(np.abs(batch[user].vector * shift - state.vector)) <= 1e-9 * max(1.0, np.max(np.abs(state.vector)))


def test_repeated_event_id_counts_once() -> None:
    log = EventLog()
    download = {"event_id": "same", "user_id": "u", "image_id": "a", "timestamp": 10.0}
    log.add_download(download, "downloads:0", 0)
    log.add_download(download, "downloads:0", 1)

    result = build_states(log, {"a": np.array([1.0, 0.0])}, PreferenceParams(), 2)

    assert result.states["u"].event_count == 1
    assert result.download_counts == {"a": 1}
    assert result.states["u"].applied_offsets == {"downloads:0": 0}


def test_unknown_image_download_is_dropped() -> None:
    log = EventLog()
    log.add_download({"event_id": "e1", "user_id": "u", "image_id": "missing", "timestamp": 10.0}, "downloads:0", 0)

    assert build_states(log, {"a": np.array([1.0, 0.0])}, PreferenceParams(), 2).states == {}


def test_hand_over_bookkeeping() -> None:
    log = EventLog()
    log.add_search({"event_id": "e1", "user_id": "u", "search_id": "s1", "timestamp": 10.0, "results": ["a", "b", "gone"]}, "searches:0", 4)
    log.add_search({"event_id": "e2", "user_id": "u", "search_id": "s1", "timestamp": 30.0, "results": ["b"]}, "searches:0", 9)
    log.add_download({"event_id": "e3", "user_id": "u", "image_id": "a", "timestamp": 20.0, "search_id": "s1"}, "downloads:1", 2)
    log.add_download({"event_id": "e4", "user_id": "u", "image_id": "a", "timestamp": 25.0, "search_id": "s1"}, "downloads:1", 7)
    log.add_download({"event_id": "e5", "user_id": "u", "image_id": "b", "timestamp": 5.0, "search_id": "s0"}, "downloads:1", 8)
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])}

    state = build_states(log, vectors, PreferenceParams(), 2).states["u"]

    assert list(state.searches) == ["s0", "s1"]
    assert state.searches["s0"] == (None, None, ("b",))
    assert state.searches["s1"] == (10.0, ["a", "b"], ("a",))
    assert state.applied_offsets == {"searches:0": 9, "downloads:1": 8}
    assert state.recent_event_ids == ["e1", "e2", "e3", "e4", "e5"]
    assert state.recent_downloads == [(25.0, "a"), (5.0, "b")]
    assert state.event_count == 5


def test_replay_payload_equals_sink_payload() -> None:
    log = EventLog()
    for offset, (user, image) in enumerate([("u1", "a"), ("u2", "b"), ("u1", "b"), ("u3", "missing")]):
        log.add_download({"event_id": f"e{offset}", "user_id": user, "image_id": image, "timestamp": 10.0 + offset}, "downloads:0", offset)
    batch = build_states(log, {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])}, PreferenceParams(), 2)

    payloads = user_payloads(batch, list(range(len(batch.users))), "v1", 99.0)

    assert payloads == [user_payload(batch.states[user], "v1", 99.0) for user in batch.users]
