"""Turning ImageItems into `images` events: read, batch through the backbone, add colour features."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from stylestream.models.featurize.backbone import Backbone
from stylestream.models.featurize.colors import color_features
from stylestream.models.featurize.loading import ImageItem, ImageReadError, file_image_id, on_white, pad_square, read_image

log = logging.getLogger(__name__)

DECIMALS = 6


@dataclass
class FeaturizeReport:
    """Counts of one featurize run; `skipped` maps each unreadable path to its reason."""

    written: int = 0
    already_done: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Return the rate of featurized images over the run's wall-clock time."""
        return self.written / self.seconds if self.seconds > 0 else 0.0


def _read_first(item: ImageItem) -> tuple[Any, bytes, Path]:
    """Read the first readable path of an item; raise ImageReadError with every reason otherwise."""
    reasons = []
    for path in [item.path, *item.alternates]:
        try:
            image, data = read_image(path)
            return image, data, path
        except ImageReadError as exc:
            reasons.append(f"{path}: {exc}")
    raise ImageReadError("; ".join(reasons))


def _event(item: ImageItem, image_id: str, deep: np.ndarray, colors: np.ndarray, path: Path) -> dict[str, Any]:
    metadata = dict(item.metadata)
    metadata.setdefault("path", str(path))
    if item.title:
        metadata.setdefault("title", item.title)
    timestamp = item.timestamp if item.timestamp is not None else path.stat().st_mtime
    event: dict[str, Any] = {
        "image_id": image_id,
        "timestamp": round(float(timestamp), 3),
        "deep": np.round(deep.astype(np.float64), DECIMALS).tolist(),
        "colors": np.round(colors.astype(np.float64), DECIMALS).tolist(),
        "categories": item.categories,
        "keywords": item.keywords,
        "metadata": metadata,
    }
    if item.creator:
        event["creator"] = item.creator
    return event


def featurize_items(
    items: Iterable[ImageItem],
    backbone: Backbone,
    report: FeaturizeReport,
    batch_size: int = 32,
    done_ids: set[str] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield an `images` event per readable item, in input order, batching images through `backbone`.

    Items whose image id is in `done_ids` are counted in `report.already_done` and not read again
    when their id comes from metadata. Unreadable items are logged with the reason and recorded in
    `report.skipped`. `on_progress(n)` is called after each n items are handled.
    """
    done_ids = done_ids if done_ids is not None else set()
    started = time.monotonic()
    pending: list[tuple[ImageItem, str, Any, Path]] = []

    def flush() -> Iterator[dict[str, Any]]:
        pictures = [pad_square(on_white(image)) for _, _, image, _ in pending]
        deep = backbone.embed(pictures)
        for row, (item, image_id, image, path) in enumerate(pending):
            report.written += 1
            yield _event(item, image_id, deep[row], color_features(image), path)
        if on_progress is not None:
            on_progress(len(pending))
        pending.clear()

    for item in items:
        if item.image_id is not None and item.image_id in done_ids:
            report.already_done += 1
            if on_progress is not None:
                on_progress(1)
            continue
        try:
            image, data, path = _read_first(item)
        except ImageReadError as exc:
            report.skipped[str(item.path)] = str(exc)
            log.warning("Skipped %s: %s", item.path, exc)
            if on_progress is not None:
                on_progress(1)
            continue
        image_id = item.image_id or file_image_id(data)
        if image_id in done_ids:
            report.already_done += 1
            if on_progress is not None:
                on_progress(1)
            continue
        done_ids.add(image_id)
        pending.append((item, image_id, image, path))
        if len(pending) >= batch_size:
            yield from flush()
    if pending:
        yield from flush()
    report.seconds += time.monotonic() - started
