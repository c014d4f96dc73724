"""Shared fixtures: one real Apache Kafka broker per test session, started from its Maven jars."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from stylestream.streams.broker import EmbeddedKafka  # noqa: E402


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedKafka:
    """Start Apache Kafka on a free loopback port for the whole session."""
    broker = EmbeddedKafka(work_dir=tmp_path_factory.mktemp("kafka"))
    broker.start()
    yield broker
    broker.stop()
