"""Incremental user style preference: one update function per event kind, in numpy.

A user's state is a decayed sum of image style vectors. Each contribution made at event time t
counts 2 ** (-(t_ref - t) / half_life), where t_ref is the newest event time the state has seen, so
the state is the same whatever order the events arrive in (up to floating-point rounding):

- a download adds the image's style vector with weight `download_weight`;
- once a search has led to at least one download, every result of it the user did not download adds
  its style vector with weight `-impression_weight`, at the search's event time. A download may
  arrive before its search: the state remembers it and applies the negatives when the search comes.

The served vector is the normalised sum. A user without positive mass (no download) has no vector.

>>> import numpy as np
>>> params = PreferenceParams(half_life_days=30.0)
>>> state = UserState.empty("u1", dim=2)
>>> apply_download(state, "img-a", 0.0, np.array([1.0, 0.0]), None, params)
>>> user_vector(state).tolist()
[1.0, 0.0]
"""

from __future__ import annotations

import math
from bisect import insort
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Mapping

import numpy as np

SECONDS_PER_DAY = 86400.0
RECENT_EVENT_IDS = 64


@dataclass(frozen=True)
class PreferenceParams:
    """Weights and decay of the preference update.

    `impression_weight` is the magnitude of the negative weight of a result that was shown but not
    downloaded; about 1 / (results per search) cancels the subject the user searched for.
    `max_tracked_searches` bounds the searches remembered per user for linking downloads to them.
    """

    download_weight: float = 1.0
    impression_weight: float = 0.05
    half_life_days: float = 30.0
    max_recent_downloads: int = 200
    max_tracked_searches: int = 128

    def __post_init__(self) -> None:
        if not (self.half_life_days > 0 and math.isfinite(self.half_life_days)):
            raise ValueError(f"half_life_days must be a positive number of days, got {self.half_life_days!r}")
        if not (self.download_weight > 0 and math.isfinite(self.download_weight)):
            raise ValueError(f"download_weight must be positive, got {self.download_weight!r}")
        if not (self.impression_weight >= 0 and math.isfinite(self.impression_weight)):
            raise ValueError(f"impression_weight must be zero or positive, got {self.impression_weight!r}")

    @property
    def half_life_seconds(self) -> float:
        """Return the half-life in seconds."""
        return self.half_life_days * SECONDS_PER_DAY


def decay_factor(age_seconds: float | np.ndarray, half_life_seconds: float) -> float | np.ndarray:
    """Return 2 ** (-age / half_life): the weight left of a contribution `age_seconds` old."""
    return np.exp2(-np.asarray(age_seconds, dtype=np.float64) / half_life_seconds)


# A search remembered for linking downloads to it: (timestamp, results, downloaded). `results` is
# None while only downloads naming the search have arrived, and `downloaded` lists the images
# downloaded from it. Negatives are in the sum exactly when both are present. Links are plain tuples,
# replaced and never changed in place, so `UserState.to_dict` can share them with the table value
# and orjson writes them as JSON arrays.
SearchLink = tuple[float | None, list[str] | None, tuple[str, ...]]
NO_LINK: SearchLink = (None, None, ())


