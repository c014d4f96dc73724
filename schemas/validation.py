"""Strict validation of raw event bytes into records.

Every rejection raises InvalidEvent with a machine-readable `reason` (the dead-letter reason) and a
message that names the field and the offending value. The JSON Schema files in `schemas/json/`
describe the same contracts for producers in other languages.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime
from itertools import chain, repeat
from operator import itemgetter
from typing import Any, Callable

import numpy as np
import orjson

from stylestream.schemas.errors import StylestreamError
from stylestream.schemas.events import Download, Image, Search

# Dead-letter reasons. They are stable strings: dashboards and alerts match on them.
MALFORMED_JSON = "malformed_json"
INVALID_UTF8 = "invalid_utf8"
OVERSIZE = "oversize"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
UNKNOWN_FIELD = "unknown_field"
INVALID_TYPE = "invalid_type"
INVALID_ID = "invalid_id"
NON_FINITE = "non_finite"
INVALID_DIMENSION = "invalid_dimension"
INVALID_TIMESTAMP = "invalid_timestamp"
LIST_TOO_LONG = "list_too_long"
DUPLICATE_ID = "duplicate_id"
KEY_MISMATCH = "key_mismatch"
UNKNOWN_IMAGE = "unknown_image"
DUPLICATE_EVENT = "duplicate_event"
WRONG_PARTITION = "wrong_partition"


class InvalidEvent(StylestreamError, ValueError):
    """An event that breaks its contract. `reason` is the dead-letter reason."""

    def __init__(self, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class Limits:
    """Bounds applied to every event. The defaults suit a marketplace; all are configurable.

    `deep_dim` and `colors_dim` are the feature dimensions the style encoder expects; None accepts
    any length up to `max_vector_length`.
    """

    max_message_bytes: int = 256 * 1024
    max_id_length: int = 256
    max_query_length: int = 1024
    max_results: int = 1000
    max_labels: int = 256
    max_vector_length: int = 8192
    max_future_seconds: float = 86400.0
    deep_dim: int | None = None
    colors_dim: int | None = None


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _decode(raw: bytes | str | None, limits: Limits) -> dict[str, Any]:
    """Decode one message value into a JSON object, with size and encoding checks."""
    if raw is None:
        raise InvalidEvent(MALFORMED_JSON, "message value is empty (a tombstone); expected a JSON object")
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > limits.max_message_bytes:
        raise InvalidEvent(
            OVERSIZE,
            f"message is {len(raw)} bytes, over the limit of {limits.max_message_bytes} bytes "
            "(raise STYLESTREAM_MAX_MESSAGE_BYTES if such events are legitimate)",
        )
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson also rejects invalid UTF-8; tell the two apart only on this slow path.
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as decode_error:
            raise InvalidEvent(INVALID_UTF8, f"message is not valid UTF-8: {decode_error}") from None
        _raise_if_non_finite(raw)
        raise InvalidEvent(MALFORMED_JSON, f"message is not valid JSON: {exc}") from None
    return _require_object(document)


def _require_object(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise InvalidEvent(NOT_AN_OBJECT, f"message is JSON {type(document).__name__}; expected an object")
    return document


def _reject_constant(name: str) -> None:
    raise InvalidEvent(NON_FINITE, f"message contains {name}, which is not a finite number; send finite values only")


def _has_infinity(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_infinity(item) for item in value)
    if isinstance(value, dict):
        return any(_has_infinity(item) for item in value.values())
    return False


def _raise_if_non_finite(raw: bytes) -> None:
    """Give NaN, Infinity and overflowing numbers (1e400) their own reason instead of malformed_json."""
    try:
        document = json.loads(raw, parse_constant=_reject_constant)
    except InvalidEvent:
        raise
    except (ValueError, RecursionError):
        return
    if _has_infinity(document):
        raise InvalidEvent(NON_FINITE, "message contains a number too large for a double; send finite values only")


def _check_fields(document: dict[str, Any], required: set[str], optional: set[str]) -> None:
    for name in sorted(required):
        if name not in document:
            raise InvalidEvent(MISSING_FIELD, f"field {name!r} is missing", name)
    for name in sorted(document):
        if name not in required and name not in optional:
            allowed = ", ".join(sorted(required | optional))
            raise InvalidEvent(UNKNOWN_FIELD, f"field {name!r} is not part of the contract (allowed: {allowed})", name)


def _id(document: dict[str, Any], name: str, limits: Limits, *, optional: bool = False) -> str | None:
    value = document.get(name)
    if value is None and optional:
        return None
    return _id_value(value, name, limits)


_CONTROL_CHARACTERS = re.compile("[\x00-\x1f]")


def _id_value(value: Any, name: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise InvalidEvent(INVALID_TYPE, f"field {name!r} must be a string, got {_preview(value)}", name)
    if not value or not value.strip():
        raise InvalidEvent(INVALID_ID, f"field {name!r} must not be empty", name)
    if len(value) > limits.max_id_length:
        raise InvalidEvent(
            INVALID_ID, f"field {name!r} is {len(value)} characters, over the limit of {limits.max_id_length}", name
        )
    if _CONTROL_CHARACTERS.search(value):
        raise InvalidEvent(INVALID_ID, f"field {name!r} contains control characters: {_preview(value)}", name)
    return value


def validate_id(value: Any, name: str, limits: Limits) -> str:
    """Check an id as event fields are checked (string, not blank, bounded, no control characters)."""
    return _id_value(value, name, limits)


def parse_timestamp(value: Any, name: str = "timestamp", limits: Limits | None = None) -> float:
    """Convert epoch seconds or an ISO-8601 string with a UTC offset into float epoch seconds."""
    limits = limits or Limits()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidEvent(
            INVALID_TYPE, f"field {name!r} must be epoch seconds or an ISO-8601 string, got {_preview(value)}", name
        )
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidEvent(
                INVALID_TIMESTAMP, f"field {name!r} is not an ISO-8601 date-time: {_preview(value)}", name
            ) from None
        if parsed.tzinfo is None:
            raise InvalidEvent(
                INVALID_TIMESTAMP,
                f"field {name!r} has no UTC offset: {_preview(value)}; append 'Z' or an offset such as +00:00",
                name,
            )
        seconds = parsed.timestamp()
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise InvalidEvent(NON_FINITE, f"field {name!r} must be finite, got {_preview(value)}", name)
    if seconds < 0:
        raise InvalidEvent(INVALID_TIMESTAMP, f"field {name!r} is before 1970: {_preview(value)}", name)
    horizon = time.time() + limits.max_future_seconds
    if seconds > horizon:
        raise InvalidEvent(
            INVALID_TIMESTAMP,
            f"field {name!r} is {seconds - time.time():.0f} s in the future, more than the "
            f"{limits.max_future_seconds:.0f} s allowed: {_preview(value)}",
            name,
        )
    return seconds


def _id_list(document: dict[str, Any], name: str, limits: Limits, max_length: int) -> list[str]:
    value = document.get(name)
    if not isinstance(value, list):
        raise InvalidEvent(INVALID_TYPE, f"field {name!r} must be a list of strings, got {_preview(value)}", name)
    if len(value) > max_length:
        raise InvalidEvent(LIST_TOO_LONG, f"field {name!r} has {len(value)} items, over the limit of {max_length}", name)
    # Fast path for the common valid list; any doubt falls through to the per-item checks and messages.
    valid = all(type(item) is str and 0 < len(item) <= limits.max_id_length and not item.isspace() for item in value)
    if not valid or _CONTROL_CHARACTERS.search("".join(value)):
        value = [_id_value(item, f"{name}[{index}]", limits) for index, item in enumerate(value)]
    if len(set(value)) != len(value):
        seen: set[str] = set()
        duplicate = next(item for item in value if item in seen or seen.add(item))
        raise InvalidEvent(DUPLICATE_ID, f"field {name!r} lists {duplicate!r} more than once", name)
    return value


def _vector(document: dict[str, Any], name: str, limits: Limits, expected_dim: int | None) -> list[float]:
    value = document.get(name)
    if not isinstance(value, list):
        raise InvalidEvent(INVALID_TYPE, f"field {name!r} must be a list of numbers, got {_preview(value)}", name)
    if expected_dim is not None and len(value) != expected_dim:
        raise InvalidEvent(
            INVALID_DIMENSION, f"field {name!r} has {len(value)} values; the style encoder expects {expected_dim}", name
        )
    if len(value) > limits.max_vector_length:
        raise InvalidEvent(
            LIST_TOO_LONG, f"field {name!r} has {len(value)} values, over the limit of {limits.max_vector_length}", name
        )
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise InvalidEvent(INVALID_TYPE, f"field {name}[{index}] must be a number, got {_preview(item)}", name)
        if not math.isfinite(item):
            raise InvalidEvent(NON_FINITE, f"field {name}[{index}] must be finite, got {item}", name)
    return [float(item) for item in value]


def _text(document: dict[str, Any], name: str, max_length: int) -> str:
    value = document.get(name)
    if not isinstance(value, str):
        raise InvalidEvent(INVALID_TYPE, f"field {name!r} must be a string, got {_preview(value)}", name)
    if len(value) > max_length:
        raise InvalidEvent(LIST_TOO_LONG, f"field {name!r} is {len(value)} characters, over the limit of {max_length}", name)
    return value


def _check_key(key: bytes | str | None, expected: str, name: str) -> None:
    if key is None:
        return
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    if text != expected:
        raise InvalidEvent(
            KEY_MISMATCH, f"message key {_preview(text)} differs from field {name!r} = {_preview(expected)}", name
        )


_DOWNLOAD_FIELDS = frozenset({"event_id", "user_id", "image_id", "timestamp", "search_id"})
_DOWNLOAD_REQUIRED = frozenset({"event_id", "user_id", "image_id", "timestamp"})
_SEARCH_FIELDS = frozenset({"event_id", "user_id", "search_id", "query", "timestamp", "results"})


def _plain_id(value: Any, limits: Limits) -> bool:
    """Return True for an id that certainly passes `_id_value`; False sends it to the exact checks."""
    return type(value) is str and 0 < len(value) <= limits.max_id_length and value.isprintable() and not value.isspace()


def _plain_ids(values: list[Any] | tuple[Any, ...], limits: Limits) -> bool:
    """Return True for a list of ids that certainly pass `_id_value`, checked with C-level built-ins."""
    if not values:
        return True
    if set(map(type, values)) != {str}:
        return False
    lengths = list(map(len, values))
    return (
        min(lengths) > 0 and max(lengths) <= limits.max_id_length
        and "".join(values).isprintable() and not any(map(str.isspace, values))
    )


def _plain_time(value: Any, limits: Limits) -> bool:
    """Return True for epoch seconds that certainly pass `parse_timestamp` (NaN compares false)."""
    return type(value) in (int, float) and 0 <= value <= time.time() + limits.max_future_seconds


def _fast_download(document: dict[str, Any], limits: Limits) -> dict[str, Any] | None:
    """Return the fields of a plainly valid download, or None to run the exact checks and messages."""
    keys = document.keys()
    if not (keys == _DOWNLOAD_FIELDS or keys == _DOWNLOAD_REQUIRED):
        return None
    search_id = document.get("search_id")
    if not (
        _plain_id(document["event_id"], limits) and _plain_id(document["user_id"], limits)
        and _plain_id(document["image_id"], limits) and (search_id is None or _plain_id(search_id, limits))
        and _plain_time(document["timestamp"], limits)
    ):
        return None
    return {
        "event_id": document["event_id"], "user_id": document["user_id"], "image_id": document["image_id"],
        "timestamp": float(document["timestamp"]), "search_id": search_id,
    }


def _fast_search(document: dict[str, Any], limits: Limits) -> dict[str, Any] | None:
    """Return the fields of a plainly valid search, or None to run the exact checks and messages."""
    if document.keys() != _SEARCH_FIELDS:
        return None
    results, query = document["results"], document["query"]
    if not (
        _plain_id(document["event_id"], limits) and _plain_id(document["user_id"], limits)
        and _plain_id(document["search_id"], limits) and _plain_time(document["timestamp"], limits)
        and type(query) is str and len(query) <= limits.max_query_length
        and type(results) is list and len(results) <= limits.max_results
        and _plain_ids(results, limits) and len(set(results)) == len(results)
    ):
        return None
    return {
        "event_id": document["event_id"], "user_id": document["user_id"], "search_id": document["search_id"],
        "query": query, "timestamp": float(document["timestamp"]), "results": results,
    }


def validate_download(raw: bytes | str | None, limits: Limits = Limits(), key: bytes | str | None = None) -> dict[str, Any]:
    """Validate a downloads message and return its fields, with the timestamp as epoch seconds."""
    return _download_fields(_decode(raw, limits), limits, key)


def _download_fields(document: Any, limits: Limits, key: bytes | str | None) -> dict[str, Any]:
    """Check a decoded downloads message and its key; return its fields."""
    document = _require_object(document)
    fields = _fast_download(document, limits) or _strict_download(document, limits)
    _check_key(key, fields["user_id"], "user_id")
    return fields


def _strict_download(document: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Check every field of a download and raise InvalidEvent naming the first problem."""
    _check_fields(document, {"event_id", "user_id", "image_id", "timestamp"}, {"search_id"})
    return {
        "event_id": _id(document, "event_id", limits),
        "user_id": _id(document, "user_id", limits),
        "image_id": _id(document, "image_id", limits),
        "timestamp": parse_timestamp(document["timestamp"], limits=limits),
        "search_id": _id(document, "search_id", limits, optional=True),
    }


