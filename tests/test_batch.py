"""The batch state builder agrees with the stream's per-event updates."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings

from stylestream.models.batch import EventLog, build_states
from stylestream.models.preference import PreferenceParams, user_vector
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

    batch = build_states(_log(events), vectors, params, DIM).states

    assert batch.keys() == incremental.keys()
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
