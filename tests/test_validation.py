"""Tests of strict event validation and of the JSON Schema files that mirror it."""

from __future__ import annotations

import json
import time

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bad_inputs import BAD_INPUTS, edit_event
from stylestream.schemas import json_schema_path
from stylestream.schemas.validation import (
    PARSERS,
    VALIDATORS,
    InvalidEvent,
    Limits,
    _fast_download,
    _fast_search,
    _strict_download,
    _strict_search,
    parse_download,
    parse_image,
    parse_search,
    validate_batch,
)

NOW = time.time() - 60

GOOD = {
    "downloads": {"event_id": "e1", "user_id": "u1", "image_id": "i1", "timestamp": NOW, "search_id": "s1"},
    "searches": {"event_id": "e2", "user_id": "u1", "search_id": "s1", "query": "cats", "timestamp": NOW, "results": ["i1", "i2"]},
    "images": {
        "image_id": "i1", "timestamp": NOW, "deep": [0.1, 0.2, 0.3], "colors": [0.5, 0.5],
        "categories": ["animals"], "keywords": ["cat"], "creator": "c1", "metadata": {"title": "Cat"},
    },
}

LIMITS = Limits(deep_dim=3, colors_dim=2, max_results=50, max_message_bytes=4096)


def _with(topic: str, **changes: object) -> bytes:
    return edit_event(GOOD[topic], **changes)


BAD_CASES = [
    ("downloads", b'{"event_id": "e1", "user_id"', "malformed_json"),
    ("downloads", b"\xff\xfe{}", "invalid_utf8"),
    ("downloads", b"[1, 2]", "not_an_object"),
    ("downloads", b"", "malformed_json"),
    ("downloads", _with("downloads", image_id=...), "missing_field"),
    ("downloads", _with("downloads", color="red"), "unknown_field"),
    ("downloads", _with("downloads", user_id=42), "invalid_type"),
    ("downloads", _with("downloads", user_id=""), "invalid_id"),
    ("downloads", _with("downloads", user_id="x" * 300), "invalid_id"),
    ("downloads", _with("downloads", user_id="a\nb"), "invalid_id"),
    ("downloads", _with("downloads", timestamp=-5), "invalid_timestamp"),
    ("downloads", _with("downloads", timestamp=NOW + 10 * 86400), "invalid_timestamp"),
    ("downloads", _with("downloads", timestamp="yesterday"), "invalid_timestamp"),
    ("downloads", _with("downloads", timestamp="2026-01-01T00:00:00"), "invalid_timestamp"),
    ("downloads", _with("downloads", timestamp=True), "invalid_type"),
    ("downloads", b'{"event_id":"e","user_id":"u","image_id":"i","timestamp":NaN}', "non_finite"),
    ("downloads", b'{"event_id":"e","user_id":"u","image_id":"i","timestamp":Infinity}', "non_finite"),
    ("downloads", _with("downloads", padding=None) + b" " * 5000, "oversize"),
    ("searches", _with("searches", results="i1"), "invalid_type"),
    ("searches", _with("searches", results=[f"i{n}" for n in range(51)]), "list_too_long"),
    ("searches", _with("searches", results=["i1", "i1"]), "duplicate_id"),
    ("searches", _with("searches", results=["i1", 7]), "invalid_type"),
    ("searches", _with("searches", query=None), "invalid_type"),
    ("images", _with("images", deep=[0.1, 0.2]), "invalid_dimension"),
    ("images", _with("images", deep=[0.1, "x", 0.3]), "invalid_type"),
    ("images", _with("images", colors=[0.5, 0.25]).replace(b"0.25", b"1e400"), "non_finite"),
    ("images", _with("images", categories="animals"), "invalid_type"),
    ("images", _with("images", metadata=[1]), "invalid_type"),
    ("images", _with("images", keywords=["cat", ""]), "invalid_id"),
]


@pytest.mark.parametrize("topic", ["downloads", "searches", "images"])
def test_good_event_parses(topic: str) -> None:
    record = PARSERS[topic](json.dumps(GOOD[topic]).encode(), LIMITS)

    assert record.timestamp == pytest.approx(NOW)


def test_iso_timestamp_with_offset_parses() -> None:
    record = parse_download(_with("downloads", timestamp="2026-01-01T00:00:00Z"), LIMITS)

    assert record.timestamp == 1767225600.0


