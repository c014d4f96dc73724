"""Tests of the offline evaluation: metrics on hand-computed cases, the temporal split, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from stylestream.models.evaluation import (
    EvaluationError,
    EventLog,
    accuracy_at_k,
    build_user_vectors,
    catalogue_coverage,
    effective_catalogue_size,
    evaluate_log,
    first_hit_ranks,
    load_event_log,
    temporal_split,
    visual_diversity,
)
from stylestream.models.preference import PreferenceParams
from stylestream.schemas.events import Download, Image, Search
from stylestream.streams.cli import main


def _download(number: int, user: str, image: str, timestamp: float, search: str | None = None) -> Download:
    return Download(event_id=f"d{number}", user_id=user, image_id=image, timestamp=timestamp, search_id=search)


def _search(number: int, user: str, search: str, timestamp: float, results: list[str]) -> Search:
    return Search(event_id=f"s{number}", user_id=user, search_id=search, query="q", timestamp=timestamp, results=results)


def _image(image_id: str, deep: list[float]) -> Image:
    return Image(image_id=image_id, timestamp=0.0, deep=deep, colors=[1.0, 0.0], categories=["c"], keywords=["k"])


def test_accuracy_counts_first_hit() -> None:
    rankings = {"u1": [5, 3, 9], "u2": [1, 2, 4]}
    targets = {"u1": {9, 3}, "u2": {7}}

    ranks = first_hit_ranks(rankings, targets)

    assert ranks.tolist() == [2.0, math.inf]
    assert accuracy_at_k(ranks, 1) == 0.0
    assert accuracy_at_k(ranks, 2) == 0.5
    assert accuracy_at_k(ranks, 100) == 0.5


def test_coverage_counts_distinct_items() -> None:
    assert catalogue_coverage([[0, 1], [1, 2]], catalogue_size=10) == pytest.approx(0.3)
    assert catalogue_coverage([[4], [4]], catalogue_size=8) == pytest.approx(0.125)


def test_ecs_hand_cases() -> None:
    same_ten = [list(range(10))] * 5
    assert effective_catalogue_size(same_ten) == pytest.approx(10.0)
    assert effective_catalogue_size([[3], [3], [3]]) == pytest.approx(1.0)
    # Shares 3/4 and 1/4: 2 * (0.75 * 1 + 0.25 * 2) - 1 = 1.5.
    assert effective_catalogue_size([[0, 1], [0], [0]]) == pytest.approx(1.5)


def test_visual_diversity_hand_case() -> None:
    deep = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])

    # List one: distances 5, 4 and 3 (mean 4); list two: 5; the single-item list is skipped.
    assert visual_diversity([[0, 1, 2], [0, 1], [2]], deep) == pytest.approx(4.5)


def test_split_holds_out_newest_events() -> None:
    searches = [_search(i, "u", f"q{i}", float(i), []) for i in range(1, 6)]
    downloads = [_download(i, "u", "img", float(i) + 0.5) for i in range(1, 6)]

    split = temporal_split(searches, downloads, holdout_fraction=0.2)

    assert split.cutoff == 5.0
    assert [d.timestamp for d in split.test_downloads] == [5.5]
    assert len(split.train_searches) == 4
    assert len(split.train_downloads) == 4


def test_split_keeps_ties_together() -> None:
    downloads = [_download(i, "u", "img", t) for i, t in enumerate([1.0, 2.0, 3.0, 3.0])]

    split = temporal_split([], downloads, holdout_fraction=0.25)

    assert split.cutoff == 3.0
    assert len(split.test_downloads) == 2


def test_split_rejects_bad_fraction() -> None:
    with pytest.raises(EvaluationError, match="1.5"):
        temporal_split([], [_download(0, "u", "img", 1.0)], holdout_fraction=1.5)


def test_user_vectors_use_stream_math() -> None:
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])}
    searches = [_search(0, "u", "q", 100.0, ["a", "b"])]
    downloads = [_download(1, "u", "a", 100.0, "q"), _download(2, "u", "b", 200.0)]
    split = temporal_split(searches, downloads, holdout_fraction=0.34)

    result = build_user_vectors(split, vectors, PreferenceParams(impression_weight=0.25))

    # Only "a" is in the training part; "b" is an ignored result: a - 0.25 b.
    expected = np.array([1.0, -0.25]) / np.linalg.norm([1.0, -0.25])
    assert np.allclose(result["u"], expected)


def test_popularity_excludes_own_downloads() -> None:
    images = [_image(f"img{i}", [1.0, float(i)]) for i in range(4)]
    downloads = [
        _download(0, "u1", "img0", 1.0),
        _download(1, "u2", "img0", 2.0),
        _download(2, "u2", "img1", 3.0),
        _download(3, "u3", "img1", 4.0),
        _download(4, "u3", "img0", 5.0),
        _download(5, "u1", "img1", 10.0),
    ]

    report = evaluate_log(EventLog(images, [], downloads), {}, holdout_fraction=0.17)
    rows = {row["row"]: row for row in report["rows"]}

    # img0 is the most downloaded, but u1 downloaded it before the cutoff, so img1 comes first.
    assert rows["popularity"]["users"] == 1
    assert rows["popularity"]["acc_curve"][0] == 1.0
    assert set(rows) == {"deep features only", "popularity", "random"}


def _popularity_log() -> EventLog:
    """Return a log whose cutoff at holdout fraction 0.25 is 10.0, where only u1 downloads after it (img2).

    Before the cutoff img0 has 2 downloads and img1 has 1, so popularity ranks img0, img1, img2, img3.
    u1 downloaded img0 before the cutoff, which leaves img1 first and the target img2 second.
    """
    images = [_image(f"img{i}", [1.0, float(i)]) for i in range(4)]
    table = [("u1", "img0", 1.0), ("u2", "img0", 2.0), ("u2", "img1", 3.0), ("u1", "img2", 10.0)]
    downloads = [_download(number, user, image, timestamp) for number, (user, image, timestamp) in enumerate(table)]
    return EventLog(images, [], downloads)


def test_popularity_counts_extra_downloads() -> None:
    extra = [_download(10, "x1", "img2", 4.0), _download(11, "x2", "img2", 5.0), _download(12, "x1", "missing", 6.0)]

    plain = evaluate_log(_popularity_log(), {}, holdout_fraction=0.25)
    report = evaluate_log(_popularity_log(), {}, holdout_fraction=0.25, extra_downloads=extra)
    plain_rows = {row["row"]: row for row in plain["rows"]}
    rows = {row["row"]: row for row in report["rows"]}

    assert plain["cutoff"] == report["cutoff"] == 10.0
    assert plain_rows["popularity"]["acc_curve"][:2] == [0.0, 1.0]
    # img2 gains 2 downloads and ties img0 at 2, and the lower index breaks the tie:
    # img0, img2, img1, img3. Without img0, u1's list starts with the target img2.
    assert rows["popularity"]["acc_curve"][0] == 1.0
    assert rows["popularity"]["users"] == 1
    assert plain["extra_downloads_counted"] == 0
    # The download of an image outside the catalogue is not counted.
    assert report["extra_downloads_counted"] == 2
    # Extra users get no vector and are not evaluated, so the vector rows do not change.
    assert rows["deep features only"] == plain_rows["deep features only"]


def test_popularity_ignores_extra_downloads_from_cutoff() -> None:
    extra = [_download(10, "x1", "img2", 10.0), _download(11, "x2", "img2", 11.0), _download(12, "x2", "img3", 12.0)]

    report = evaluate_log(_popularity_log(), {}, holdout_fraction=0.25, extra_downloads=extra)
    rows = {row["row"]: row for row in report["rows"]}

    assert report["cutoff"] == 10.0
    assert report["extra_downloads_counted"] == 0
    assert rows["popularity"]["acc_curve"][:2] == [0.0, 1.0]


def test_evaluate_log_rejects_shared_extra_users() -> None:
    extra = [_download(10, "x1", "img2", 4.0), _download(11, "u2", "img2", 5.0)]

    with pytest.raises(EvaluationError, match="'u2'"):
        evaluate_log(_popularity_log(), {}, holdout_fraction=0.25, extra_downloads=extra)


def test_load_names_invalid_line(tmp_path: Path) -> None:
    for topic in ("images", "searches"):
        (tmp_path / f"{topic}.jsonl").write_text("")
    (tmp_path / "downloads.jsonl").write_text('{"event_id": "e", "user_id": "u"}\n')

    with pytest.raises(EvaluationError, match=r"downloads.jsonl:1: .*image_id"):
        load_event_log(tmp_path)


def test_evaluate_command_writes_reports(tmp_path: Path) -> None:
    arguments = ["evaluate", "--simulate", "--sim-images", "300", "--sim-users", "40", "--json", str(tmp_path / "r.json"),
                 "--markdown", str(tmp_path / "r.md"), "--plots", str(tmp_path / "plots")]

    result = CliRunner().invoke(main, arguments)

    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [row["row"] for row in rows] == ["untrained encoder", "deep features only", "popularity", "random"]
    for row in rows:
        assert {"acc_at_10", "acc_at_100", "coverage", "ecs_at_10", "visual_diversity"} <= set(row)
        assert 0.0 <= row["acc_at_10"] <= row["acc_at_100"] <= 1.0
    assert "| popularity |" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "plots" / "metrics.png").stat().st_size > 0
    assert (tmp_path / "plots" / "acc_at_k.png").stat().st_size > 0


def _write_log(folder: Path) -> None:
    """Simulate 40 users on the 300-image catalogue that `_write_extra_users` also uses, and write their log."""
    from stylestream.models.simulation import SimulationConfig, simulate

    simulate(SimulationConfig(images=300, users=40, seed=5), end_time=1.7e9).write(folder)


def _write_extra_users(folder: Path) -> None:
    """Simulate 20 users on the catalogue of seed 5 and write their events with user ids prefixed by "extra-"."""
    from stylestream.models.simulation import SimulationConfig, simulate

    other = simulate(SimulationConfig(images=300, users=20, seed=5), end_time=1.7e9)
    for download in other.downloads:
        download["user_id"] = "extra-" + download["user_id"]
    for search in other.searches:
        search["user_id"] = "extra-" + search["user_id"]
    other.write(folder)


def test_train_command_adds_extra_events(tmp_path: Path) -> None:
    events = tmp_path / "events"
    extra = tmp_path / "extra"
    _write_log(events)
    _write_extra_users(extra)
    checkpoint = tmp_path / "encoder.pt"
    arguments = ["train", "--events", str(events), "--extra-events", str(extra), "--checkpoint", str(checkpoint),
                 "--batch-size", "32", "--epochs", "1", "--search-batch-size", "8", "--no-progress"]

    result = CliRunner().invoke(main, arguments)

    assert result.exit_code == 0, result.output
    from stylestream.streams.cli_models import checkpoint_metadata

    assert checkpoint_metadata(checkpoint)["source"]["extra_events"] == [str(extra)]


def test_train_command_rejects_shared_users(tmp_path: Path) -> None:
    events = tmp_path / "events"
    _write_log(events)
    arguments = ["train", "--events", str(events), "--extra-events", str(events), "--checkpoint", str(tmp_path / "encoder.pt"),
                 "--batch-size", "32", "--epochs", "1", "--no-progress"]

    result = CliRunner().invoke(main, arguments)

    assert result.exit_code != 0
    assert "shares" in result.output
    assert not (tmp_path / "encoder.pt").exists()


def test_evaluate_command_counts_extra_events(tmp_path: Path) -> None:
    events = tmp_path / "events"
    extra = tmp_path / "extra"
    _write_log(events)
    _write_extra_users(extra)
    arguments = ["evaluate", "--events", str(events), "--json", str(tmp_path / "plain.json")]

    plain_result = CliRunner().invoke(main, arguments)
    result = CliRunner().invoke(main, [*arguments[:-1], str(tmp_path / "r.json"), "--extra-events", str(extra)])

    assert plain_result.exit_code == 0, plain_result.output
    assert result.exit_code == 0, result.output
    plain = json.loads((tmp_path / "plain.json").read_text())
    report = json.loads((tmp_path / "r.json").read_text())
    catalogue = {json.loads(line)["image_id"] for line in (events / "images.jsonl").read_text().splitlines()}
    extra_downloads = [json.loads(line) for line in (extra / "downloads.jsonl").read_text().splitlines()]
    expected = sum(1 for d in extra_downloads if d["timestamp"] < report["cutoff"] and d["image_id"] in catalogue)
    assert 0 < expected < len(extra_downloads)
    assert report["extra_downloads_counted"] == expected
    assert f"Popularity counts {expected} downloads" in result.output
    assert report["source"]["extra_events"] == [str(extra)]
    assert report["cutoff"] == plain["cutoff"]
    assert [row["users"] for row in report["rows"]] == [row["users"] for row in plain["rows"]]
    assert plain["extra_downloads_counted"] == 0
    assert "Popularity counts" not in plain_result.output


def test_evaluate_command_rejects_shared_users(tmp_path: Path) -> None:
    events = tmp_path / "events"
    _write_log(events)
    arguments = ["evaluate", "--events", str(events), "--extra-events", str(events), "--json", str(tmp_path / "r.json")]

    result = CliRunner().invoke(main, arguments)

    assert result.exit_code != 0
    assert "shares 40 user id(s) with the log" in result.output
    assert not (tmp_path / "r.json").exists()


def test_evaluate_command_rejects_repeated_folder(tmp_path: Path) -> None:
    events = tmp_path / "events"
    extra = tmp_path / "extra"
    _write_log(events)
    _write_extra_users(extra)
    arguments = ["evaluate", "--events", str(events), "--extra-events", str(extra), "--extra-events", str(extra),
                 "--json", str(tmp_path / "r.json")]

    result = CliRunner().invoke(main, arguments)

    assert result.exit_code != 0
    assert "an earlier --extra-events folder" in result.output
    assert not (tmp_path / "r.json").exists()
