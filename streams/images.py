"""Image style vectors: encoding images into the store, and a bounded cache for look-ups.

A download names an image that may not be known yet (its images event is late). The look-up waits
up to `image_wait_seconds`, polling the store, and the caller dead-letters the download with reason
`unknown_image` when the image is still unknown. Search results that are unknown are left out of
the search's negatives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Iterable, Sequence

import numpy as np

from stylestream.models.encoder import StyleEncoder
from stylestream.schemas.events import Image
from stylestream.streams.store import AsyncStyleStore

log = logging.getLogger(__name__)


class ImageVectorCache:
    """A least-recently-used cache of image style vectors in front of the images collection."""

    def __init__(self, store: AsyncStyleStore, capacity: int) -> None:
        self.store = store
        self.capacity = capacity
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._vectors)

    def put(self, image_id: str, vector: np.ndarray) -> None:
        """Cache a vector, evicting the least recently used one beyond capacity."""
        if self.capacity <= 0:
            return
        self._vectors[image_id] = vector
        self._vectors.move_to_end(image_id)
        while len(self._vectors) > self.capacity:
            self._vectors.popitem(last=False)

    async def get_many(self, image_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """Return the vectors of the known images among `image_ids`, from the cache or the store."""
        found: dict[str, np.ndarray] = {}
        missing: list[str] = []
        for image_id in image_ids:
            vector = self._vectors.get(image_id)
            if vector is None:
                missing.append(image_id)
            else:
                self._vectors.move_to_end(image_id)
                found[image_id] = vector
        if missing:
            fetched = await self.store.call("image_vectors", missing)
            for image_id, vector in fetched.items():
                self.put(image_id, vector)
            found.update(fetched)
        return found

    async def wait_for(self, image_ids: Sequence[str], timeout: float, poll: float = 0.1) -> dict[str, np.ndarray]:
        """Like get_many, but poll the store for up to `timeout` seconds until every image is known."""
        deadline = time.monotonic() + timeout
        while True:
            found = await self.get_many(image_ids)
            if len(found) == len(set(image_ids)) or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(poll)


class ImageIndexer:
    """Encode image events with the style encoder and upsert them into the images collection."""

    def __init__(self, encoder: StyleEncoder, store: AsyncStyleStore, cache: ImageVectorCache) -> None:
        self.encoder = encoder
        self.store = store
        self.cache = cache

    async def index(self, images: Sequence[Image]) -> int:
        """Encode and upsert a batch of images; return how many were written."""
        if not images:
            return 0
        vectors = self.encoder.encode(
            [image.deep for image in images],
            [image.colors for image in images],
            [image.categories for image in images],
            [image.keywords for image in images],
        )
        payloads = [
            {
                "image_id": image.image_id,
                "timestamp": image.timestamp,
                "categories": image.categories,
                "keywords": image.keywords,
                "creator": image.creator,
                "metadata": image.metadata or {},
                "model_version": self.encoder.model_version,
            }
            for image in images
        ]
        await self.store.call("upsert_images", payloads, vectors)
        for image, vector in zip(images, vectors):
            self.cache.put(image.image_id, vector.astype(np.float64))
        return len(images)
