"""Producing JSONL or CSV events into a topic with kafka-python.

Lines are sent as they are, without validation, so the worker's dead-letter path receives exactly what a
producer sent. The message key is the event's user_id (downloads, searches) or image_id (images)
when the line parses as JSON; unparseable lines are sent without a key.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Iterator

import orjson
from kafka import KafkaProducer
from tqdm import tqdm

from stylestream.schemas.errors import StylestreamError

log = logging.getLogger(__name__)

KEY_FIELDS = {"downloads": "user_id", "searches": "user_id", "images": "image_id"}
JSON_CELL_FIELDS = {"results", "deep", "colors", "categories", "keywords", "metadata"}


class ProduceError(StylestreamError):
    """An input file could not be read or a message could not be delivered."""


def _csv_value(field: str, cell: str) -> Any:
    if cell == "":
        return None
    if field in JSON_CELL_FIELDS or cell[:1] in "[{":
        try:
            return orjson.loads(cell)
        except orjson.JSONDecodeError:
            return cell
    if field == "timestamp":
        try:
            return float(cell)
        except ValueError:
            return cell
    return cell


def iter_messages(path: Path) -> Iterator[bytes]:
    """Yield message values from a JSONL file (one per non-blank line) or a CSV file with a header."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                document = {field: _csv_value(field, cell) for field, cell in row.items() if cell != ""}
                yield orjson.dumps(document)
        return
    with path.open("rb") as handle:
        for line in handle:
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield line


def message_key(value: bytes, topic_kind: str) -> bytes | None:
    """Return the partitioning key of a message, or None when it is not a JSON object with that field."""
    field = KEY_FIELDS.get(topic_kind)
    if field is None:
        return None
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    key = document.get(field) if isinstance(document, dict) else None
    return key.encode("utf-8") if isinstance(key, str) and key else None


def count_lines(path: Path) -> int | None:
    """Return the number of messages in a file, for the progress bar."""
    try:
        return sum(1 for _ in iter_messages(path))
    except (OSError, UnicodeDecodeError):
        return None


def produce_file(
    bootstrap: str,
    topic: str,
    path: Path,
    topic_kind: str | None = None,
    progress: bool = True,
    max_request_size: int = 4 * 1048576,
    client_options: dict[str, Any] | None = None,
) -> int:
    """Send every message of `path` to `topic`; return the number sent.

    `topic_kind` (downloads, searches or images) picks the key field; it defaults to the topic name.
    `client_options` are kafka-python security settings.
    """
    if not path.exists():
        raise ProduceError(f"input file {path} was not found")
    kind = topic_kind or topic
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024,
        max_request_size=max_request_size, retries=5, client_id="stylestream-produce", **(client_options or {}),
    )
    sent = 0
    try:
        with tqdm(total=count_lines(path) if progress else None, unit="msg", desc=f"{path.name} -> {topic}", disable=not progress) as bar:
            for value in iter_messages(path):
                producer.send(topic, value=value, key=message_key(value, kind))
                sent += 1
                bar.update(1)
        producer.flush(timeout=60)
    except Exception as exc:
        raise ProduceError(f"producing {path} to {topic} failed after {sent} messages: {exc}") from exc
    finally:
        producer.close(timeout=10)
    log.info("Produced %d messages from %s to %s", sent, path, topic)
    return sent
