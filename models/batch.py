"""Batch computation of user states from a whole event log, with the stream's update semantics.

`build_states` gives every user the UserState that the stream's per-event functions
(`apply_download`, `apply_search`) reach on the same events. That is the same decayed sum of
downloads and of ignored search results, and the same positive mass, event count, recent
downloads, remembered searches and applied offsets. Every step runs on numpy arrays of integer
codes (ids are interned once), and the sums are one sparse matrix product, so a replay runs at
transport speed instead of one Python update per event. The UserState objects themselves, which
only the hand-over to a live worker needs, are built on first access of `BatchResult.states`.

Where the stream's result depends on arrival order, the batch takes one defined order: every
search in log order, then every download in log order. In that order:
- a repeated event id of a user counts once, the first (the stream rejects a repeat among the
  user's last 64 event ids);
- a search id seen twice keeps the first search's results;
- unknown images are dropped from downloads and search results as of the end of the log (the
  stream drops them as of each event's arrival);
- every search is remembered while computing negatives; the stream forgets searches beyond
  `max_tracked_searches`, so results agree while users stay within that bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain, compress, repeat
from operator import is_not
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch

from stylestream.models.preference import RECENT_EVENT_IDS, PreferenceParams, SearchLink, UserState

# `user_vector`'s thresholds: below them a user has no served vector.
MIN_POSITIVE_MASS = 1e-12
MIN_NORM = 1e-12


@dataclass
class EventLog:
    """Validated downloads and searches in log order, as parallel columns.

    `sources` name the topic-partition ("downloads:3") and `offsets` the offset of each event.
    """

    download_users: list[str] = field(default_factory=list)
    download_images: list[str] = field(default_factory=list)
    download_times: list[float] = field(default_factory=list)
    download_searches: list[str | None] = field(default_factory=list)
    download_events: list[str] = field(default_factory=list)
    download_sources: list[str] = field(default_factory=list)
    download_offsets: list[int] = field(default_factory=list)
    search_users: list[str] = field(default_factory=list)
    search_ids: list[str] = field(default_factory=list)
    search_times: list[float] = field(default_factory=list)
    search_results: list[list[str]] = field(default_factory=list)
    search_events: list[str] = field(default_factory=list)
    search_sources: list[str] = field(default_factory=list)
    search_offsets: list[int] = field(default_factory=list)

    def add_download(self, fields: Mapping, source: str, offset: int) -> None:
        """Append a validated download."""
        self.download_users.append(fields["user_id"])
        self.download_images.append(fields["image_id"])
        self.download_times.append(fields["timestamp"])
        self.download_searches.append(fields.get("search_id"))
        self.download_events.append(fields["event_id"])
        self.download_sources.append(source)
        self.download_offsets.append(offset)

    def add_search(self, fields: Mapping, source: str, offset: int) -> None:
        """Append a validated search."""
        self.search_users.append(fields["user_id"])
        self.search_ids.append(fields["search_id"])
        self.search_times.append(fields["timestamp"])
        self.search_results.append(fields["results"])
        self.search_events.append(fields["event_id"])
        self.search_sources.append(source)
        self.search_offsets.append(offset)

    def extend_downloads(self, columns: Mapping[str, Sequence[Any]], source: str, offsets: Sequence[int]) -> None:
        """Append validated downloads of one topic-partition, given as columns named like the fields."""
        self.download_users.extend(columns["user_id"])
        self.download_images.extend(columns["image_id"])
        self.download_times.extend(columns["timestamp"])
        self.download_searches.extend(columns["search_id"])
        self.download_events.extend(columns["event_id"])
        self.download_sources.extend(repeat(source, len(offsets)))
        self.download_offsets.extend(offsets)

    def extend_searches(self, columns: Mapping[str, Sequence[Any]], source: str, offsets: Sequence[int]) -> None:
        """Append validated searches of one topic-partition, given as columns named like the fields."""
        self.search_users.extend(columns["user_id"])
        self.search_ids.extend(columns["search_id"])
        self.search_times.extend(columns["timestamp"])
        self.search_results.extend(columns["results"])
        self.search_events.extend(columns["event_id"])
        self.search_sources.extend(repeat(source, len(offsets)))
        self.search_offsets.extend(offsets)

    def extend(self, other: "EventLog") -> None:
        """Append every event of `other`."""
        for name in vars(self):
            getattr(self, name).extend(getattr(other, name))

    def __len__(self) -> int:
        return len(self.download_users) + len(self.search_users)


def _intern(values: Sequence[Hashable]) -> tuple[list[Any], np.ndarray]:
    """Return the distinct values in order of first appearance, and each value's index among them."""
    distinct = list(dict.fromkeys(values))
    index = dict(zip(distinct, range(len(distinct))))
    return distinct, np.fromiter(map(index.__getitem__, values), dtype=np.int64, count=len(values))


