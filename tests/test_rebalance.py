"""Rebalance: two workers, one killed and restarted (2 -> 1 -> 2), end with a clean run's vectors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from crash_harness import trial_settings
from rebalance_harness import run_rebalance_trial
from stylestream.models.simulation import SimulationConfig, simulate
from stylestream.streams.broker import EmbeddedKafka
from stylestream.streams.settings import Settings

pytestmark = pytest.mark.integration


def _changelog_history(settings: Settings, user: str) -> str:
    """Describe a user's changelog records and input offsets, so a failed check shows where events went missing."""
    lines = [user]
    changelog = KafkaConsumer(f"{settings.app_id}-user-state-changelog", bootstrap_servers=settings.bootstrap_servers,
                              auto_offset_reset="earliest", consumer_timeout_ms=3000)
    for record in changelog:
        if record.key and json.loads(record.key) == user:
            value = json.loads(record.value)
            lines.append(f"changelog[{record.partition}]@{record.offset} event_count={value['event_count']} applied={value['applied_offsets']}")
    changelog.close()
    for topic in (settings.downloads_topic, settings.searches_topic):
        consumer = KafkaConsumer(topic, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest", consumer_timeout_ms=3000)
        offsets = [f"{record.partition}@{record.offset}" for record in consumer if record.key == user.encode()]
        consumer.close()
        lines.append(f"{topic}: {' '.join(offsets)}")
    return "\n".join(lines)


def test_two_to_one_to_two_workers_lose_nothing(kafka: EmbeddedKafka, tmp_path: Path) -> None:
    marketplace = simulate(SimulationConfig(images=120, users=16, styles=5, subjects=8, seed=31))
    settings = trial_settings(kafka, tmp_path)

    result = run_rebalance_trial(settings, tmp_path, marketplace)

    assert result["rebalanced"], "the surviving worker never owned the group alone, so no rebalance happened"
    assert result["drained"], f"lag or pending users did not reach zero after {result['liveness_restarts']} liveness restarts: {result['lags']}"
    assert result["lost_users"] == []
    assert result["duplicated_users"] == []
    assert result["short_users"] == [], _changelog_history(settings, result["short_users"][0])
    assert result["max_abs_diff"] <= 1e-5
