"""The user-state path of a batch of events: validate, look up style vectors, update, write the table.

A batch contains messages of one topic (downloads or searches) in the order the consumer delivered
them. Each message's user state is updated in that order, and each changed user is written to the
table once per batch through `write`, which also queues the changelog record.

Each user's state records the last applied offset per source topic-partition, so a redelivered
event (after a crash or rebalance) changes nothing. States are read, updated and written back
without an await in between (a batch that must fetch more vectors midway writes what it applied
first), so the downloads and searches agents never interleave on one user.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from stylestream.models.preference import (
    RECENT_EVENT_IDS,
    PreferenceParams,
    UserState,
    apply_download,
    apply_search,
    vectors_needed_for_download,
)
from stylestream.schemas.validation import (
    DUPLICATE_EVENT,
    UNKNOWN_IMAGE,
    WRONG_PARTITION,
    InvalidEvent,
    Limits,
    validate_batch,
)
from stylestream.streams.images import ImageVectorCache
from stylestream.streams.stats import WorkerStats
from stylestream.streams.topics import partition_for

log = logging.getLogger(__name__)

STATE_CACHE_SIZE = 4096
PROCESSING_ERROR = "processing_error"
USER_TOPIC_KINDS = ("downloads", "searches")


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


@dataclass(slots=True)
class UserMessage:
    """One consumed downloads or searches message: raw key and value, where it came from, when it was produced."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    produced_at: float | None = None


@dataclass(slots=True)
class _Event:
    """A validated event of a batch and the message it came from."""

    message: UserMessage
    user_id: str
    event_id: str
    timestamp: float
    search_id: str | None
    image_id: str | None = None
    results: list[str] | None = None


@dataclass
class BatchResult:
    """The outcome of a batch: rejected messages with their errors, counts, and applied downloads per image."""

    rejected: list[tuple[UserMessage, InvalidEvent]] = field(default_factory=list)
    downloads_per_image: Counter = field(default_factory=Counter)
    applied: int = 0
    duplicates: int = 0


