"""Logging, configured once from `main()`: structlog events, JSON in production.

Every module logs structlog events with fields, `log.info("event_name", key=value)`,
through the standard library, so they share Faust's handlers and levels in the
worker. A command that runs without Faust (the ingester) asks for a handler of
its own with `handler=True`.
"""

from __future__ import annotations

import logging

import structlog


def setup_logging(level: str = "info", fmt: str = "json", *, handler: bool = False) -> None:
    stdlib_level = logging.getLevelName(level.upper())
    for noisy in ("faust", "mode", "aiokafka", "urllib3"):
        logging.getLogger(noisy).setLevel(stdlib_level)
    # web3 logs the endpoint URL, which carries a hosted provider's API key, below warning.
    logging.getLogger("web3").setLevel(max(stdlib_level, logging.WARNING))
    if handler and not logging.getLogger().handlers:
        logging.basicConfig(level=stdlib_level, format="%(message)s")  # the event is rendered already
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        # Through the standard library, so events share Faust's handlers and levels.
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(stdlib_level),
        cache_logger_on_first_use=True,
    )
