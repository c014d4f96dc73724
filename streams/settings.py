"""Settings of workers and tools, read from STYLESTREAM_* environment variables and CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stylestream.models.preference import PreferenceParams
from stylestream.schemas.validation import Limits

EMBEDDED = "embedded"


class Settings(BaseSettings):
    """Every setting of stylestream. Each field reads the environment variable STYLESTREAM_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="STYLESTREAM_", frozen=True, extra="forbid")

    broker: str = Field(
        EMBEDDED,
        description="Kafka URL such as kafka://127.0.0.1:9092, or 'embedded' to start a local Apache Kafka.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol for every client."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle that signs the brokers' certificates.")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate for mutual TLS.")
    kafka_ssl_keyfile: Path | None = None
    qdrant_url: str | None = Field(None, description="Qdrant server URL; unset uses the embedded store under data_dir.")
    qdrant_api_key: SecretStr | None = Field(None, description="Qdrant API key, sent only to qdrant_url.")
    data_dir: Path = Field(Path("data"), description="Folder of the embedded Qdrant store and worker state.")
    embedded_store: Literal["edge", "local"] = Field(
        "edge",
        description="Embedded Qdrant engine: 'edge' (Qdrant Edge, about 47k upserts/s on disk here) or "
        "'local' (qdrant-client local mode, about 1.1k/s).",
    )
    app_id: str = Field("stylestream", description="Faust app id: the consumer group and the prefix of changelog topics.")

    downloads_topic: str = "downloads"
    searches_topic: str = "searches"
    images_topic: str = "images"
    partitions: int = Field(4, ge=1, description="Partitions of the downloads and searches topics (co-partitioned).")
    image_partitions: int = Field(2, ge=1, description="Partitions of the images topic.")
    replication_factor: int = Field(1, ge=1)

    images_collection: str = Field("images", description="Alias that queries read images through.")
    users_collection: str = Field("users", description="Alias that queries read users through.")
    collection_version: str | None = Field(
        None, description="Suffix of the collections a worker writes (images_<suffix>, users_<suffix>); unset uses the model version."
    )

    half_life_days: float = Field(30.0, gt=0, description="Half-life of a contribution's weight, in days of event time.")
    download_weight: float = Field(1.0, gt=0)
    impression_weight: float = Field(
        0.05, ge=0, description="Magnitude of the negative weight of a search result shown but not downloaded."
    )
    max_recent_downloads: int = Field(200, ge=0, description="Downloaded image ids kept per user for exclusion.")
    max_tracked_searches: int = Field(
        128, ge=1, description="Searches remembered per user to link later downloads to; older ones are forgotten."
    )

    user_batch_size: int = Field(
        500, ge=1, description="Maximum downloads or searches events applied together; each changed user is written once per batch."
    )
    user_batch_seconds: float = Field(
        0.05, gt=0, description="Seconds a batch of user events waits to fill before it is applied as it is."
    )
    flush_interval: float = Field(0.2, gt=0, description="Seconds between coalesced upserts of changed users.")
    max_pending_users: int = Field(
        100_000, ge=1, description="Changed users waiting for Qdrant at which the agents pause consuming."
    )
    model_path: Path | None = Field(None, description="Style encoder checkpoint; unset uses the untrained encoder.")
    image_wait_seconds: float = Field(
        5.0, ge=0, description="How long a download waits for its image to be known before it is dead-lettered."
    )
    image_cache_size: int = Field(100_000, ge=0, description="Image style vectors cached in each worker.")

    max_message_bytes: int = Field(256 * 1024, ge=256)
    max_id_length: int = Field(256, ge=8)
    max_results: int = Field(1000, ge=1)
    max_labels: int = Field(256, ge=1)

    liveness_interval: float = Field(10.0, gt=0, description="Seconds between consumer lag samples.")
    stall_seconds: float = Field(
        60.0, gt=0, description="A partition whose committed offset stays put this long while lagging is reported stalled."
    )

    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=0, le=65535, description="Port of the worker's HTTP endpoints; 0 picks a free port.")
    rebalance_timeout: float = Field(10.0, gt=0, description="Faust broker_rebalance_timeout in seconds.")
    session_timeout: float = Field(
        10.0, ge=6, description="Kafka consumer session timeout in seconds: how soon a crashed worker's partitions move."
    )
    shutdown_timeout: float = Field(30.0, gt=0, description="Seconds a stopping worker may take before it is killed.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = Field("text", description="Log lines as plain text or one JSON object each.")

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        if value != EMBEDDED and not value.startswith(("kafka://", "aiokafka://")):
            raise ValueError(f"broker must be 'embedded' or a kafka://host:port URL, got {value!r}")
        return value

    @property
    def preference(self) -> PreferenceParams:
        """Return the preference update parameters."""
        return PreferenceParams(
            download_weight=self.download_weight,
            impression_weight=self.impression_weight,
            half_life_days=self.half_life_days,
            max_recent_downloads=self.max_recent_downloads,
            max_tracked_searches=self.max_tracked_searches,
        )

    def limits(self, deep_dim: int | None = None, colors_dim: int | None = None) -> Limits:
        """Return the validation limits, with the encoder's feature dimensions when given."""
        return Limits(
            max_message_bytes=self.max_message_bytes,
            max_id_length=self.max_id_length,
            max_results=self.max_results,
            max_labels=self.max_labels,
            deep_dim=deep_dim,
            colors_dim=colors_dim,
        )

    @property
    def bootstrap_servers(self) -> str:
        """Return host:port for Kafka clients; only valid once `broker` is a URL."""
        if self.broker == EMBEDDED:
            raise ValueError("the embedded broker has no address until it is started")
        return self.broker.split("://", 1)[1].rstrip("/")

    @property
    def qdrant_path(self) -> Path:
        """Return the folder of the embedded Qdrant store."""
        return self.data_dir / ("qdrant-edge" if self.embedded_store == "edge" else "qdrant")

    def popularity_topic(self) -> str:
        """Return the internal topic that carries applied download counts per image (see streams/popularity.py)."""
        return f"{self.app_id}-image-downloads"

    def dlq_topic(self, topic: str) -> str:
        """Return the dead-letter topic of `topic`."""
        return f"{topic}.dlq"

    def to_environment(self) -> dict[str, str]:
        """Return the STYLESTREAM_* variables that reproduce these settings in a child process.

        Every set value is included, so variables inherited from the parent cannot override them.
        Secrets are included too, so never log the result.
        """
        environment = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            environment[f"STYLESTREAM_{name.upper()}"] = str(value)
        return environment

    def redacted(self) -> dict[str, object]:
        """Return the settings as a dict that is safe to log (secrets hidden)."""
        values = self.model_dump()
        for name in ("qdrant_api_key", "kafka_sasl_password"):
            if values.get(name) is not None:
                values[name] = "**********"
        return values