def validate_search(raw: bytes | str | None, limits: Limits = Limits(), key: bytes | str | None = None) -> dict[str, Any]:
    """Validate a searches message and return its fields, with the timestamp as epoch seconds."""
    return _search_fields(_decode(raw, limits), limits, key)


def _search_fields(document: Any, limits: Limits, key: bytes | str | None) -> dict[str, Any]:
    """Check a decoded searches message and its key; return its fields."""
    document = _require_object(document)
    fields = _fast_search(document, limits) or _strict_search(document, limits)
    _check_key(key, fields["user_id"], "user_id")
    return fields


def _strict_search(document: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Check every field of a search and raise InvalidEvent naming the first problem."""
    _check_fields(document, {"event_id", "user_id", "search_id", "query", "timestamp", "results"}, set())
    return {
        "event_id": _id(document, "event_id", limits),
        "user_id": _id(document, "user_id", limits),
        "search_id": _id(document, "search_id", limits),
        "query": _text(document, "query", limits.max_query_length),
        "timestamp": parse_timestamp(document["timestamp"], limits=limits),
        "results": _id_list(document, "results", limits, limits.max_results),
    }


def validate_image(raw: bytes | str | None, limits: Limits = Limits(), key: bytes | str | None = None) -> dict[str, Any]:
    """Validate an images message and return its fields, with the timestamp as epoch seconds."""
    document = _decode(raw, limits)
    _check_fields(
        document,
        {"image_id", "timestamp", "deep", "colors", "categories", "keywords"},
        {"creator", "metadata"},
    )
    metadata = document.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidEvent(INVALID_TYPE, f"field 'metadata' must be an object or null, got {_preview(metadata)}", "metadata")
    fields = {
        "image_id": _id(document, "image_id", limits),
        "timestamp": parse_timestamp(document["timestamp"], limits=limits),
        "deep": _vector(document, "deep", limits, limits.deep_dim),
        "colors": _vector(document, "colors", limits, limits.colors_dim),
        "categories": _id_list(document, "categories", limits, limits.max_labels),
        "keywords": _id_list(document, "keywords", limits, limits.max_labels),
        "creator": _id(document, "creator", limits, optional=True),
        "metadata": metadata,
    }
    _check_key(key, fields["image_id"], "image_id")
    return fields


def parse_download(raw: bytes | str | None, limits: Limits = Limits(), key: bytes | str | None = None) -> Download:
    """Validate a downloads message and return its record."""
    return Download(**validate_download(raw, limits, key))


def parse_search(raw: bytes | str | None, limits: Limits = Limits(), key: bytes | str | None = None) -> Search:
    """Validate a searches message and return its record."""
    return Search(**validate_search(raw, limits, key))


def parse_image(raw: bytes | str | None, limits: Limits = Limits(), key: bytes | str | None = None) -> Image:
    """Validate an images message and return its record."""
    return Image(**validate_image(raw, limits, key))


VALIDATORS: dict[str, Callable[..., dict[str, Any]]] = {
    "downloads": validate_download,
    "searches": validate_search,
    "images": validate_image,
}

PARSERS: dict[str, Callable[..., Any]] = {
    "downloads": parse_download,
    "searches": parse_search,
    "images": parse_image,
}


@dataclass
class ValidatedBatch:
    """The valid events of a batch of messages as columns named like the fields, and the rejected ones.

    `rows` are the indexes of the valid messages in the batch, in order; `rejected` pairs each
    invalid message's index with its InvalidEvent.
    """

    rows: list[int]
    columns: dict[str, list[Any]]
    rejected: list[tuple[int, InvalidEvent]]


# Below this many messages a batch that failed the column checks is validated one message at a time.
_EXACT_BATCH = 16


def validate_batch(
    kind: str, values: list[bytes | str | None], keys: list[bytes | str | None], limits: Limits = Limits()
) -> ValidatedBatch:
    """Validate many downloads or searches messages at once, with the same outcome as one call each.

    Valid batches are decoded with one orjson call per message and checked column by column with
    C-level built-ins. A batch that fails a check is split in halves until the failing messages are
    found and validated one at a time, so every rejection carries its own reason and message.
    """
    if kind not in _COLUMN_CHECKS:
        raise ValueError(f"batch validation supports downloads and searches, got {kind!r}")
    documents: list[Any] = []
    rejected: list[tuple[int, InvalidEvent]] = []
    decoded_rows: list[int] = []
    if set(map(type, values)) == {bytes} and max(map(len, values), default=0) <= limits.max_message_bytes:
        try:
            documents = list(map(orjson.loads, values))
            decoded_rows = list(range(len(values)))
        except orjson.JSONDecodeError:
            documents = []
    if len(documents) != len(values):
        documents, decoded_rows = [], []
        for row, value in enumerate(values):
            try:
                documents.append(_decode(value, limits))
                decoded_rows.append(row)
            except InvalidEvent as exc:
                rejected.append((row, exc))
    result = ValidatedBatch([], {name: [] for name in _COLUMN_CHECKS[kind][0]}, rejected)
    _validate_columns(kind, documents, decoded_rows, [keys[row] for row in decoded_rows], limits, result)
    result.rejected.sort(key=lambda item: item[0])
    return result


def _validate_columns(
    kind: str, documents: list[Any], rows: list[int], keys: list[Any], limits: Limits, result: ValidatedBatch
) -> None:
    names, check = _COLUMN_CHECKS[kind]
    if not documents:
        return
    columns = check(documents, keys, limits)
    if columns is not None:
        result.rows.extend(rows)
        for name in names:
            result.columns[name].extend(columns[name])
        return
    if len(documents) > _EXACT_BATCH:
        half = len(documents) // 2
        _validate_columns(kind, documents[:half], rows[:half], keys[:half], limits, result)
        _validate_columns(kind, documents[half:], rows[half:], keys[half:], limits, result)
        return
    exact = _download_fields if kind == "downloads" else _search_fields
    for row, document, key in zip(rows, documents, keys):
        try:
            fields = exact(document, limits, key)
        except InvalidEvent as exc:
            result.rejected.append((row, exc))
            continue
        result.rows.append(row)
        for name in names:
            result.columns[name].append(fields[name])


def _plain_times(values: tuple[Any, ...], limits: Limits) -> list[float] | None:
    """Return epoch seconds that certainly pass `parse_timestamp` as floats, or None."""
    if not set(map(type, values)) <= {int, float}:
        return None
    try:
        seconds = np.asarray(values, dtype=np.float64)
    except OverflowError:
        return None
    if not ((seconds >= 0) & (seconds <= time.time() + limits.max_future_seconds)).all():  # NaN compares false
        return None
    return seconds.tolist()


def _keys_match(keys: list[Any], user_ids: tuple[str, ...]) -> bool:
    """Return True when every key is absent or the UTF-8 bytes of its user id, which `_check_key` accepts."""
    encoded = list(map(str.encode, user_ids))
    return encoded == keys or all(key is None or key == user for key, user in zip(keys, encoded))


def _download_columns(documents: list[Any], keys: list[Any], limits: Limits) -> dict[str, Any] | None:
    """Return the fields of plainly valid downloads as columns, or None to look closer."""
    if set(map(type, documents)) != {dict}:
        return None
    try:
        event_ids, user_ids, image_ids, stamps = zip(*map(_DOWNLOAD_GETTER, documents))
    except KeyError:
        return None
    search_ids = list(map(dict.get, documents, repeat("search_id")))
    linked = [search_id for search_id in search_ids if search_id is not None]
    # Each document has the four required keys, plus search_id when it is not None; equal sums
    # mean no document has any other key.
    if sum(map(len, documents)) != 4 * len(documents) + len(linked):
        return None
    if not (
        _plain_ids(event_ids, limits) and _plain_ids(user_ids, limits) and _plain_ids(image_ids, limits)
        and _plain_ids(linked, limits) and _keys_match(keys, user_ids)
    ):
        return None
    seconds = _plain_times(stamps, limits)
    if seconds is None:
        return None
    return {"event_id": event_ids, "user_id": user_ids, "image_id": image_ids, "timestamp": seconds, "search_id": search_ids}


def _search_columns(documents: list[Any], keys: list[Any], limits: Limits) -> dict[str, Any] | None:
    """Return the fields of plainly valid searches as columns, or None to look closer."""
    if set(map(type, documents)) != {dict}:
        return None
    try:
        event_ids, user_ids, search_ids, queries, stamps, results = zip(*map(_SEARCH_GETTER, documents))
    except KeyError:
        return None
    if sum(map(len, documents)) != 6 * len(documents):  # the six required keys and no other
        return None
    if not (
        _plain_ids(event_ids, limits) and _plain_ids(user_ids, limits) and _plain_ids(search_ids, limits)
        and set(map(type, queries)) == {str} and max(map(len, queries)) <= limits.max_query_length
        and set(map(type, results)) == {list} and _keys_match(keys, user_ids)
    ):
        return None
    lengths = list(map(len, results))
    if max(lengths) > limits.max_results or not _plain_ids(list(chain.from_iterable(results)), limits):
        return None
    if list(map(len, map(set, results))) != lengths:  # a repeated id within one list
        return None
    seconds = _plain_times(stamps, limits)
    if seconds is None:
        return None
    return {
        "event_id": event_ids, "user_id": user_ids, "search_id": search_ids, "query": queries, "timestamp": seconds,
        "results": results,
    }


_DOWNLOAD_GETTER = itemgetter("event_id", "user_id", "image_id", "timestamp")
_SEARCH_GETTER = itemgetter("event_id", "user_id", "search_id", "query", "timestamp", "results")
_COLUMN_CHECKS: dict[str, tuple[tuple[str, ...], Callable[..., dict[str, Any] | None]]] = {
    "downloads": (("event_id", "user_id", "image_id", "timestamp", "search_id"), _download_columns),
    "searches": (("event_id", "user_id", "search_id", "query", "timestamp", "results"), _search_columns),
}