@dataclass
class UserState:
    """A user's decayed preference sum and the bookkeeping that keeps updates order-independent."""

    user_id: str
    vector: np.ndarray
    t_ref: float | None = None
    positive_mass: float = 0.0
    event_count: int = 0
    last_event_time: float | None = None
    recent_downloads: list[tuple[float, str]] = field(default_factory=list)
    searches: dict[str, SearchLink] = field(default_factory=dict)
    applied_offsets: dict[str, int] = field(default_factory=dict)
    recent_event_ids: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls, user_id: str, dim: int) -> "UserState":
        """Create the state of a user with no events."""
        return cls(user_id=user_id, vector=np.zeros(dim, dtype=np.float64))

    def to_dict(self) -> dict[str, Any]:
        """Convert to JSON types for the table changelog: tuples become arrays, as lists do.

        The dict's containers are copies. What they share with the state (links, download entries,
        result lists) the update functions never change in place.
        """
        return {
            "user_id": self.user_id,
            "vector": self.vector.tolist(),
            "t_ref": self.t_ref,
            "positive_mass": self.positive_mass,
            "event_count": self.event_count,
            "last_event_time": self.last_event_time,
            "recent_downloads": list(self.recent_downloads),
            "searches": dict(self.searches),
            "applied_offsets": dict(self.applied_offsets),
            "recent_event_ids": list(self.recent_event_ids),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UserState":
        """Rebuild a state from `to_dict` output."""
        return cls(
            user_id=data["user_id"],
            vector=np.asarray(data["vector"], dtype=np.float64),
            t_ref=data["t_ref"],
            positive_mass=data["positive_mass"],
            event_count=data["event_count"],
            last_event_time=data["last_event_time"],
            recent_downloads=[(t, image_id) for t, image_id in data["recent_downloads"]],
            searches={
                search_id: (timestamp, results, tuple(downloaded))
                for search_id, (timestamp, results, downloaded) in data["searches"].items()
            },
            applied_offsets=dict(data["applied_offsets"]),
            recent_event_ids=list(data.get("recent_event_ids", [])),
        )

    def remember_event(self, event_id: str, bound: int) -> bool:
        """Record an event id among the last `bound`; return False when it was already there."""
        if event_id in self.recent_event_ids:
            return False
        self.recent_event_ids.append(event_id)
        del self.recent_event_ids[:-bound]
        return True

    def recent_download_ids(self) -> list[str]:
        """Return the recently downloaded image ids, newest first."""
        return [image_id for _, image_id in self.recent_downloads]


def _add(state: UserState, weight: float, timestamp: float, vector: np.ndarray, params: PreferenceParams) -> None:
    """Add weight * vector at event time `timestamp`, moving t_ref forward when the event is newer."""
    _add_sum(state, weight, timestamp, vector, params)


def _add_sum(state: UserState, weight: float, timestamp: float, vector_sum: np.ndarray, params: PreferenceParams) -> None:
    """Add weight * vector_sum at event time `timestamp`; `vector_sum` may sum several vectors of that time."""
    # Scalar math.exp2 instead of decay_factor: numpy's scalar overhead dominated the per-event cost.
    half_life = params.half_life_seconds
    if state.t_ref is None:
        state.t_ref = timestamp
    elif timestamp > state.t_ref:
        shrink = math.exp2(-(timestamp - state.t_ref) / half_life)
        state.vector *= shrink
        state.positive_mass *= shrink
        state.t_ref = timestamp
    state.vector += (weight * math.exp2(-(state.t_ref - timestamp) / half_life)) * vector_sum


def _newest_first(item: tuple[float, str]) -> tuple[float, str]:
    return -item[0], item[1]


def _count_event(state: UserState, timestamp: float) -> None:
    state.event_count += 1
    if state.last_event_time is None or timestamp > state.last_event_time:
        state.last_event_time = timestamp


def _apply_negatives(
    state: UserState, link: SearchLink, skip: set[str], vectors: Mapping[str, np.ndarray], params: PreferenceParams
) -> None:
    timestamp, results, _ = link
    if params.impression_weight == 0 or results is None or timestamp is None:
        return
    # Every negative has the search's event time, so one decayed add of their sum is the same update.
    ignored = [vectors[image_id] for image_id in results if image_id not in skip]
    if ignored:
        _add_sum(state, -params.impression_weight, timestamp, np.add.reduce(ignored), params)


def _bound_searches(state: UserState, params: PreferenceParams) -> None:
    """Forget the oldest searches beyond `max_tracked_searches` (their contributions stay in the sum)."""
    excess = len(state.searches) - params.max_tracked_searches
    if excess <= 0:
        return
    # NOTE: a download that arrives after its search was forgotten gets no negatives, so order
    # independence holds only while each user has at most `max_tracked_searches` open searches.
    by_age = sorted(state.searches.items(), key=lambda item: (item[1][0] or 0.0, item[0]))
    for search_id, _ in by_age[:excess]:
        del state.searches[search_id]


def apply_download(
    state: UserState,
    image_id: str,
    timestamp: float,
    image_vector: np.ndarray,
    search_id: str | None,
    params: PreferenceParams,
    result_vectors: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Apply a download: add the image with the download weight and settle its search's negatives.

    `result_vectors` must hold the style vector of every result of the linked search when that
    search is already in the state (see `vectors_needed_for_download`).
    """
    _add(state, params.download_weight, timestamp, image_vector, params)
    state.positive_mass += params.download_weight * math.exp2(-(state.t_ref - timestamp) / params.half_life_seconds)
    _count_event(state, timestamp)

    # Each image appears once, at its newest download time, so repeats do not crowd out others. The
    # list stays sorted newest first, so a new entry is inserted in place rather than re-sorted.
    recent = state.recent_downloads
    ids = list(map(itemgetter(1), recent))
    position = ids.index(image_id) if image_id in ids else None
    if position is None or timestamp > recent[position][0]:
        if position is not None:
            del recent[position]
        insort(recent, (timestamp, image_id), key=_newest_first)
        del recent[params.max_recent_downloads:]

    if search_id is None:
        return
    link = state.searches.get(search_id, NO_LINK)
    search_time, results, downloaded = link
    if image_id in downloaded:
        return
    if results is not None and search_time is not None:
        if not downloaded:
            _apply_negatives(state, link, {image_id}, result_vectors or {}, params)
        elif image_id in results and params.impression_weight:
            # The image was counted as an ignored impression by an earlier download; take that back.
            _add(state, params.impression_weight, search_time, image_vector, params)
    state.searches[search_id] = (search_time, results, downloaded + (image_id,))
    _bound_searches(state, params)


def apply_search(
    state: UserState,
    search_id: str,
    timestamp: float,
    results: list[str],
    result_vectors: Mapping[str, np.ndarray],
    params: PreferenceParams,
) -> None:
    """Apply a search: remember its results and, if downloads already named it, add its negatives.

    Results without a style vector in `result_vectors` (images not yet known) are dropped. A search
    id seen before with results is a duplicate and changes nothing.
    """
    _count_event(state, timestamp)
    _, known_results, downloaded = state.searches.get(search_id, NO_LINK)
    if known_results is not None:
        return
    link = (timestamp, [image_id for image_id in results if image_id in result_vectors], downloaded)
    state.searches[search_id] = link
    if downloaded:
        _apply_negatives(state, link, set(downloaded), result_vectors, params)
    _bound_searches(state, params)


def vectors_needed_for_download(state: UserState, search_id: str | None) -> list[str]:
    """Return the image ids whose vectors `apply_download` needs for the linked search."""
    if search_id is None:
        return []
    _, results, downloaded = state.searches.get(search_id, NO_LINK)
    if results is None or downloaded:
        return []
    return list(results)


def user_vector(state: UserState, min_mass: float = 1e-12) -> np.ndarray | None:
    """Return the served style vector: the normalised decayed sum, or None without positive mass."""
    if state.positive_mass <= min_mass:
        return None
    norm = float(np.linalg.norm(state.vector))
    if not math.isfinite(norm) or norm <= 1e-12:
        return None
    return state.vector / norm
