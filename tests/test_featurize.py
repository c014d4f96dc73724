"""Featurizing real image files: deep and colour features, sidecars, resume and unreadable files."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylestream.models.datasets.openclipart import parse_rdf, write_catalogue
from stylestream.models.featurize import COLORS_DIM, Backbone, EfficientNetLite0, color_features, iter_catalogue, iter_items
from stylestream.models.featurize.colors import hue_peaks
from stylestream.schemas.validation import Limits, parse_image
from stylestream.streams.featurize_output import featurize_to_jsonl

IMAGES = Path(__file__).parent / "data" / "images"
PACKAGE = Path(__file__).parent.parent / ".cache" / "openclipart" / "unpacked"


@pytest.fixture(scope="module")
def backbone() -> EfficientNetLite0:
    return EfficientNetLite0()


@pytest.fixture(scope="module")
def events_path(backbone: EfficientNetLite0, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Featurize the test images once for the tests that only read the events."""
    output = tmp_path_factory.mktemp("featurized") / "images.jsonl"
    featurize([IMAGES], output, backbone)
    return output


def featurize(paths: list[Path], output: Path, backbone: Backbone):
    items = list(iter_items(paths))
    return featurize_to_jsonl(items, len(items), backbone, output, batch_size=4, progress=False)


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_backbone_protocol(backbone: EfficientNetLite0) -> None:
    assert isinstance(backbone, Backbone)
    assert backbone.dim == 1280


def test_events_dims_and_sidecars(events_path: Path) -> None:
    events = read_events(events_path)
    sidecars = {path.name[: -len(".json")]: json.loads(path.read_text()) for path in IMAGES.glob("*.json")}

    assert len(events) == len(sidecars) == 8
    limits = Limits(deep_dim=1280, colors_dim=COLORS_DIM)
    for event in events:
        record = parse_image(json.dumps(event).encode(), limits)
        sidecar = sidecars[Path(event["metadata"]["path"]).name]
        assert record.image_id == sidecar["image_id"]
        assert record.creator == sidecar["creator"]
        assert record.keywords == sidecar["keywords"]
        assert record.categories == sidecar["categories"]
        assert all(math.isfinite(value) for value in record.deep + record.colors)
        assert np.linalg.norm(record.deep) > 0


def test_events_deterministic(backbone: EfficientNetLite0, events_path: Path, tmp_path: Path) -> None:
    featurize([IMAGES], tmp_path / "second.jsonl", backbone)
    first, second = read_events(events_path), read_events(tmp_path / "second.jsonl")

    assert [event["image_id"] for event in first] == [event["image_id"] for event in second]
    for a, b in zip(first, second):
        np.testing.assert_allclose(a["deep"], b["deep"], atol=1e-5)
        assert a["colors"] == b["colors"]


def test_same_creator_closer(events_path: Path) -> None:
    """Danny Allen's two flat icons resemble each other more than a Nicu Buculei drawing."""
    deep = {event["image_id"]: np.asarray(event["deep"]) for event in read_events(events_path)}

    def cosine(a: str, b: str) -> float:
        return float(deep[a] @ deep[b] / np.linalg.norm(deep[a]) / np.linalg.norm(deep[b]))

    assert cosine("oc-danny-ellipse", "oc-danny-insertknots") > cosine("oc-danny-ellipse", "oc-nicu-dragon-head")


def test_resume_skips_done(backbone: EfficientNetLite0, events_path: Path, tmp_path: Path) -> None:
    output = tmp_path / "images.jsonl"
    lines = events_path.read_text().splitlines()
    output.write_text("\n".join(lines[:3]) + "\n" + lines[3][:50])  # three events and a torn line

    report = featurize([IMAGES], output, backbone)
    ids = [event["image_id"] for event in read_events(output)]

    assert report.already_done == 3
    assert report.written == 5
    assert len(ids) == len(set(ids)) == 8


def test_unreadable_skipped(backbone: EfficientNetLite0, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(IMAGES / "nicu-seagull.svg", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "broken.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><rect width='")

    with caplog.at_level(logging.WARNING):
        report = featurize([folder], tmp_path / "images.jsonl", backbone)

    assert report.written == 1
    assert set(report.skipped) == {str(folder / name) for name in ("broken.png", "empty.jpg", "broken.svg")}
    assert "file is empty" in report.skipped[str(folder / "empty.jpg")]
    assert "not a readable PNG or JPEG" in report.skipped[str(folder / "broken.png")]
    assert "SVG rendering failed" in report.skipped[str(folder / "broken.svg")]
    for name in ("broken.png", "empty.jpg", "broken.svg"):
        assert any(name in record.getMessage() for record in caplog.records)


def test_colors_of_red_square() -> None:
    features = color_features(Image.new("RGB", (32, 32), (255, 0, 0)))

    assert features.shape == (COLORS_DIM,)
    assert features[0] == pytest.approx(1.0)
    assert features[1:12].sum() == 0
    assert features[12] == pytest.approx(1.0)
    assert features[24] == pytest.approx(1.0)
    assert features[27] == pytest.approx(1.0)
    assert features[31] == pytest.approx(1.0)


def test_colors_ignore_transparent() -> None:
    image = Image.new("RGBA", (20, 20), (0, 0, 255, 0))
    image.paste((0, 255, 0, 255), (0, 0, 10, 20))
    features = color_features(image)

    assert features[31] == pytest.approx(0.5)
    assert features[4] == pytest.approx(1.0)  # green, 120 degrees, is bin 4 of 30-degree bins
    assert features[8] == 0  # the transparent blue pixels do not count


def test_hue_peaks_circular() -> None:
    histogram = np.array([0.3, 0.1, 0.0, 0.0, 0.2, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2])

    peaks = hue_peaks(histogram)

    assert peaks[0] == pytest.approx(0.3)
    assert peaks[4] == pytest.approx(0.2)  # a plateau gives one peak, its first bin
    assert peaks[5] == 0
    assert peaks[11] == 0


def test_rdf_metadata() -> None:
    rdf = parse_rdf((IMAGES / "gerald-dove.svg").read_bytes())

    assert rdf["creator"] == "Gerald G."
    assert rdf["keywords"] == json.loads((IMAGES / "gerald-dove.svg.json").read_text())["keywords"]


@pytest.mark.skipif(not PACKAGE.exists(), reason="openclipart packages not unpacked; run `stylestream datasets openclipart --catalogue-only`")
def test_full_catalogue(backbone: EfficientNetLite0, tmp_path: Path) -> None:
    entries = write_catalogue(PACKAGE, tmp_path / "catalogue.jsonl")
    items = list(iter_catalogue(tmp_path / "catalogue.jsonl"))[::500]

    assert len(entries) == 7458
    assert len({entry.categories[0] for entry in entries}) == 22
    assert len({entry.creator for entry in entries if entry.creator}) > 500
    report = featurize_to_jsonl(items, len(items), backbone, tmp_path / "images.jsonl", batch_size=8, progress=False)
    assert report.written + len(report.skipped) == len(items)
    assert report.written >= len(items) - 1
