"""Batch computation of user states from a whole event log, with the stream's update semantics.

`build_states` gives every user the UserState that the stream's per-event functions
(`apply_download`, `apply_search`) reach on the same events. That is the same decayed sum of
downloads and of ignored search results, and the same positive mass, event count, recent
downloads, remembered searches and applied offsets. The sums are computed in one vectorised pass (torch index_add_),
so a replay runs at transport speed instead of one Python update per event.

Where the stream's result depends on arrival order, the batch takes one defined order:
- a repeated event id counts once, the first in log order (the stream rejects a repeat among the
  user's last 64 event ids);
- a search id seen twice keeps the first search's results;
- unknown images are dropped from downloads and search results as of the end of the log (the
  stream drops them as of each event's arrival);
- every search is remembered while computing negatives; the stream forgets searches beyond
  `max_tracked_searches`, so results agree while users stay within that bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

from stylestream.models.preference import RECENT_EVENT_IDS, PreferenceParams, SearchLink, UserState


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

    def extend(self, other: "EventLog") -> None:
        """Append every event of `other`."""
        for name in vars(self):
            getattr(self, name).extend(getattr(other, name))

    def __len__(self) -> int:
        return len(self.download_users) + len(self.search_users)


@dataclass
class _UserBook:
    """Per-user bookkeeping gathered in one pass over the log."""

    event_count: int = 0
    last_event_time: float | None = None
    downloads: list[tuple[float, str]] = field(default_factory=list)
    links: dict[str, SearchLink] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    event_ids: list[str] = field(default_factory=list)
    seen_events: set[str] = field(default_factory=set)

    def accept(self, event_id: str, timestamp: float, source: str, offset: int) -> bool:
        if event_id in self.seen_events:
            return False
        self.seen_events.add(event_id)
        self.event_ids.append(event_id)
        self.event_count += 1
        if self.last_event_time is None or timestamp > self.last_event_time:
            self.last_event_time = timestamp
        if offset > self.offsets.get(source, -1):
            self.offsets[source] = offset
        return True


def _collect(log: EventLog, known: Mapping[str, np.ndarray]) -> dict[str, _UserBook]:
    """Apply event-id dedupe and image look-ups, and gather each user's bookkeeping."""
    books: dict[str, _UserBook] = {}
    for index, user_id in enumerate(log.search_users):
        book = books.setdefault(user_id, _UserBook())
        if not book.accept(log.search_events[index], log.search_times[index], log.search_sources[index], log.search_offsets[index]):
            continue
        link = book.links.setdefault(log.search_ids[index], SearchLink())
        if link.results is None:
            link.timestamp = log.search_times[index]
            link.results = [image_id for image_id in log.search_results[index] if image_id in known]
    for index, user_id in enumerate(log.download_users):
        image_id = log.download_images[index]
        if image_id not in known:
            continue
        book = books.setdefault(user_id, _UserBook())
        timestamp = log.download_times[index]
        if not book.accept(log.download_events[index], timestamp, log.download_sources[index], log.download_offsets[index]):
            continue
        book.downloads.append((timestamp, image_id))
        search_id = log.download_searches[index]
        if search_id is not None:
            link = book.links.setdefault(search_id, SearchLink())
            if image_id not in link.downloaded:
                link.downloaded.append(image_id)
    return books


@dataclass
class BatchResult:
    """Users' states after a log, and the number of applied downloads of each image (popularity)."""

    states: dict[str, UserState]
    download_counts: dict[str, int]


def build_states(
    log: EventLog, image_vectors: Mapping[str, np.ndarray], params: PreferenceParams, style_dim: int
) -> BatchResult:
    """Return every user's state after all events of `log`, as the stream would compute it."""
    books = _collect(log, image_vectors)
    download_counts: dict[str, int] = {}
    for book in books.values():
        for _, image_id in book.downloads:
            download_counts[image_id] = download_counts.get(image_id, 0) + 1
    users = list(books)
    user_index = {user_id: number for number, user_id in enumerate(users)}
    images = list(image_vectors)
    image_index = {image_id: number for number, image_id in enumerate(images)}

    # Step 1: one row per contribution: user, image, signed weight, event time.
    rows_user: list[int] = []
    rows_image: list[int] = []
    rows_weight: list[float] = []
    rows_time: list[float] = []
    for user_id, book in books.items():
        number = user_index[user_id]
        for timestamp, image_id in book.downloads:
            rows_user.append(number)
            rows_image.append(image_index[image_id])
            rows_weight.append(params.download_weight)
            rows_time.append(timestamp)
        if params.impression_weight == 0:
            continue
        for link in book.links.values():
            if link.results is None or not link.downloaded:
                continue
            downloaded = set(link.downloaded)
            for image_id in link.results:
                if image_id not in downloaded:
                    rows_user.append(number)
                    rows_image.append(image_index[image_id])
                    rows_weight.append(-params.impression_weight)
                    rows_time.append(link.timestamp)  # type: ignore[arg-type]

    # Step 2: decay every contribution to its user's newest contribution time, then sum.
    user_rows = np.asarray(rows_user, dtype=np.int64)
    times = np.asarray(rows_time, dtype=np.float64)
    weights = np.asarray(rows_weight, dtype=np.float64)
    t_ref = np.full(len(users), -np.inf)
    np.maximum.at(t_ref, user_rows, times)
    decayed = weights * np.exp2(-(t_ref[user_rows] - times) / params.half_life_seconds)
    if images:
        matrix = torch.from_numpy(np.stack([image_vectors[image_id] for image_id in images]).astype(np.float64))
    else:
        matrix = torch.zeros((0, style_dim), dtype=torch.float64)
    # The sums are a sparse (users x images) weight matrix times the dense image matrix.
    weights_matrix = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([user_rows, np.asarray(rows_image, dtype=np.int64)])),
        torch.from_numpy(decayed), size=(len(users), len(images)), dtype=torch.float64, check_invariants=True,
    )
    sums = torch.sparse.mm(weights_matrix, matrix) if len(decayed) else torch.zeros((len(users), style_dim), dtype=torch.float64)
    positive = weights > 0
    mass = np.bincount(user_rows[positive], weights=decayed[positive], minlength=len(users))

    # Step 3: assemble the states with their bookkeeping, bounded as the stream bounds it.
    vectors = sums.numpy()
    states = {}
    for user_id, book in books.items():
        number = user_index[user_id]
        links = sorted(book.links.items(), key=lambda item: (item[1].timestamp or 0.0, item[0]))
        newest: dict[str, float] = {}
        for timestamp, image_id in book.downloads:
            newest[image_id] = max(timestamp, newest.get(image_id, timestamp))
        recent = sorted(((t, image_id) for image_id, t in newest.items()), key=lambda item: (-item[0], item[1]))
        recent = recent[: params.max_recent_downloads]
        has_contribution = np.isfinite(t_ref[number])
        states[user_id] = UserState(
            user_id=user_id,
            vector=vectors[number].copy() if has_contribution else np.zeros(style_dim),
            t_ref=float(t_ref[number]) if has_contribution else None,
            positive_mass=float(mass[number]),
            event_count=book.event_count,
            last_event_time=book.last_event_time,
            recent_downloads=recent,
            searches=dict(links[-params.max_tracked_searches:]),
            applied_offsets=book.offsets,
            recent_event_ids=book.event_ids[-RECENT_EVENT_IDS:],
        )
    return BatchResult(states, download_counts)
