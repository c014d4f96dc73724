"""Checks of the Docker deployment files against the CLI and settings (no Docker engine runs here)."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from stylestream.streams.cli import main
from stylestream.streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
SETTING_VARIABLES = {f"STYLESTREAM_{name.upper()}" for name in Settings.model_fields}


def _stylestream_commands(service: dict) -> list[list[str]]:
    """Return the argument lists of every `stylestream` invocation in a service's command."""
    command = service.get("command", [])
    if service.get("entrypoint", [None])[0] == "sh":
        words = shlex.split(command[-1].replace("&&", " && "))
        invocations, current = [], []
        for word in words + ["&&"]:
            if word == "&&":
                if current and current[0] == "stylestream":
                    invocations.append(current[1:])
                current = []
            else:
                current.append(word)
        return invocations
    return [command]


def test_compose_has_required_services() -> None:
    services = COMPOSE["services"]

    assert set(services) >= {"kafka", "qdrant", "worker", "producer"}
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:")
    assert services["worker"]["deploy"]["replicas"] == 2


def test_compose_environment_names_real_settings() -> None:
    for name, service in COMPOSE["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("STYLESTREAM_"):
                assert variable in SETTING_VARIABLES, f"{name}: {variable}"


def test_compose_settings_parse() -> None:
    for name in ("worker", "producer"):
        environment = COMPOSE["services"][name]["environment"]
        values = {variable[len("STYLESTREAM_"):].lower(): value for variable, value in environment.items()}

        settings = Settings(**values)

        assert settings.broker == "kafka://kafka:9092"


def test_compose_commands_exist_in_cli() -> None:
    for name in ("worker", "producer"):
        for arguments in _stylestream_commands(COMPOSE["services"][name]):
            assert arguments[0] in main.commands, f"{name}: {arguments}"


def test_worker_and_producer_share_partitions() -> None:
    services = COMPOSE["services"]

    assert services["worker"]["environment"]["STYLESTREAM_PARTITIONS"] == services["producer"]["environment"]["STYLESTREAM_PARTITIONS"]


def test_dockerfile_runs_worker() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    build = COMPOSE["services"]["worker"]["build"]

    assert (ROOT / "docker" / Path(build["dockerfile"]).name).exists()
    assert 'ENTRYPOINT ["stylestream"]' in dockerfile
    assert 'CMD ["worker"]' in dockerfile
    for folder in ("schemas", "models", "streams"):
        assert f"COPY {folder} ./{folder}" in dockerfile
