"""Reading image files and their metadata sidecars.

PNG and JPEG files are read with Pillow and SVG files are rendered with cairosvg. Metadata comes
from either of two sidecar formats, both JSON objects with the optional fields of SIDECAR_FIELDS:

- `<file>.json` next to the image, e.g. `star.svg.json` for `star.svg`;
- a catalogue JSONL file, one object per image, with a `path` field relative to the catalogue's
  folder (or absolute) and optionally `alternates`, further paths of the same picture tried in
  order when `path` cannot be read.

Without `image_id`, an image is identified by the SHA-1 of its file's bytes (`img-` and 16 hex
digits), so the same picture gets the same id wherever it lies.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from PIL import Image, UnidentifiedImageError

from stylestream.models.featurize.backbone import INPUT_SIZE
from stylestream.schemas.errors import StylestreamError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".svg"}
SIDECAR_FIELDS = {"image_id", "title", "categories", "keywords", "creator", "timestamp", "metadata", "path", "alternates"}
MAX_PIXELS = 40_000_000


class ImageReadError(StylestreamError):
    """An image file could not be read or decoded. The message gives the reason."""


class SidecarError(StylestreamError):
    """A sidecar or catalogue line is not valid JSON or has a field of the wrong type."""


@dataclass
class ImageItem:
    """One image to featurize: its file paths, in the order to try, and its metadata."""

    path: Path
    alternates: list[Path] = field(default_factory=list)
    image_id: str | None = None
    title: str | None = None
    categories: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    creator: str | None = None
    timestamp: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _labels(value: Any, name: str, source: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SidecarError(f"{source}: field {name!r} must be a list of strings, got {value!r:.80}")
    unique: list[str] = []
    for label in (item.strip() for item in value):
        if label and label not in unique:
            unique.append(label)
    return unique


def item_from_document(document: dict[str, Any], path: Path, base: Path, source: str) -> ImageItem:
    """Build an ImageItem from a sidecar object; relative `alternates` resolve against `base`."""
    unknown = set(document) - SIDECAR_FIELDS
    if unknown:
        raise SidecarError(f"{source}: unknown fields {sorted(unknown)}; allowed: {sorted(SIDECAR_FIELDS)}")
    timestamp = document.get("timestamp")
    if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, (int, float))):
        raise SidecarError(f"{source}: field 'timestamp' must be epoch seconds, got {timestamp!r}")
    metadata = document.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise SidecarError(f"{source}: field 'metadata' must be an object, got {metadata!r:.80}")
    for name in ("image_id", "title", "creator"):
        if document.get(name) is not None and not isinstance(document[name], str):
            raise SidecarError(f"{source}: field {name!r} must be a string, got {document[name]!r:.80}")
    return ImageItem(
        path=path,
        alternates=[base / alternate for alternate in document.get("alternates") or []],
        image_id=document.get("image_id") or None,
        title=document.get("title") or None,
        categories=_labels(document.get("categories"), "categories", source),
        keywords=_labels(document.get("keywords"), "keywords", source),
        creator=(document.get("creator") or "").strip() or None,
        timestamp=float(timestamp) if timestamp is not None else None,
        metadata=metadata,
    )


def item_for_file(path: Path) -> ImageItem:
    """Build the ImageItem of an image file, with its `<file>.json` sidecar when one exists."""
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.exists():
        return ImageItem(path=path)
    try:
        document = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SidecarError(f"sidecar {sidecar} is not readable JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise SidecarError(f"sidecar {sidecar} must hold a JSON object")
    return item_from_document(document, path, path.parent, str(sidecar))


def iter_catalogue(catalogue: Path) -> Iterator[ImageItem]:
    """Yield the ImageItems of a catalogue JSONL file."""
    base = catalogue.parent
    with catalogue.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            source = f"{catalogue}:{number}"
            try:
                document = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SidecarError(f"{source} is not valid JSON: {exc}") from exc
            if not isinstance(document, dict) or not isinstance(document.get("path"), str):
                raise SidecarError(f"{source} must be a JSON object with a string field 'path'")
            yield item_from_document(document, base / document["path"], base, source)


def iter_items(paths: Iterable[Path]) -> Iterator[ImageItem]:
    """Yield an ImageItem per image file; folders are searched recursively, in sorted order."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES:
                    yield item_for_file(child)
        else:
            yield item_for_file(path)


def file_image_id(data: bytes) -> str:
    """Return the default image id of a file: `img-` and the first 16 hex digits of its SHA-1."""
    return "img-" + hashlib.sha1(data).hexdigest()[:16]


def _render_svg(data: bytes, path: Path) -> Image.Image:
    import cairosvg

    try:
        # Render at INPUT_SIZE wide, then shrink to fit a square so tall drawings keep their shape.
        png = cairosvg.svg2png(bytestring=data, output_width=INPUT_SIZE, url=str(path))
    except Exception as exc:  # cairosvg raises many types (ValueError, KeyError, XML errors).
        # NOTE: cairosvg 2.9.1 fails on some valid SVGs, e.g. lengths given in percent. For 30 of
        # the 7,458 openclipart drawings the catalogue's PNG alternate was used instead.
        raise ImageReadError(f"SVG rendering failed: {type(exc).__name__}: {exc}") from exc
    image = Image.open(io.BytesIO(png))
    image.load()
    if image.height > INPUT_SIZE:
        image.thumbnail((INPUT_SIZE, INPUT_SIZE))
    return image


def read_image(path: Path) -> tuple[Image.Image, bytes]:
    """Read an image file as RGBA, returning it with the file's bytes; raise ImageReadError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"cannot read file: {exc.strerror or exc}") from exc
    if not data:
        raise ImageReadError("file is empty")
    if path.suffix.lower() == ".svg":
        image = _render_svg(data, path)
    else:
        try:
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise ImageReadError(f"image is {image.width}x{image.height}, over the limit of {MAX_PIXELS} pixels")
            image.load()
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageReadError(f"not a readable PNG or JPEG: {exc}") from exc
    if image.width == 0 or image.height == 0:
        raise ImageReadError("image has no pixels")
    return image.convert("RGBA"), data


def on_white(image: Image.Image) -> Image.Image:
    """Composite an RGBA image onto a white background and return it as RGB."""
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


def pad_square(image: Image.Image) -> Image.Image:
    """Centre an RGB image on a white square so resizing keeps its aspect ratio."""
    side = max(image.size)
    if image.width == image.height:
        return image
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square