def _take(values: Sequence[Any], indices: np.ndarray) -> list[Any]:
    return list(map(values.__getitem__, indices.tolist()))


def _pair_key(first: np.ndarray, second: np.ndarray, second_size: int) -> np.ndarray:
    """Combine two code arrays into one int64 key per row that orders by `first`, then `second`."""
    if (int(first.max(initial=0)) + 1) * max(second_size, 1) >= 2**63:
        raise OverflowError(f"{second_size} codes per group overflow a 64-bit key; the log is too large for one batch")
    return first * max(second_size, 1) + second


def _first_occurrences(keys: np.ndarray) -> np.ndarray:
    """Return a mask that is True at the first occurrence of each key."""
    _, first = np.unique(keys, return_index=True)  # return_index sorts stably, so `first` is the earliest
    mask = np.zeros(len(keys), dtype=bool)
    mask[first] = True
    return mask


def _last_of_runs(sorted_keys: np.ndarray) -> np.ndarray:
    """Return a mask that is True at the last row of each run of equal keys in a sorted array."""
    return np.r_[sorted_keys[1:] != sorted_keys[:-1], True] if len(sorted_keys) else np.zeros(0, dtype=bool)


def _group_bounds(sorted_groups: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the start and end row of each group 0..groups-1 in an array sorted by group."""
    numbers = np.arange(groups)
    return np.searchsorted(sorted_groups, numbers, "left"), np.searchsorted(sorted_groups, numbers, "right")


@dataclass
class _Accepted:
    """Accepted events as arrays over the event sequence: every search, then every download of a known image.

    Both parts are in log order, so the rows of one user keep that order.
    """

    log: EventLog
    users: list[str]
    user: np.ndarray  # user code of every accepted event
    source_row: np.ndarray  # every accepted event's row among searches, or searches + download row
    search_rows: np.ndarray  # accepted searches, as rows of the log's search columns
    download_rows: np.ndarray  # accepted downloads, as rows of the log's download columns
    download_user: np.ndarray
    download_image: np.ndarray
    download_time: np.ndarray


@dataclass
class _Links:
    """Every (user, search id) pair that an accepted search or download names, one row each."""

    user: np.ndarray
    search_ids: list[str]
    timestamp: np.ndarray  # NaN where no accepted search defines the link
    defined: np.ndarray  # links that an accepted search defines
    defining_search: np.ndarray  # that search, as a row of the log's search columns
    download_link: np.ndarray  # the link of every accepted download that names a search
    linked_downloads: np.ndarray  # those downloads, as indexes into the accepted downloads


@dataclass
class BatchResult:
    """Users' states after a log as columns (one row per user), and each image's applied downloads.

    `vectors` are the decayed sums at each user's `t_ref`, which is NaN for a user with no
    contribution (their vector is zero). `recent` lists each user's recent downloads, newest first.
    """

    users: list[str]
    vectors: np.ndarray
    t_ref: np.ndarray
    positive_mass: np.ndarray
    event_counts: np.ndarray
    last_event_times: np.ndarray
    recent: list[list[tuple[float, str]]]
    download_counts: dict[str, int]
    params: PreferenceParams
    images: list[str]
    accepted: _Accepted
    links: _Links

    def served_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the rows of users with a served vector and those vectors, as `user_vector` computes them."""
        norms = np.linalg.norm(self.vectors, axis=1)
        served = np.flatnonzero((self.positive_mass > MIN_POSITIVE_MASS) & np.isfinite(norms) & (norms > MIN_NORM))
        return served, self.vectors[served] / norms[served, None]

    @cached_property
    def states(self) -> dict[str, UserState]:
        """Return every user's UserState, with the bookkeeping the stream keeps, built on first access."""
        searches = _remembered_searches(self.accepted, self.links, self.images, len(self.users), self.params.max_tracked_searches)
        offsets = _applied_offsets(self.accepted, len(self.users))
        event_ids = _last_per_user(
            self.accepted.user, _take(self.accepted.log.search_events + self.accepted.log.download_events, self.accepted.source_row),
            len(self.users), RECENT_EVENT_IDS,
        )
        states = {}
        for number, user_id in enumerate(self.users):
            has_contribution = not np.isnan(self.t_ref[number])
            states[user_id] = UserState(
                user_id=user_id,
                vector=self.vectors[number].copy(),
                t_ref=float(self.t_ref[number]) if has_contribution else None,
                positive_mass=float(self.positive_mass[number]),
                event_count=int(self.event_counts[number]),
                last_event_time=float(self.last_event_times[number]),
                recent_downloads=self.recent[number],
                searches=searches[number],
                applied_offsets=offsets[number],
                recent_event_ids=event_ids[number],
            )
        return states


def _ranks(values: list[str]) -> np.ndarray:
    """Return each string's rank in sorted order."""
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[sorted(range(len(values)), key=values.__getitem__)] = np.arange(len(values))
    return ranks


def _contains(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Return whether each query is in `sorted_keys`; fast when the queries are nearly sorted too."""
    if not len(sorted_keys):
        return np.zeros(len(queries), dtype=bool)
    found = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return sorted_keys[found] == queries


def build_states(
    log: EventLog, image_vectors: Mapping[str, np.ndarray], params: PreferenceParams, style_dim: int
) -> BatchResult:
    """Return every user's state after all events of `log`, as the stream would compute it."""
    images = list(image_vectors)
    image_index = dict(zip(images, range(len(images))))
    accepted = _accept(log, image_index)
    links = _link(accepted)
    users = len(accepted.users)

    # Step 1: one row per contribution: the downloads, then the negatives.
    negative_user, negative_image, negative_time = _negatives(accepted, links, image_index, len(images), params)
    rows_user = np.concatenate([accepted.download_user, negative_user])
    rows_image = np.concatenate([accepted.download_image, negative_image])
    times = np.concatenate([accepted.download_time, negative_time])
    weights = np.concatenate([
        np.full(len(accepted.download_user), params.download_weight), np.full(len(negative_user), -params.impression_weight)
    ])

    # Step 2: decay every contribution to its user's newest contribution time, then sum.
    t_ref = np.full(users, -np.inf)
    np.maximum.at(t_ref, rows_user, times)
    decayed = weights * np.exp2(-(t_ref[rows_user] - times) / params.half_life_seconds)
    if images:
        matrix = torch.from_numpy(np.stack([image_vectors[image_id] for image_id in images]).astype(np.float64))
    else:
        matrix = torch.zeros((0, style_dim), dtype=torch.float64)
    # The sums are a sparse (users x images) weight matrix times the dense image matrix.
    weights_matrix = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([rows_user, rows_image])), torch.from_numpy(decayed),
        size=(users, len(images)), dtype=torch.float64, check_invariants=True,
    )
    sums = torch.sparse.mm(weights_matrix, matrix) if len(decayed) else torch.zeros((users, style_dim), dtype=torch.float64)
    positive = weights > 0
    mass = np.bincount(rows_user[positive], weights=decayed[positive], minlength=users)
    t_ref[~np.isfinite(t_ref)] = np.nan

    # Step 3: the payload's bookkeeping and popularity.
    event_time = np.concatenate([np.asarray(log.search_times, dtype=np.float64), np.asarray(log.download_times, dtype=np.float64)])
    last_event_times = np.full(users, -np.inf)
    np.maximum.at(last_event_times, accepted.user, event_time[accepted.source_row])
    counts = np.bincount(accepted.download_image, minlength=len(images))
    return BatchResult(
        users=accepted.users, vectors=sums.numpy(), t_ref=t_ref, positive_mass=mass,
        event_counts=np.bincount(accepted.user, minlength=users), last_event_times=last_event_times,
        recent=_recent_downloads(accepted, images, params.max_recent_downloads),
        download_counts={images[image]: int(counts[image]) for image in np.flatnonzero(counts).tolist()},
        params=params, images=images, accepted=accepted, links=links,
    )


