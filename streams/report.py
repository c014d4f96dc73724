"""A self-contained HTML report of chosen creatives: downloads, recommendations and re-ranking.

Images and plots are embedded as base64 data URIs, so the page needs no other file and no network.
The report reads the output folder of `stylestream datasets openclipart`: catalogue.jsonl,
creatives/ (events and truth), figures.json when present, and the embedded Qdrant store in run/.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from stylestream.models.featurize.loading import ImageReadError, on_white, read_image  # noqa: E402
from stylestream.schemas.errors import StylestreamError  # noqa: E402
from stylestream.streams.query import recommend, rerank  # noqa: E402
from stylestream.streams.settings import Settings  # noqa: E402
from stylestream.streams.store import StyleStore  # noqa: E402

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 96
SEARCH_RESULTS = 40
SHOWN = 10
RERANK_ALPHA = 0.5
STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
.grid { display: flex; flex-wrap: wrap; gap: 6px; margin: 4px 0 12px; }
figure { margin: 0; width: 104px; font-size: 11px; text-align: center; }
figure img { width: 96px; height: 96px; object-fit: contain; border: 3px solid #ddd; background: #fff; }
figure.match img { border-color: #2a9d4b; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: left; }
"""


class ReportError(StylestreamError):
    """The report's input folder lacks a file, or a requested user is unknown."""


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise ReportError(f"{path} was not found; run `stylestream datasets openclipart` first")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def png_data_uri(data: bytes) -> str:
    """Return a PNG's bytes as a data URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def thumbnail_uri(entry: dict[str, Any], base: Path) -> str:
    """Render a catalogue entry's picture as a small PNG data URI; a grey square when unreadable."""
    from PIL import Image

    for path in [entry["path"], *entry.get("alternates", [])]:
        try:
            image, _ = read_image(base / path)
        except ImageReadError as exc:
            log.warning("No thumbnail from %s: %s", path, exc)
            continue
        picture = on_white(image)
        picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        break
    else:
        picture = Image.new("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE), (200, 200, 200))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return png_data_uri(buffer.getvalue())


def plot_uri(figure: Any) -> str:
    """Render a matplotlib figure as a PNG data URI and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return png_data_uri(buffer.getvalue())


class _Page:
    """Collects HTML parts and renders each catalogue picture once."""

    def __init__(self, catalogue: dict[str, dict[str, Any]], base: Path) -> None:
        self.catalogue = catalogue
        self.base = base
        self.parts: list[str] = []
        self._thumbnails: dict[str, str] = {}

    def add(self, text: str) -> None:
        self.parts.append(text)

    def grid(self, image_ids: list[str], preferred: set[str]) -> None:
        figures = []
        for image_id in image_ids:
            entry = self.catalogue.get(image_id)
            if entry is None:
                continue
            if image_id not in self._thumbnails:
                self._thumbnails[image_id] = thumbnail_uri(entry, self.base)
            creator = entry.get("creator") or "unknown creator"
            css = " class=\"match\"" if creator in preferred else ""
            caption = html.escape(f"{entry.get('title', image_id)[:28]} / {creator}")
            figures.append(f"<figure{css}><img src=\"{self._thumbnails[image_id]}\" alt=\"{html.escape(image_id)}\">"
                           f"<figcaption>{caption}</figcaption></figure>")
        self.add("<div class=\"grid\">" + "".join(figures) + "</div>")


def search_results(catalogue: dict[str, dict[str, Any]], keyword: str, count: int = SEARCH_RESULTS) -> list[str]:
    """Return a style-blind search: drawings with `keyword` in an order fixed by a hash of keyword and id."""
    matching = [image_id for image_id, entry in catalogue.items() if keyword in entry.get("keywords", [])]
    matching.sort(key=lambda image_id: hashlib.sha1(f"{keyword}/{image_id}".encode()).hexdigest())
    return matching[:count]


def _share(image_ids: list[str], catalogue: dict[str, dict[str, Any]], preferred: set[str]) -> float:
    return sum(catalogue[i].get("creator") in preferred for i in image_ids) / len(image_ids) if image_ids else 0.0


def _figures_plot(figures: dict[str, Any]) -> str:
    names = ["style_match_at_10", "chance_style_match_at_10", "best_style_match_at_10",
             "unfiltered_style_match_at_10", "chance_unfiltered_style_match_at_10"]
    shown = [name for name in names if name in figures]
    figure, axes = plt.subplots(figsize=(7, 3))
    axes.barh([name.replace("_at_10", "") for name in shown], [figures[name] for name in shown], color="#2a9d4b")
    axes.set_xlim(0, 1)
    axes.set_xlabel("share of top 10 by a preferred creator")
    return plot_uri(figure)


def _rerank_plot(before_after: dict[str, tuple[float, float]]) -> str:
    figure, axes = plt.subplots(figsize=(7, 3))
    users = list(before_after)
    positions = range(len(users))
    axes.bar([p - 0.2 for p in positions], [before_after[u][0] for u in users], width=0.4, label="search order")
    axes.bar([p + 0.2 for p in positions], [before_after[u][1] for u in users], width=0.4, label=f"re-ranked (alpha {RERANK_ALPHA})")
    axes.set_xticks(list(positions), users, rotation=20)
    axes.set_ylim(0, 1)
    axes.set_ylabel("preferred-creator share, top 10")
    axes.legend()
    return plot_uri(figure)


def build_report(data_dir: Path, output: Path, user_ids: list[str], count: int = 3, query: str | None = None) -> Path:
    """Write the HTML report for `user_ids` (default: the first `count` creatives); return its path."""
    catalogue = {entry["image_id"]: entry for entry in _read_jsonl(data_dir / "catalogue.jsonl")}
    truth_path = data_dir / "creatives" / "truth.json"
    if not truth_path.exists():
        raise ReportError(f"{truth_path} was not found; run `stylestream datasets openclipart` first")
    truth = json.loads(truth_path.read_text())
    user_ids = user_ids or list(truth["user_creators"])[:count]
    unknown = [user for user in user_ids if user not in truth["user_creators"]]
    if unknown:
        raise ReportError(f"users {unknown} were not found in {truth_path}; pass ids such as {list(truth['user_creators'])[:3]}")
    queries = {search["search_id"]: search["query"] for search in _read_jsonl(data_dir / "creatives" / "searches.jsonl")}
    downloads = _read_jsonl(data_dir / "creatives" / "downloads.jsonl")
    figures_path = data_dir / "figures.json"
    figures = json.loads(figures_path.read_text()) if figures_path.exists() else {}

    page = _Page(catalogue, data_dir)
    page.add(f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>stylestream report</title><style>{STYLE}</style></head><body>")
    page.add("<h1>stylestream: creatives on the openclipart catalogue</h1>")
    if figures:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in figures.items())
        page.add(f"<h2>Evaluation</h2><table>{rows}</table><img alt=\"evaluation figures\" src=\"{_figures_plot(figures)}\">")

    store = StyleStore(Settings(data_dir=data_dir / "run"))
    before_after: dict[str, tuple[float, float]] = {}
    try:
        for user_id in user_ids:
            preferred = set(truth["user_creators"][user_id])
            page.add(f"<h2>{html.escape(user_id)}</h2><p>Prefers the creators: {html.escape(', '.join(sorted(preferred)))}. "
                     "Green frames mark drawings by them.</p>")
            by_project: dict[str, list[str]] = {}
            for download in downloads:
                if download["user_id"] == user_id:
                    by_project.setdefault(queries.get(download.get("search_id"), "(no search)"), []).append(download["image_id"])
            for project, image_ids in by_project.items():
                page.add(f"<h3>Downloads for project \"{html.escape(project)}\"</h3>")
                page.grid(list(dict.fromkeys(image_ids)), preferred)
            top = [item["image_id"] for item in recommend(store, user_id, SHOWN).to_dict()["items"]]
            page.add(f"<h3>Top {SHOWN} recommendations</h3>")
            page.grid(top, preferred)
            keyword = query or truth["held_out"][user_id][0]
            results = search_results(catalogue, keyword)
            reranked = [item["image_id"] for item in rerank(store, user_id, results, RERANK_ALPHA)["items"]] if results else []
            before_after[user_id] = (_share(results[:SHOWN], catalogue, preferred), _share(reranked[:SHOWN], catalogue, preferred))
            page.add(f"<h3>Search \"{html.escape(keyword)}\": top {SHOWN} of {len(results)} results, in search order</h3>")
            page.grid(results[:SHOWN], preferred)
            page.add(f"<h3>The same search re-ranked by style (alpha {RERANK_ALPHA})</h3>")
            page.grid(reranked[:SHOWN], preferred)
    finally:
        store.close()
    if before_after:
        page.add(f"<h2>Re-ranking</h2><img alt=\"re-ranking effect\" src=\"{_rerank_plot(before_after)}\">")
    page.add("</body></html>")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(page.parts), encoding="utf-8")
    return output
