"""Kafka and Qdrant security settings reach the clients, and secrets stay out of output."""

from __future__ import annotations

import json
import subprocess
import sys

import faust
import pytest

from stylestream.streams.kafka_security import SecurityConfigError, faust_credentials, kafka_python_options
from stylestream.streams.settings import Settings

SECRET = "s3cr3t-value-123"


def test_sasl_ssl_reaches_kafka_python_clients() -> None:
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="svc", kafka_sasl_password=SECRET)

    options = kafka_python_options(settings)

    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "svc"
    assert options["sasl_plain_password"] == SECRET
    assert options["ssl_context"] is not None


def test_sasl_ssl_reaches_faust() -> None:
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="svc", kafka_sasl_password=SECRET)

    credentials = faust_credentials(settings)

    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.password == SECRET
    assert credentials.ssl_context is not None
    assert SECRET not in repr(credentials)


def test_plaintext_adds_no_options() -> None:
    assert kafka_python_options(Settings()) == {}
    assert faust_credentials(Settings()) is None


def test_sasl_without_password_raises() -> None:
    with pytest.raises(SecurityConfigError, match="SASL_PASSWORD"):
        kafka_python_options(Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="svc"))


def test_secrets_masked_in_settings_output() -> None:
    settings = Settings(kafka_sasl_password=SECRET, qdrant_api_key=SECRET)

    assert SECRET not in repr(settings)
    assert SECRET not in json.dumps(settings.redacted(), default=str)


def test_config_command_masks_secrets() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stylestream.streams", "config"],
        env={"STYLESTREAM_QDRANT_API_KEY": SECRET, "STYLESTREAM_KAFKA_SASL_PASSWORD": SECRET, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert json.loads(result.stdout)["qdrant_api_key"] == "**********"


def test_environment_round_trips_settings() -> None:
    settings = Settings(broker="kafka://127.0.0.1:1", partitions=3, half_life_days=7.5, qdrant_api_key=SECRET)

    rebuilt = Settings(**{key[len("STYLESTREAM_"):].lower(): value for key, value in settings.to_environment().items()})

    assert rebuilt == settings
