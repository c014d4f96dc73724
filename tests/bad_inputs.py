"""A corpus of bad input, one entry per kind: (topic kind, raw message value, expected dead-letter reason).

Valid events in the corpus use ids of the simulated marketplace (user-00001, img-000001) so that
only the named defect makes them invalid.
"""

from __future__ import annotations

import json
import time

NOW = time.time() - 3600

DOWNLOAD = {"event_id": "bad-download", "user_id": "user-00001", "image_id": "img-000001", "timestamp": NOW, "search_id": "none"}
SEARCH = {"event_id": "bad-search", "user_id": "user-00001", "search_id": "bad-s", "query": "q", "timestamp": NOW, "results": ["img-000001"]}
IMAGE = {
    "image_id": "bad-image", "timestamp": NOW, "deep": [0.1] * 128, "colors": [0.1] * 12,
    "categories": ["c"], "keywords": ["k"], "creator": "x", "metadata": {},
}


def edit_event(base: dict, **changes: object) -> bytes:
    """Return `base` as JSON bytes with fields changed; a value of ... removes the field."""
    document = dict(base)
    for field, value in changes.items():
        if value is ...:
            document.pop(field)
        else:
            document[field] = value
    return json.dumps(document).encode()


BAD_INPUTS: list[tuple[str, bytes, str]] = [
    ("downloads", b'{"event_id": "t1", "user_id": "user-00001", "image_id"', "malformed_json"),
    ("downloads", b"\xff\xfe not utf-8", "invalid_utf8"),
    ("downloads", b'"just a string"', "not_an_object"),
    ("downloads", edit_event(DOWNLOAD, image_id=...), "missing_field"),
    ("downloads", edit_event(DOWNLOAD, referrer="ad"), "unknown_field"),
    ("downloads", edit_event(DOWNLOAD, image_id=17), "invalid_type"),
    ("downloads", edit_event(DOWNLOAD, user_id=""), "invalid_id"),
    ("downloads", edit_event(DOWNLOAD, image_id="i" * 300), "invalid_id"),
    ("downloads", edit_event(DOWNLOAD, timestamp=-1), "invalid_timestamp"),
    ("downloads", edit_event(DOWNLOAD, timestamp=NOW + 400 * 86400), "invalid_timestamp"),
    ("downloads", edit_event(DOWNLOAD, timestamp="last tuesday"), "invalid_timestamp"),
    ("downloads", edit_event(DOWNLOAD, timestamp="2026-01-01T10:00:00"), "invalid_timestamp"),
    ("downloads", edit_event(DOWNLOAD, timestamp=False), "invalid_type"),
    ("downloads", edit_event(DOWNLOAD).replace(str(NOW).encode(), b"NaN"), "non_finite"),
    ("downloads", edit_event(DOWNLOAD, image_id="no-such-image"), "unknown_image"),
    ("downloads", edit_event(DOWNLOAD, padding="x" * 300_000), "oversize"),
    ("searches", edit_event(SEARCH, results=[f"img-{n:06d}" for n in range(10_000)]), "list_too_long"),
    ("searches", edit_event(SEARCH, results=["img-000001", "img-000001"]), "duplicate_id"),
    ("searches", edit_event(SEARCH, results="img-000001"), "invalid_type"),
    ("searches", edit_event(SEARCH, query=["a"]), "invalid_type"),
    ("searches", edit_event(SEARCH, query="q" * 2000), "list_too_long"),
    ("searches", edit_event(SEARCH, search_id=...), "missing_field"),
    ("searches", b"[]", "not_an_object"),
    ("searches", b'{"event_id": "t2", "user_id": "user-00001",}', "malformed_json"),
    ("images", edit_event(IMAGE, deep=[0.1] * 127), "invalid_dimension"),
    ("images", edit_event(IMAGE, colors=[0.1] * 13), "invalid_dimension"),
    ("images", edit_event(IMAGE).replace(b"0.1, 0.1, 0.1]", b"0.1, 0.1, Infinity]", 1), "non_finite"),
    ("images", edit_event(IMAGE).replace(b"0.1, 0.1, 0.1]", b"0.1, 0.1, 1e999]", 1), "non_finite"),
    ("images", edit_event(IMAGE, deep=["0.1"] * 128), "invalid_type"),
    ("images", edit_event(IMAGE, categories=["ok", ""]), "invalid_id"),
    ("images", edit_event(IMAGE, keywords=[f"k{n}" for n in range(300)]), "list_too_long"),
    ("images", edit_event(IMAGE, metadata="free text"), "invalid_type"),
    ("images", edit_event(IMAGE, image_id="a\u0000b"), "invalid_id"),
]
