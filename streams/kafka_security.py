"""Kafka security settings passed to every client: Faust, kafka-python producers, admin and consumers.

Secrets stay in pydantic SecretStr fields and are unwrapped only here, at the client boundary.
"""

from __future__ import annotations

import ssl
from typing import Any

import faust

from stylestream.schemas.errors import StylestreamError
from stylestream.streams.settings import Settings


class SecurityConfigError(StylestreamError):
    """The Kafka security settings are incomplete or inconsistent."""


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(
            str(settings.kafka_ssl_certfile), str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None
        )
    return context


def _check(settings: Settings) -> None:
    protocol = settings.kafka_security_protocol
    if protocol.startswith("SASL") and not (settings.kafka_sasl_username and settings.kafka_sasl_password):
        raise SecurityConfigError(
            f"kafka_security_protocol is {protocol} but STYLESTREAM_KAFKA_SASL_USERNAME or "
            "STYLESTREAM_KAFKA_SASL_PASSWORD is missing"
        )


def kafka_python_options(settings: Settings) -> dict[str, Any]:
    """Return the security keyword arguments for kafka-python clients (empty for PLAINTEXT)."""
    _check(settings)
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(settings)
    if protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()  # type: ignore[union-attr]
    return options


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """Return Faust broker credentials for the configured protocol, or None for PLAINTEXT."""
    _check(settings)
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(_ssl_context(settings))
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),  # type: ignore[union-attr]
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=_ssl_context(settings) if protocol == "SASL_SSL" else None,
    )
