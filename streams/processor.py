"""The user-state path of an event: validate, look up style vectors, update the table, mark for the sink.

Each user's state records the last applied offset per source topic-partition, so a redelivered
event (after a crash or rebalance) changes nothing. Table reads and writes happen without an await
in between, so the downloads and searches agents never interleave on one user.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Callable, MutableMapping

from stylestream.models.preference import (
    RECENT_EVENT_IDS,
    PreferenceParams,
    UserState,
    apply_download,
    apply_search,
    vectors_needed_for_download,
)
from stylestream.schemas.events import Download, Search
from stylestream.schemas.validation import DUPLICATE_EVENT, UNKNOWN_IMAGE, InvalidEvent
from stylestream.streams.images import ImageVectorCache
from stylestream.streams.stats import WorkerStats

log = logging.getLogger(__name__)


STATE_CACHE_SIZE = 4096


class StateCache:
    """Deserialised user states, each valid only while the table holds the exact dict it was built from.

    The table and its changelog stay the source of truth. An entry is used only when the table's
    current value is the same object it was made from, so a value restored by table recovery or a
    rebalance is deserialised again. `take` removes the entry, so a state that an update changed
    halfway before failing is never reused.
    """

    def __init__(self, capacity: int = STATE_CACHE_SIZE) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[Any, UserState]] = OrderedDict()

    def peek(self, user_id: str, stored: Any) -> UserState | None:
        """Return the cached state built from `stored`, for reading only, or None."""
        entry = self._entries.get(user_id)
        return entry[1] if entry is not None and entry[0] is stored else None

    def take(self, user_id: str, stored: Any) -> UserState | None:
        """Remove and return the cached state built from `stored`, for updating, or None."""
        entry = self._entries.pop(user_id, None)
        return entry[1] if entry is not None and entry[0] is stored else None

    def put(self, user_id: str, stored: Any, state: UserState) -> None:
        """Cache `state` as the deserialised form of `stored`, evicting the least recently written user."""
        if self.capacity <= 0:
            return
        self._entries[user_id] = (stored, state)
        self._entries.move_to_end(user_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


class UserProcessor:
    """Apply validated downloads and searches to the user-state table."""

    def __init__(
        self,
        table: MutableMapping[str, Any],
        images: ImageVectorCache,
        params: PreferenceParams,
        style_dim: int,
        stats: WorkerStats,
        on_change: Callable[[str, float | None], None],
        image_wait_seconds: float,
        states: StateCache | None = None,
    ) -> None:
        self.table = table
        self.states = states if states is not None else StateCache()
        self.images = images
        self.params = params
        self.style_dim = style_dim
        self.stats = stats
        self.on_change = on_change
        self.image_wait_seconds = image_wait_seconds

    def _state(self, user_id: str, for_update: bool = True) -> UserState:
        """Return the user's state; one taken `for_update` must be committed or dropped, never read again."""
        stored = self.table.get(user_id)
        if not stored:
            return UserState.empty(user_id, self.style_dim)
        cached = self.states.take(user_id, stored) if for_update else self.states.peek(user_id, stored)
        return cached if cached is not None else UserState.from_dict(stored)

    def _is_duplicate(self, state: UserState, source: str, offset: int) -> bool:
        applied = state.applied_offsets.get(source)
        return applied is not None and offset <= applied

    def _check_event_id(self, state: UserState, event_id: str) -> None:
        """Raise InvalidEvent for an event id this user applied recently at another offset."""
        if not state.remember_event(event_id, RECENT_EVENT_IDS):
            raise InvalidEvent(
                DUPLICATE_EVENT,
                f"event_id {event_id!r} was already applied for user {state.user_id!r}; producers must not reuse event ids",
                "event_id",
            )

    def _commit(self, state: UserState, source: str, offset: int, produced_at: float | None) -> None:
        state.applied_offsets[source] = offset
        stored = state.to_dict()
        self.table[state.user_id] = stored
        self.states.put(state.user_id, stored, state)
        self.on_change(state.user_id, produced_at)

    async def download(self, event: Download, source: str, offset: int, produced_at: float | None = None) -> bool:
        """Apply a download from `source` (topic:partition) at `offset`; return False for a duplicate.

        `produced_at` is the Kafka message timestamp, used to measure event-to-upsert latency.

        Raises InvalidEvent with reason `unknown_image` when the image stays unknown for
        `image_wait_seconds`.
        """
        known = await self.images.wait_for([event.image_id], self.image_wait_seconds)
        image_vector = known.get(event.image_id)
        if image_vector is None:
            raise InvalidEvent(
                UNKNOWN_IMAGE,
                f"image {event.image_id!r} is unknown after waiting {self.image_wait_seconds:.1f} s; "
                "publish its images event first, then replay this dead letter",
                "image_id",
            )
        while True:
            # The linked search's results may need vectors; fetch them, then apply without awaiting.
            needed = vectors_needed_for_download(self._state(event.user_id, for_update=False), event.search_id)
            result_vectors = await self.images.get_many(needed) if needed else {}
            state = self._state(event.user_id)
            if self._is_duplicate(state, source, offset):
                self.stats.duplicates["downloads"] += 1
                return False
            if set(vectors_needed_for_download(state, event.search_id)) <= set(result_vectors):
                break
        self._check_event_id(state, event.event_id)
        apply_download(state, event.image_id, event.timestamp, image_vector, event.search_id, self.params, result_vectors)
        self._commit(state, source, offset, produced_at)
        self.stats.applied["downloads"] += 1
        return True

    async def search(self, event: Search, source: str, offset: int, produced_at: float | None = None) -> bool:
        """Apply a search from `source` (topic:partition) at `offset`; return False for a duplicate."""
        result_vectors = await self.images.get_many(event.results)
        missing = len(set(event.results)) - len(result_vectors)
        if missing:
            log.info("Search %s of user %s shows %d unknown images; they get no negative weight", event.search_id, event.user_id, missing)
        state = self._state(event.user_id)
        if self._is_duplicate(state, source, offset):
            self.stats.duplicates["searches"] += 1
            return False
        self._check_event_id(state, event.event_id)
        apply_search(state, event.search_id, event.timestamp, event.results, result_vectors, self.params)
        self._commit(state, source, offset, produced_at)
        self.stats.applied["searches"] += 1
        return True
