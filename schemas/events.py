"""Event records for the three input topics: downloads, searches and images.

Timestamps are event time as float UTC epoch seconds once validated. Producers may send epoch
seconds or ISO-8601 strings; `stylestream.schemas.validation` converts them.
"""

from __future__ import annotations

from typing import Any

import faust

from stylestream.schemas.codec import CODEC_NAME


class Download(faust.Record, serializer=CODEC_NAME):
    """A user downloaded an image, optionally from a search. Keyed by user_id."""

    event_id: str
    user_id: str
    image_id: str
    timestamp: float
    search_id: str | None = None


class Search(faust.Record, serializer=CODEC_NAME):
    """A user ran a search and was shown `results` (image ids, in rank order). Keyed by user_id."""

    event_id: str
    user_id: str
    search_id: str
    query: str
    timestamp: float
    results: list[str]


class Image(faust.Record, serializer=CODEC_NAME):
    """An image and its features of several natures. Keyed by image_id.

    `deep` contains CNN features, `colors` a dominant-hue histogram, and `categories` and `keywords`
    are lists of strings. `metadata` is free-form and stored with the image's payload.
    """

    image_id: str
    timestamp: float
    deep: list[float]
    colors: list[float]
    categories: list[str]
    keywords: list[str]
    creator: str | None = None
    metadata: dict[str, Any] | None = None


EVENT_TYPES: dict[str, type[faust.Record]] = {"downloads": Download, "searches": Search, "images": Image}
