"""The HTML report: built from a real featurize run and a real embedded Qdrant store."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylestream.models.encoder import untrained_encoder
from stylestream.models.features import FeatureSchema
from stylestream.models.featurize import COLORS_DIM, EfficientNetLite0, iter_items
from stylestream.streams.featurize_output import featurize_to_jsonl
from stylestream.streams.report import build_report
from stylestream.streams.settings import Settings
from stylestream.streams.store import StyleStore

IMAGES = Path(__file__).parent / "data" / "images"
USER = "creative-0000"
PREFERRED = "Gerald G."


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Lay out an output folder like `stylestream datasets openclipart` writes, for eight test images."""
    folder = tmp_path_factory.mktemp("openclipart")
    items = list(iter_items([IMAGES]))
    featurize_to_jsonl(items, len(items), EfficientNetLite0(), folder / "images.jsonl", batch_size=8, progress=False)
    events = [json.loads(line) for line in (folder / "images.jsonl").read_text().splitlines()]
    with (folder / "catalogue.jsonl").open("w") as handle:
        for event in events:
            entry = {key: event[key] for key in ("image_id", "categories", "keywords")}
            entry.update(path=event["metadata"]["path"], title=event["metadata"]["title"], creator=event.get("creator"))
            handle.write(json.dumps(entry) + "\n")

    encoder = untrained_encoder(FeatureSchema(deep_dim=1280, colors_dim=COLORS_DIM))
    vectors = encoder.encode(*([event[name] for event in events] for name in ("deep", "colors", "categories", "keywords")))
    payloads = [{key: event.get(key) for key in ("image_id", "categories", "keywords", "creator")} for event in events]
    downloaded = [event["image_id"] for event in events if event.get("creator") == PREFERRED][:2]
    user_vector = vectors[[payload["image_id"] in downloaded for payload in payloads]].sum(axis=0)
    store = StyleStore(Settings(data_dir=folder / "run"))
    try:
        store.ensure_collections(encoder.style_dim)
        store.upsert_images(payloads, vectors)
        store.upsert_users([(USER, user_vector / np.linalg.norm(user_vector), {"recent_downloads": downloaded})])
    finally:
        store.close()

    creatives = folder / "creatives"
    creatives.mkdir()
    search = {"event_id": "e-1", "user_id": USER, "search_id": "s-1", "query": "dog", "timestamp": 1.0, "results": downloaded}
    (creatives / "searches.jsonl").write_text(json.dumps(search) + "\n")
    (creatives / "downloads.jsonl").write_text("".join(
        json.dumps({"event_id": f"e-{n + 2}", "user_id": USER, "image_id": image_id, "timestamp": 2.0, "search_id": "s-1"}) + "\n"
        for n, image_id in enumerate(downloaded)
    ))
    truth = {"user_creators": {USER: [PREFERRED]}, "held_out": {USER: ["animal"]}}
    (creatives / "truth.json").write_text(json.dumps(truth))
    (folder / "figures.json").write_text(json.dumps({"style_match_at_10": 0.5, "chance_style_match_at_10": 0.3}))
    return folder


@pytest.fixture(scope="module")
def report_html(report_dir: Path) -> Path:
    return build_report(report_dir, report_dir / "report.html", [], count=1)


def test_report_images_decode(report_html: Path) -> None:
    page = report_html.read_text()
    sources = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", page)

    assert len(sources) >= 2 + 1 + 5  # downloads, a plot, recommendations and search results
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1], validate=True)))
        image.verify()
        assert image.format == "PNG"


def test_report_self_contained(report_html: Path) -> None:
    page = report_html.read_text()

    assert "http://" not in page
    assert "https://" not in page
    assert re.search(r"\ssrc=\"(?!data:)", page) is None
    assert re.search(r"\shref=", page) is None


def test_report_sections(report_html: Path) -> None:
    page = report_html.read_text()

    assert USER in page
    assert "Downloads for project \"dog\"" in page
    assert "Top 10 recommendations" in page
    assert "Search \"animal\"" in page
    assert "re-ranked by style" in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_chromium(report_html: Path, tmp_path: Path) -> None:
    screenshot = tmp_path / "report.png"
    command = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={screenshot}", "--window-size=1200,2000", report_html.as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=60)

    image = Image.open(screenshot)
    assert image.size == (1200, 2000)
    assert len(np.unique(np.asarray(image.convert("L")))) > 10  # more than a blank page
