"""Tests of stalled-partition detection."""

from __future__ import annotations

from stylestream.streams.lag import PartitionLag, StallDetector


def test_partition_without_progress_is_stalled() -> None:
    detector = StallDetector(stall_seconds=30)

    assert detector.update([PartitionLag("downloads", 0, 10, 50)], now=0.0) == []
    assert detector.update([PartitionLag("downloads", 0, 10, 60)], now=20.0) == []
    stalled = detector.update([PartitionLag("downloads", 0, 10, 70)], now=31.0)

    assert [(lag.topic, lag.partition, lag.lag) for lag in stalled] == [("downloads", 0, 60)]


def test_progress_resets_stall_clock() -> None:
    detector = StallDetector(stall_seconds=30)
    detector.update([PartitionLag("downloads", 0, 10, 50)], now=0.0)
    detector.update([PartitionLag("downloads", 0, 11, 50)], now=25.0)

    assert detector.update([PartitionLag("downloads", 0, 11, 50)], now=40.0) == []


def test_idle_partition_is_not_stalled() -> None:
    detector = StallDetector(stall_seconds=30)
    detector.update([PartitionLag("searches", 1, 50, 50)], now=0.0)

    assert detector.update([PartitionLag("searches", 1, 50, 50)], now=100.0) == []
