"""The openclipart catalogue from Debian's `openclipart-svg` and `openclipart-png` packages.

Debian bookworm ships version 1:0.18+dfsg-19 of both packages: 8,121 SVG drawings under
`usr/share/openclipart/svg/<category>/...`, 22 top-level categories, and a PNG rendering of each at
the same relative path under `.../png/`. Each SVG carries RDF metadata with `dc:title`, the
keywords as `dc:subject` items and the creator as `dc:creator`. The packages hold no other
metadata file. Identical SVG files appear under several paths; the catalogue keeps the first path
in sorted order, which leaves 7,458 drawings.

Catalogue lines follow the sidecar format of `stylestream.models.featurize.loading`: `path` is the
SVG, `alternates` the PNG rendering, `categories` the top-level folder, `keywords` the lower-cased
`dc:subject` items, and `image_id` is `oc-` and the first 12 hex digits of the SVG's MD5.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from stylestream.schemas.errors import StylestreamError

log = logging.getLogger(__name__)

PACKAGES = ("openclipart-svg", "openclipart-png")
SVG_ROOT = Path("usr/share/openclipart/svg")
PNG_ROOT = Path("usr/share/openclipart/png")
NAMESPACES = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "cc": "http://web.resource.org/cc/",
}
_RDF_BLOCK = re.compile(rb"<rdf:RDF\b.*?</rdf:RDF>", re.S)


class DatasetError(StylestreamError):
    """A dataset could not be fetched, unpacked or parsed."""


@dataclass
class ClipArt:
    """One drawing of the catalogue, as written to catalogue.jsonl."""

    image_id: str
    path: str
    alternates: list[str]
    title: str
    categories: list[str]
    keywords: list[str]
    creator: str | None
    timestamp: float
    metadata: dict[str, Any] = field(default_factory=dict)


def fetch_packages(cache_dir: Path) -> Path:
    """Download the Debian packages with apt-get and unpack them with dpkg-deb; return the folder.

    Both steps are skipped when their output is already in `cache_dir`.
    """
    cache_dir = cache_dir.resolve()
    unpacked = cache_dir / "unpacked"
    if (unpacked / SVG_ROOT).is_dir() and (unpacked / ".complete").exists():
        return unpacked
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DatasetError(
                f"{tool} was not found, so the openclipart packages cannot be fetched here; unpack "
                f"{' and '.join(PACKAGES)} elsewhere (dpkg-deb -x) and pass the folder with --source"
            )
    cache_dir.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        if not list(cache_dir.glob(f"{package}_*.deb")):
            log.info("Downloading %s with apt-get into %s", package, cache_dir)
            _run(["apt-get", "download", package], cache_dir)
    unpacked.mkdir(exist_ok=True)
    for deb in sorted(cache_dir.glob("openclipart-*.deb")):
        log.info("Unpacking %s", deb.name)
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)], cache_dir)
    (unpacked / ".complete").touch()
    return unpacked


def _run(command: list[str], cwd: Path) -> None:
    try:
        subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        hint = " (run `apt-get update` first?)" if command[0] == "apt-get" else ""
        raise DatasetError(f"`{' '.join(command)}` failed with code {exc.returncode}{hint}: {exc.stderr.strip()[-500:]}") from exc


def svg_root(source: Path) -> Path:
    """Find the SVG folder in an unpacked package or a copy of `usr/share/openclipart/svg`."""
    for candidate in (source / SVG_ROOT, source / "svg", source):
        if candidate.is_dir() and any(candidate.glob("*/*.svg")):
            return candidate
    raise DatasetError(
        f"no openclipart SVG files found under {source}; pass the folder where openclipart-svg was "
        "unpacked (it contains usr/share/openclipart/svg)"
    )


def parse_rdf(data: bytes) -> dict[str, Any]:
    """Read title, keywords and creator from an SVG's RDF metadata; missing parts are empty."""
    match = _RDF_BLOCK.search(data)
    if match is None:
        return {"title": "", "keywords": [], "creator": None}
    try:
        rdf = ET.fromstring(match.group(0))
    except ET.ParseError:
        return {"title": "", "keywords": [], "creator": None}
    work = rdf.find("cc:Work", NAMESPACES)
    if work is None:
        return {"title": "", "keywords": [], "creator": None}
    keywords: list[str] = []
    for item in work.findall("dc:subject/rdf:Bag/rdf:li", NAMESPACES):
        keyword = (item.text or "").strip().lower()
        if keyword and keyword not in keywords:
            keywords.append(keyword)
    # NOTE: creator names are used as written, so one person under two spellings counts as two.
    creator = (work.findtext("dc:creator/cc:Agent/dc:title", default="", namespaces=NAMESPACES) or "").strip()
    title = (work.findtext("dc:title", default="", namespaces=NAMESPACES) or "").strip()
    return {"title": title, "keywords": keywords, "creator": creator or None}


def iter_catalogue_entries(source: Path, relative_to: Path) -> Iterator[ClipArt]:
    """Yield one ClipArt per distinct SVG file under `source`, with paths relative to `relative_to`."""
    root = svg_root(source)
    png_root = root.parent / "png"
    seen: set[str] = set()
    for svg in sorted(root.rglob("*.svg")):
        data = svg.read_bytes()
        digest = hashlib.md5(data).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        relative = svg.relative_to(root)
        png = png_root / relative.with_suffix(".png")
        rdf = parse_rdf(data)
        yield ClipArt(
            image_id=f"oc-{digest[:12]}",
            path=_relative(svg, relative_to),
            alternates=[_relative(png, relative_to)] if png.exists() else [],
            title=rdf["title"] or svg.stem,
            categories=[relative.parts[0]],
            keywords=rdf["keywords"],
            creator=rdf["creator"],
            timestamp=round(svg.stat().st_mtime, 3),
            metadata={"source": "openclipart 0.18 (Debian)", "file": str(relative)},
        )


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())


def write_catalogue(source: Path, output: Path) -> list[ClipArt]:
    """Build the catalogue from an unpacked package folder and write it as JSONL to `output`."""
    output.parent.mkdir(parents=True, exist_ok=True)
    entries = list(iter_catalogue_entries(source, output.parent))
    with output.open("w", encoding="utf-8") as handle:
        for entry in entries:
            handle.write(json.dumps(asdict(entry)) + "\n")
    creators = {entry.creator for entry in entries if entry.creator}
    categories = {entry.categories[0] for entry in entries}
    log.info("Wrote %d drawings by %d creators in %d categories to %s", len(entries), len(creators), len(categories), output)
    return entries


def read_catalogue(path: Path) -> list[dict[str, Any]]:
    """Read a catalogue JSONL file written by `write_catalogue`."""
    if not path.exists():
        raise DatasetError(f"catalogue {path} was not found; build it with `stylestream datasets openclipart`")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