class UserProcessor:
    """Apply batches of validated downloads and searches to the user-state table."""

    def __init__(
        self,
        table: Mapping[str, Any],
        write: Callable[[str, int, dict[str, Any]], None],
        images: ImageVectorCache,
        params: PreferenceParams,
        style_dim: int,
        limits: Limits,
        partitions: int,
        stats: WorkerStats,
        on_change: Callable[[str, float | None], None],
        image_wait_seconds: float,
        states: StateCache | None = None,
    ) -> None:
        self.table = table
        # Sets a user's table value (user_id, partition, value); the changelog record leaves in write order.
        self.write = write
        self.states = states if states is not None else StateCache()
        self.images = images
        self.params = params
        self.style_dim = style_dim
        self.limits = limits
        self.partitions = partitions
        self.stats = stats
        self.on_change = on_change
        self.image_wait_seconds = image_wait_seconds

    async def apply_batch(self, kind: str, topic: str, messages: list[UserMessage]) -> BatchResult:
        """Validate and apply `messages` of `topic` (a `kind` of downloads or searches), in order.

        Invalid messages are returned in `BatchResult.rejected` with their reason and change nothing.
        A download whose image stays unknown for `image_wait_seconds` is rejected as `unknown_image`.
        """
        if kind not in USER_TOPIC_KINDS:
            raise ValueError(f"kind must be one of {USER_TOPIC_KINDS}, got {kind!r}")
        result = BatchResult()
        self.stats.user_batches += 1
        events = self._validate(kind, messages, result)

        # Step 1: every style vector the batch needs, awaited before any state is touched.
        if kind == "downloads":
            vectors = await self.images.wait_for(list({event.image_id for event in events}), self.image_wait_seconds)
            events = self._drop_unknown_images(events, vectors, result)
        else:
            vectors = await self.images.get_many({image_id for event in events for image_id in event.results})
            self._log_unknown_results(events, vectors)

        # Step 2: apply without awaiting. A download may need the results of its linked search, which
        # the searches agent can add while this one awaits, so the batch stops before such a
        # download, writes what it applied, fetches the vectors and goes on from there.
        pending = events
        while pending:
            if kind == "downloads":
                needed = self._vectors_needed(pending) - vectors.keys()
                if needed:
                    vectors.update(await self.images.get_many(needed))
            rest = self._apply(kind, topic, pending, vectors, result)
            if rest and rest[0] is pending[0]:
                rest = await self._fetch_or_reject(rest, vectors, result)
            pending = rest
        return result

    async def _fetch_or_reject(self, events: list[_Event], vectors: dict[str, np.ndarray], result: BatchResult) -> list[_Event]:
        """Fetch the result vectors the first download still lacks; reject the download when the store lacks any of them."""
        first = events[0]
        needed = set(vectors_needed_for_download(self._load_state(first.user_id, for_update=False)[1], first.search_id)) - vectors.keys()
        vectors.update(await self.images.get_many(needed))
        missing = needed - vectors.keys()
        if not missing:
            return events
        log.error("Images %s of search %s are missing from the images collection; rejecting download %s", sorted(missing)[:5], first.search_id, first.event_id)
        result.rejected.append((first.message, InvalidEvent(
            PROCESSING_ERROR,
            f"{len(missing)} result images of search {first.search_id!r} are missing from the images collection",
            "search_id",
        )))
        return events[1:]

    def _validate(self, kind: str, messages: list[UserMessage], result: BatchResult) -> list[_Event]:
        batch = validate_batch(kind, [message.value for message in messages], [message.key for message in messages], self.limits)
        for row, error in batch.rejected:
            result.rejected.append((messages[row], error))

        columns = batch.columns
        events = []
        for position, row in enumerate(batch.rows):
            message = messages[row]
            user_id = columns["user_id"][position]
            expected = partition_for(user_id, self.partitions)
            if message.partition != expected:
                result.rejected.append((message, InvalidEvent(
                    WRONG_PARTITION,
                    f"event of user {user_id!r} arrived on partition {message.partition}, but its key belongs to "
                    f"partition {expected}; produce user events with the message key set to user_id",
                    "user_id",
                )))
                continue
            if kind == "downloads":
                events.append(_Event(
                    message, user_id, columns["event_id"][position], columns["timestamp"][position],
                    columns["search_id"][position], image_id=columns["image_id"][position],
                ))
            else:
                events.append(_Event(
                    message, user_id, columns["event_id"][position], columns["timestamp"][position],
                    columns["search_id"][position], results=columns["results"][position],
                ))
        return events

    def _drop_unknown_images(self, events: list[_Event], vectors: Mapping[str, np.ndarray], result: BatchResult) -> list[_Event]:
        known = []
        for event in events:
            if event.image_id in vectors:
                known.append(event)
                continue
            result.rejected.append((event.message, InvalidEvent(
                UNKNOWN_IMAGE,
                f"image {event.image_id!r} is unknown after waiting {self.image_wait_seconds:.1f} s; "
                "publish its images event first, then produce this dead letter to its source topic again",
                "image_id",
            )))
        return known

    def _log_unknown_results(self, events: list[_Event], vectors: Mapping[str, np.ndarray]) -> None:
        for event in events:
            missing = sum(1 for image_id in event.results if image_id not in vectors)
            if missing:
                log.info("Search %s of user %s shows %d unknown images; they get no negative weight", event.search_id, event.user_id, missing)

    def _vectors_needed(self, events: list[_Event]) -> set[str]:
        """Return the result vectors the downloads need for their linked searches, as the table stores them now."""
        needed: set[str] = set()
        for event in events:
            if event.search_id is not None:
                needed.update(vectors_needed_for_download(self._load_state(event.user_id, for_update=False)[1], event.search_id))
        return needed

    def _load_state(self, user_id: str, for_update: bool) -> tuple[Any, UserState]:
        """Return the table's value for the user and its state.

        A state loaded `for_update` leaves the cache, so it must be written back or dropped.
        """
        stored = self.table.get(user_id)
        cached = None
        if stored:
            cached = self.states.take(user_id, stored) if for_update else self.states.peek(user_id, stored)
        return stored, cached if cached is not None else self._deserialise(user_id, stored)

    def _deserialise(self, user_id: str, stored: Any) -> UserState:
        return UserState.from_dict(stored) if stored else UserState.empty(user_id, self.style_dim)

    def _apply(self, kind: str, topic: str, events: list[_Event], vectors: dict[str, np.ndarray], result: BatchResult) -> list[_Event]:
        """Apply events in order until one needs a vector not in `vectors`; write the changed users; return the rest."""
        loaded: dict[str, tuple[Any, UserState]] = {}
        applied: dict[str, list[_Event]] = {}
        sources: dict[int, str] = {}
        rest: list[_Event] = []
        for position, event in enumerate(events):
            user_id = event.user_id
            if user_id not in loaded:
                loaded[user_id] = self._load_state(user_id, for_update=True)
                applied[user_id] = []
            state = loaded[user_id][1]
            partition = event.message.partition
            source = sources.get(partition) or sources.setdefault(partition, f"{topic}:{partition}")
            last = state.applied_offsets.get(source)
            if last is not None and event.message.offset <= last:
                result.duplicates += 1
                continue
            if kind == "downloads":
                needed = vectors_needed_for_download(state, event.search_id)
                if needed and not vectors.keys() >= set(needed):
                    rest = events[position:]
                    break

            try:
                self._apply_event(kind, state, source, event, vectors)
            except InvalidEvent as error:
                result.rejected.append((event.message, error))
                continue
            except Exception as error:  # one failing event must not stop the batch or corrupt the user
                log.exception("Failed to apply %s[%d]@%d for user %s", topic, event.message.partition, event.message.offset, user_id)
                result.rejected.append((event.message, InvalidEvent(PROCESSING_ERROR, repr(error))))
                # The failed update may have changed the state halfway: rebuild it from the table
                # value and the events of this batch applied before.
                stored = loaded[user_id][0]
                rebuilt = self._deserialise(user_id, stored)
                for earlier in applied[user_id]:
                    self._apply_event(kind, rebuilt, f"{topic}:{earlier.message.partition}", earlier, vectors)
                loaded[user_id] = (stored, rebuilt)
                continue

            applied[user_id].append(event)
            result.applied += 1
            if kind == "downloads":
                result.downloads_per_image[event.image_id] += 1

        self._write_changed(loaded, applied)
        return rest

    def _apply_event(self, kind: str, state: UserState, source: str, event: _Event, vectors: Mapping[str, np.ndarray]) -> None:
        if not state.remember_event(event.event_id, RECENT_EVENT_IDS):
            raise InvalidEvent(
                DUPLICATE_EVENT,
                f"event_id {event.event_id!r} was already applied for user {event.user_id!r}; producers must not reuse event ids",
                "event_id",
            )
        if kind == "downloads":
            apply_download(state, event.image_id, event.timestamp, vectors[event.image_id], event.search_id, self.params, vectors)
        else:
            apply_search(state, event.search_id, event.timestamp, event.results, vectors, self.params)
        state.applied_offsets[source] = event.message.offset

    def _write_changed(self, loaded: dict[str, tuple[Any, UserState]], applied: dict[str, list[_Event]]) -> None:
        for user_id, (stored, state) in loaded.items():
            events = applied[user_id]
            if not events:
                # Unchanged: keep the deserialised state for the next batch.
                if stored:
                    self.states.put(user_id, stored, state)
                continue
            new_stored = state.to_dict()
            self.write(user_id, events[0].message.partition, new_stored)
            self.stats.state_writes += 1
            self.states.put(user_id, new_stored, state)
            produced = [event.message.produced_at for event in events if event.message.produced_at is not None]
            self.on_change(user_id, min(produced) if produced else None)
