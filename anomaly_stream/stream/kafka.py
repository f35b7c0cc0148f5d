"""How every Kafka client connects: TLS and SASL from the settings, in one place.

`client_options` gives the keyword arguments of an aiokafka client
(producer, consumer, admin) and `faust_credentials` the Faust App's
`broker_credentials`; Faust turns those into the same aiokafka arguments
(`credentials_to_aiokafka_auth`, unit-tested against `client_options`).
Every client of the project takes one of the two: the worker's Faust app,
the replicated-topic consumers, the admin client of `topics`, the ingester,
`watchlist` and `generate`. The password never leaves these objects: Faust's
credentials print the username only, and `Settings` hides the password.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from ..settings import Settings, SettingsError


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL (server verified against KAFKA_SSL_CAFILE or the system CAs)."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    from aiokafka.helpers import create_ssl_context

    files = {"KAFKA_SSL_CAFILE": settings.kafka_ssl_cafile, "KAFKA_SSL_CERTFILE": settings.kafka_ssl_certfile,
             "KAFKA_SSL_KEYFILE": settings.kafka_ssl_keyfile}
    for name, path in files.items():
        if path and not Path(path).is_file():
            raise SettingsError(f"{name}={path!r}: no such file")
    try:
        return create_ssl_context(cafile=settings.kafka_ssl_cafile or None,
                                  certfile=settings.kafka_ssl_certfile or None,
                                  keyfile=settings.kafka_ssl_keyfile or None)
    except (ssl.SSLError, ValueError) as exc:
        raise SettingsError(f"KAFKA_SSL_* files do not load: {exc}") from None


def client_options(settings: Settings) -> dict[str, Any]:
    """Security keyword arguments of an aiokafka client; the caller adds bootstrap_servers."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if protocol.startswith("SASL_"):
        options.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                       sasl_plain_username=settings.kafka_sasl_username,
                       sasl_plain_password=settings.kafka_sasl_password)
    return options


def faust_credentials(settings: Settings):
    """`broker_credentials` of the Faust App (None for PLAINTEXT)."""
    import faust

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    # With a context Faust's SASLCredentials is SASL_SSL, without one SASL_PLAINTEXT.
    return faust.SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
                                 mechanism=settings.kafka_sasl_mechanism, ssl_context=context)
