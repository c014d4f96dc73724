"""Crash recovery: a worker killed with SIGKILL mid-stream ends with the same vectors as a clean run."""

from __future__ import annotations

from pathlib import Path

import pytest

from crash_harness import run_crash_trial
from stylestream.models.simulation import SimulationConfig, simulate
from stylestream.streams.broker import EmbeddedKafka

pytestmark = pytest.mark.integration


def test_sigkill_mid_stream_loses_nothing(kafka: EmbeddedKafka, tmp_path: Path) -> None:
    marketplace = simulate(SimulationConfig(images=120, users=15, styles=5, subjects=8, seed=11))

    result = run_crash_trial(kafka, tmp_path, marketplace, kills=1, seed=5)

    assert result["lost_users"] == []
    assert result["miscounted_users"] == []
    assert result["max_abs_diff"] <= 1e-5