@pytest.mark.parametrize("topic,raw,reason", BAD_CASES)
def test_bad_event_gets_specific_reason(topic: str, raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        PARSERS[topic](raw, LIMITS)

    assert caught.value.reason == reason
    assert str(caught.value)


@pytest.mark.parametrize("topic,raw,reason", [case for case in BAD_INPUTS if case[2] not in {"unknown_image"}])
def test_corpus_entry_gets_its_reason(topic: str, raw: bytes, reason: str) -> None:
    limits = Limits(deep_dim=128, colors_dim=12)

    with pytest.raises(InvalidEvent) as caught:
        PARSERS[topic](raw, limits)

    assert caught.value.reason == reason


def test_error_names_field_and_value() -> None:
    with pytest.raises(InvalidEvent, match=r"field 'timestamp'.*'yesterday'"):
        parse_download(_with("downloads", timestamp="yesterday"), LIMITS)


def test_key_must_match_user_id() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_search(json.dumps(GOOD["searches"]).encode(), LIMITS, key=b"someone-else")

    assert caught.value.reason == "key_mismatch"


def test_record_round_trips_through_orjson_codec() -> None:
    record = parse_image(json.dumps(GOOD["images"]).encode(), LIMITS)

    restored = type(record).loads(record.dumps())

    assert restored == record
    assert orjson.loads(record.dumps())["deep"] == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("topic", ["downloads", "searches", "images"])
def test_json_schema_accepts_good_event(topic: str) -> None:
    schema = json.loads(json_schema_path(topic).read_text())

    jsonschema.validate(GOOD[topic], schema)


@pytest.mark.parametrize(
    "topic,raw,reason",
    [case for case in BAD_CASES if case[2] in {"missing_field", "unknown_field", "invalid_type", "invalid_id", "duplicate_id"}],
)
def test_json_schema_rejects_what_validator_rejects(topic: str, raw: bytes, reason: str) -> None:
    schema = json.loads(json_schema_path(topic).read_text())

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(raw), schema)


ID_VALUES = st.one_of(
    st.text(max_size=12), st.just(""), st.just(" "), st.just("a\\x01b"), st.just("x" * 300), st.integers(), st.none(),
)
TIME_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 2 * 10**9), st.booleans(), st.just("2026-01-01T00:00:00Z"),
)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries(
    {"event_id": ID_VALUES, "user_id": ID_VALUES, "image_id": ID_VALUES, "timestamp": TIME_VALUES},
    optional={"search_id": ID_VALUES, "extra": st.integers()},
))
def test_fast_download_path_agrees_with_strict(document: dict) -> None:
    fast = _fast_download(document, LIMITS)
    if fast is None:
        return
    assert fast == _strict_download(document, LIMITS)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({
    "event_id": ID_VALUES, "user_id": ID_VALUES, "search_id": ID_VALUES, "query": st.one_of(st.text(max_size=5), st.integers()),
    "timestamp": TIME_VALUES, "results": st.one_of(st.lists(ID_VALUES, max_size=4), st.text(max_size=3)),
}))
def test_fast_search_path_agrees_with_strict(document: dict) -> None:
    fast = _fast_search(document, LIMITS)
    if fast is None:
        return
    assert fast == _strict_search(document, LIMITS)


@pytest.mark.parametrize("topic", ["downloads", "searches"])
def test_batch_validation_matches_per_message(topic: str) -> None:
    limits = Limits(deep_dim=128, colors_dim=12)
    good = [(_with(topic, event_id=f"e{n}", user_id=f"u{n % 3}"), f"u{n % 3}".encode()) for n in range(40)]
    bad = [(raw, None) for kind, raw, _ in BAD_INPUTS if kind == topic]
    messages = good[:20] + bad + good[20:] + [(good[0][0], b"someone-else"), (None, None), (b"", None)]
    values, keys = [value for value, _ in messages], [key for _, key in messages]

    batch = validate_batch(topic, values, keys, limits)

    expected_rows, expected_rejections = [], []
    for row, (value, key) in enumerate(messages):
        try:
            expected_rows.append((row, VALIDATORS[topic](value, limits, key)))
        except InvalidEvent as exc:
            expected_rejections.append((row, exc.reason, str(exc)))
    assert batch.rows == [row for row, _ in expected_rows]
    assert [(row, exc.reason, str(exc)) for row, exc in batch.rejected] == expected_rejections
    for name, column in batch.columns.items():
        assert list(column) == [fields[name] for _, fields in expected_rows], name


def test_batch_validation_of_valid_batch_uses_columns() -> None:
    values = [_with("downloads", event_id=f"e{n}") for n in range(100)]

    batch = validate_batch("downloads", values, [b"u1"] * 100, LIMITS)

    assert batch.rows == list(range(100))
    assert batch.rejected == []
    assert batch.columns["event_id"] == [f"e{n}" for n in range(100)]
    assert batch.columns["timestamp"] == [pytest.approx(NOW)] * 100