def _accept(log: EventLog, image_index: dict[str, int]) -> _Accepted:
    """Drop downloads of unknown images, then every repeat of a (user, event id) after its first."""
    searches = len(log.search_users)
    download_image = np.fromiter(
        map(image_index.get, log.download_images, repeat(-1)), dtype=np.int64, count=len(log.download_images)
    )
    known_rows = np.flatnonzero(download_image >= 0)
    known = (download_image >= 0).tolist()
    users, user = _intern(log.search_users + list(compress(log.download_users, known)))
    event_ids = log.search_events + list(compress(log.download_events, known))
    if len(set(event_ids)) == len(event_ids):
        first = np.arange(len(event_ids))
    else:
        distinct, event = _intern(event_ids)
        first = np.flatnonzero(_first_occurrences(_pair_key(user, event, len(distinct))))
    source_row = np.concatenate([np.arange(searches), searches + known_rows])[first]
    is_download = first >= searches
    download_rows = source_row[is_download] - searches
    return _Accepted(
        log=log, users=users, user=user[first], source_row=source_row,
        search_rows=source_row[~is_download], download_rows=download_rows, download_user=user[first][is_download],
        download_image=download_image[download_rows],
        download_time=np.asarray(log.download_times, dtype=np.float64)[download_rows],
    )


