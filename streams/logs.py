"""Logging set-up: plain text or one JSON object per line, for the CLI and for workers."""

from __future__ import annotations

import json
import logging
import logging.config
from typing import Any, Literal

LogFormat = Literal["text", "json"]

QUIET_LOGGERS = ("kafka", "aiokafka", "faust.transport", "httpx")
TEXT_FORMAT = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object with time, level, logger, message and any exception."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def logging_config(level: str = "INFO", log_format: LogFormat = "text") -> dict[str, Any]:
    """Return a logging.config.dictConfig mapping that logs to stderr in the chosen format."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if log_format == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {name: {"level": "WARNING"} for name in QUIET_LOGGERS},
    }


def configure_logging(level: str = "INFO", log_format: LogFormat = "text") -> None:
    """Apply `logging_config` to this process."""
    logging.config.dictConfig(logging_config(level, log_format))
