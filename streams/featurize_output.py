"""Writing featurized `images` events to JSONL (resumable) or to a Kafka topic."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson
from tqdm import tqdm

from stylestream.models.featurize import Backbone, FeaturizeReport, ImageItem, featurize_items
from stylestream.schemas.errors import StylestreamError

log = logging.getLogger(__name__)


class FeaturizeOutputError(StylestreamError):
    """The output JSONL could not be read for resuming, or events could not be delivered."""


def existing_ids(output: Path) -> set[str]:
    """Return the image ids already in an output JSONL file; a torn last line is ignored."""
    if not output.exists():
        return set()
    ids: set[str] = set()
    with output.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                ids.add(orjson.loads(line)["image_id"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.warning("Ignoring unreadable line %d of %s (an interrupted write?)", number, output)
    return ids


def _truncate_torn_line(output: Path) -> None:
    """Drop a last line without a newline, left by an interrupted run, so appends stay valid JSONL."""
    if not output.exists() or output.stat().st_size == 0:
        return
    data = output.read_bytes()
    if not data.endswith(b"\n"):
        output.write_bytes(data[: data.rfind(b"\n") + 1])


def featurize_to_jsonl(
    items: Iterable[ImageItem], total: int | None, backbone: Backbone, output: Path, batch_size: int = 32, progress: bool = True
) -> FeaturizeReport:
    """Append events for the images not yet in `output`; return the run's report."""
    output.parent.mkdir(parents=True, exist_ok=True)
    _truncate_torn_line(output)
    done = existing_ids(output)
    report = FeaturizeReport()
    with output.open("a", encoding="utf-8") as handle, tqdm(total=total, unit="img", desc="featurize", disable=not progress) as bar:
        for event in featurize_items(items, backbone, report, batch_size, done_ids=done, on_progress=bar.update):
            handle.write(json.dumps(event) + "\n")
            handle.flush()
    log.info("Wrote %d events to %s; %d already there, %d skipped", report.written, output, report.already_done, len(report.skipped))
    return report


def featurize_to_topic(
    items: Iterable[ImageItem], total: int | None, backbone: Backbone, bootstrap: str, topic: str, batch_size: int = 32, progress: bool = True
) -> FeaturizeReport:
    """Send an event per readable image to `topic`, keyed by image_id; return the run's report."""
    from kafka import KafkaProducer

    report = FeaturizeReport()
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_request_size=4 * 1048576, retries=5,
        client_id="stylestream-featurize",
    )
    try:
        with tqdm(total=total, unit="img", desc=f"featurize -> {topic}", disable=not progress) as bar:
            events: Iterator[dict[str, Any]] = featurize_items(items, backbone, report, batch_size, on_progress=bar.update)
            for event in events:
                producer.send(topic, value=orjson.dumps(event), key=event["image_id"].encode("utf-8"))
        producer.flush(timeout=60)
    except Exception as exc:
        raise FeaturizeOutputError(f"sending image events to {topic} failed after {report.written} events: {exc}") from exc
    finally:
        producer.close(timeout=10)
    return report
