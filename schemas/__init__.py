"""Event and record contracts: Faust records, strict validation and JSON Schema files."""

from importlib import resources
from pathlib import Path

from stylestream.schemas.errors import StylestreamError
from stylestream.schemas.events import Download, Image, Search
from stylestream.schemas.validation import InvalidEvent, Limits, parse_download, parse_image, parse_search


def json_schema_path(topic: str) -> Path:
    """Return the path of the JSON Schema file for a topic: downloads, searches or images."""
    return Path(str(resources.files("stylestream.schemas").joinpath(f"json/{topic}.schema.json")))


__all__ = [
    "Download", "Image", "InvalidEvent", "Limits", "Search", "StylestreamError",
    "json_schema_path", "parse_download", "parse_image", "parse_search",
]