def _link(accepted: _Accepted) -> _Links:
    """Find the links that accepted searches and downloads name; searches come first, so they define them."""
    log = accepted.log
    download_search = _take(log.download_searches, accepted.download_rows)
    linked = np.flatnonzero(np.fromiter(map(is_not, download_search, repeat(None)), dtype=bool, count=len(download_search)))
    search_ids, search_code = _intern(_take(log.search_ids, accepted.search_rows) + _take(download_search, linked))
    searches = len(accepted.search_rows)
    row_user = np.concatenate([accepted.user[:searches], accepted.download_user[linked]])
    _, first_row, link_of_row = np.unique(_pair_key(row_user, search_code, len(search_ids)), return_index=True, return_inverse=True)
    defined = np.flatnonzero(first_row < searches)
    defining_search = accepted.search_rows[first_row[defined]]
    timestamp = np.full(len(first_row), np.nan)
    timestamp[defined] = np.asarray(log.search_times, dtype=np.float64)[defining_search]
    return _Links(
        user=row_user[first_row], search_ids=_take(search_ids, search_code[first_row]), timestamp=timestamp,
        defined=defined, defining_search=defining_search, download_link=link_of_row[searches:], linked_downloads=linked,
    )


def _defined_results(accepted: _Accepted, links: _Links, image_index: dict[str, int]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return the results of every defined link, flattened in link order, with their image codes and links."""
    result_lists = _take(accepted.log.search_results, links.defining_search)
    lengths = np.fromiter(map(len, result_lists), dtype=np.int64, count=len(result_lists))
    flat_ids = list(chain.from_iterable(result_lists))
    flat_image = np.fromiter(map(image_index.get, flat_ids, repeat(-1)), dtype=np.int64, count=len(flat_ids))
    return flat_ids, flat_image, np.repeat(links.defined, lengths)


def _downloaded_pairs(accepted: _Accepted, links: _Links, images: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the (link, image) key of every linked download, and the indexes of each key's first one."""
    pair = _pair_key(links.download_link, accepted.download_image[links.linked_downloads], images)
    return pair, np.flatnonzero(_first_occurrences(pair))


def _negatives(
    accepted: _Accepted, links: _Links, image_index: dict[str, int], images: int, params: PreferenceParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the negatives as (user, image, time) rows.

    Every known result of a defined link with at least one download, other than the images
    downloaded from it, is a negative at the search's time.
    """
    if params.impression_weight == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    _, flat_image, flat_link = _defined_results(accepted, links, image_index)
    pair, _ = _downloaded_pairs(accepted, links, images)
    has_download = np.bincount(links.download_link, minlength=len(links.user)) > 0
    negative = (flat_image >= 0) & has_download[flat_link]
    negative[negative] = ~_contains(np.sort(pair), _pair_key(flat_link[negative], flat_image[negative], images))
    return links.user[flat_link[negative]], flat_image[negative], links.timestamp[flat_link[negative]]


def _remembered_searches(
    accepted: _Accepted, links: _Links, images: list[str], users: int, bound: int
) -> list[dict[str, SearchLink]]:
    """Return each user's last `bound` links by (search time, search id), as the stream remembers them."""
    known = set(images)
    result_lists = _take(accepted.log.search_results, links.defining_search)
    results: list[list[str] | None] = [None] * len(links.user)
    for link, found in zip(links.defined.tolist(), result_lists):
        results[link] = [image_id for image_id in found if image_id in known]

    _, first_pairs = _downloaded_pairs(accepted, links, len(images))
    order = first_pairs[np.argsort(links.download_link[first_pairs], kind="stable")]
    starts, ends = _group_bounds(links.download_link[order], len(links.user))
    downloaded_ids = _take(images, accepted.download_image[links.linked_downloads][order])

    order = np.lexsort((_ranks(links.search_ids), np.nan_to_num(links.timestamp, nan=0.0), links.user))
    user_starts, user_ends = _group_bounds(links.user[order], users)
    order_list, timestamps = order.tolist(), links.timestamp.tolist()
    remembered = []
    for user_start, user_end in zip(user_starts.tolist(), user_ends.tolist()):
        searches = {}
        for link in order_list[max(user_start, user_end - bound):user_end]:
            timestamp = timestamps[link]
            searches[links.search_ids[link]] = (
                None if np.isnan(timestamp) else timestamp, results[link], tuple(downloaded_ids[starts[link]:ends[link]])
            )
        remembered.append(searches)
    return remembered


def _recent_downloads(accepted: _Accepted, images: list[str], bound: int) -> list[list[tuple[float, str]]]:
    """Return each user's newest download time per image, newest first (ties by image id), at most `bound`."""
    user, image, time = accepted.download_user, accepted.download_image, accepted.download_time
    pair = _pair_key(user, image, len(images))
    by_pair = np.lexsort((time, pair))
    newest = by_pair[_last_of_runs(pair[by_pair])]
    used = np.flatnonzero(np.bincount(image[newest], minlength=len(images)))
    rank = np.zeros(len(images), dtype=np.int64)
    rank[used] = _ranks(_take(images, used))
    order = newest[np.lexsort((rank[image[newest]], -time[newest], user[newest]))]
    starts, ends = _group_bounds(user[order], len(accepted.users))
    pairs = list(zip(time[order].tolist(), _take(images, image[order])))
    return [pairs[start:min(end, start + bound)] for start, end in zip(starts.tolist(), ends.tolist())]


def _applied_offsets(accepted: _Accepted, users: int) -> list[dict[str, int]]:
    """Return each user's highest applied offset per topic-partition."""
    log = accepted.log
    sources, source = _intern(_take(log.search_sources + log.download_sources, accepted.source_row))
    offset = np.asarray(log.search_offsets + log.download_offsets, dtype=np.int64)[accepted.source_row]
    pair = _pair_key(accepted.user, source, len(sources))
    order = np.lexsort((offset, pair))
    last = order[_last_of_runs(pair[order])]
    starts, ends = _group_bounds(accepted.user[last], users)
    entries = list(zip(_take(sources, source[last]), offset[last].tolist()))
    return [dict(entries[start:end]) for start, end in zip(starts.tolist(), ends.tolist())]


def _last_per_user(user: np.ndarray, values: list[str], users: int, bound: int) -> list[list[str]]:
    """Return the last `bound` values of each user, in sequence order."""
    order = np.argsort(user, kind="stable")
    starts, ends = _group_bounds(user[order], users)
    taken = _take(values, order)
    return [taken[max(start, end - bound):end] for start, end in zip(starts.tolist(), ends.tolist())]
